"""Privacy policies: per-sample clipping (torch.func), DP-GD and DIFF2 messages, library accounting.

Pure and I/O-free, except :func:`load_worker_noise_key` (reads the workers' secret). See
:mod:`dcoord.privacy.mechanisms` for the message format the runtime uses in coded + private rounds.
"""

from dcoord.privacy.accounting import (
    Accountant,
    AccountingError,
    OpacusPRVAccountant,
    OpacusRDPAccountant,
    calibrate_noise,
    compute_epsilon,
    diff2_noise_ratio,
    epsilon_per_round,
    get_accountant,
    mechanism_history,
    plan,
    round_multipliers,
)
from dcoord.privacy.config import PrivacyConfig
from dcoord.privacy.mechanisms import (
    GradientEstimator,
    NoiseKey,
    PrivacyError,
    PrivateGD,
    RoundSpec,
    add_coordinator_noise,
    encode,
    gaussian_noise,
    load_worker_noise_key,
    params_digest,
    release_binding,
    worker_message,
)
from dcoord.privacy.per_sample import (
    clip_rows,
    clipped_diff_sum,
    clipped_sum,
    flat_params,
    per_sample_grad_diffs,
    per_sample_grads,
    step_norm,
    unflatten,
)

__all__ = [
    "Accountant",
    "AccountingError",
    "GradientEstimator",
    "NoiseKey",
    "OpacusPRVAccountant",
    "OpacusRDPAccountant",
    "PrivacyConfig",
    "PrivacyError",
    "PrivateGD",
    "RoundSpec",
    "add_coordinator_noise",
    "calibrate_noise",
    "clip_rows",
    "clipped_diff_sum",
    "clipped_sum",
    "compute_epsilon",
    "diff2_noise_ratio",
    "encode",
    "epsilon_per_round",
    "flat_params",
    "gaussian_noise",
    "get_accountant",
    "load_worker_noise_key",
    "params_digest",
    "mechanism_history",
    "per_sample_grad_diffs",
    "per_sample_grads",
    "plan",
    "release_binding",
    "round_multipliers",
    "step_norm",
    "unflatten",
    "worker_message",
]
