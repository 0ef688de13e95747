"""``privacy:`` section of a job: which mechanism, how much privacy, who adds the noise.

The config is shared by the coordinator and the workers, so it never holds the workers' noise secret, nor
says where a worker reads it: that is the worker's own setting (``--noise-secret-file`` /
$DCOORD_NOISE_SECRET_FILE / $DCOORD_NOISE_SECRET, see :func:`dcoord.privacy.mechanisms.load_worker_noise_key`),
because the config comes from the coordinator, which must not choose the worker's key.

Defaults marked "paper" come from Murata & Suzuki, DIFF2 (ICML 2023, arXiv 2302.03884) and the authors'
public experiment code; see :mod:`dcoord.privacy.mechanisms` for what was taken and what was chosen.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dcoord.configbase import MAX_ROUNDS, ConfigModel, Seed
from dcoord.privacy.registry import DEFAULT_RESTART_FRACTION as DEFAULT_RESTART_FRACTION  # noqa: F401
from dcoord.privacy.registry import PAPER_CLIP_DIFF as PAPER_CLIP_DIFF  # noqa: F401
from dcoord.privacy.registry import get_mechanism

# Paper (authors' code): the difference clip is C2_r = c2 * ||x_{r-1} - x_{r-2}||, c2 default 30,
# tuned over {1, 3, 10, 30, 100}.
# Paper (authors' code): T = max(1, int(tau * R)), tau tuned over {0.003, 0.01, 0.03, 0.1}, default 0.003.
# dcoord default: tau = 0.01 (from the paper's grid), and never below 2 (T = 1 would silently turn DIFF2 into
# DP-GD); so runs under 250 rounds restart every other round. bench/privacy.py: T = 10 diverged on digits.
PAPER_RESTART_FRACTIONS = (0.003, 0.01, 0.03, 0.1)
# Paper (theory and authors' code): restarts get 1/u of the RDP budget, differences (u-1)/u, u = 1.25.
PAPER_RESTART_SHARE = 1 / 1.25
#: the largest fixed noise multiplier (the accountant's own search stops there too)
MAX_NOISE_MULTIPLIER = 1e7


class PrivacyConfig(ConfigModel):
    """Differential privacy of the training run (record-level: add/remove or replace one sample).

    The DIFF2 paper's own setting is ``neighbouring: replace-one`` with ``trust: coordinator`` (one noise
    draw on the aggregate, the paper's noise on the average over nodes).
    """

    mechanism: str = Field("dp-gd", description="a registered mechanism (dcoord.privacy.registry): dp-gd, diff2")
    epsilon: float | None = Field(default=None, description="target epsilon; the noise is calibrated to it")
    delta: float = Field(1e-5, description="delta of the (epsilon, delta) guarantee")
    noise_multiplier: float | None = Field(
        default=None, description="fixed noise multiplier (restart mechanism for diff2) instead of epsilon"
    )
    noise_multiplier_diff: float | None = Field(
        default=None, description="diff2 only: fixed multiplier of the difference mechanism"
    )
    clip: float = Field(description="C1: per-sample gradient clip (restart rounds, every dp-gd round)")
    clip_diff: float | None = Field(
        default=None, description="diff2: c2 in C2_r = c2 * ||x_{r-1} - x_{r-2}|| (paper default 30)"
    )
    restart_every: int | None = Field(default=None, ge=1, le=MAX_ROUNDS, description="diff2: T, a full private gradient every T rounds")
    restart_share: float = Field(
        default=PAPER_RESTART_SHARE, description="diff2: share of the privacy budget spent on restarts"
    )
    neighbouring: Literal["add-remove", "replace-one"] = Field(
        default="add-remove",
        description="neighbouring datasets: add/remove one sample (sensitivity C/N) or replace one (2C/N, the "
        "DIFF2 paper's); the noise std scales with the sensitivity, the accountant sees the same multiplier",
    )
    trust: Literal["workers", "coordinator"] = Field(
        "workers", description="who adds the noise: each worker (the coordinator sees only noised messages) or the "
        "coordinator once after decoding"
    )
    noise_split: Literal["partition", "aggregate"] = Field(
        "partition", description="trust=workers: full noise on every partition's message, or 1/sqrt(J) of it each "
        "(valid only against an observer of the sum)"
    )
    accountant: Literal["rdp", "prv"] = Field("rdp", description="privacy accountant (Opacus): RDP or PRV")
    sampling: Literal["full", "poisson"] = Field(
        "full", description="full: every sample every round (DP-GD); poisson: each round every sample is in the "
        "batch independently with probability sample_rate (DP-SGD, accounted with amplification by subsampling)"
    )
    sample_rate: float | None = Field(
        default=None, description="sampling: poisson: q, the chance each sample is in a round's batch (expected "
        "batch q * N); the message is the clipped sum over the batch divided by q * N"
    )
    coordinator_seed: Seed | None = Field(default=None, description="trust=coordinator: the coordinator's seed")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict):
            for key in ("secret_env", "secret_file"):
                if key in data:
                    raise ValueError(
                        f"privacy.{key} was removed: where a worker reads its noise secret is the worker's own "
                        "setting (dcoord worker --noise-secret-file PATH, $DCOORD_NOISE_SECRET_FILE or "
                        "$DCOORD_NOISE_SECRET), never the job config's; delete the key"
                    )
        return data

    @field_validator("mechanism")
    @classmethod
    def _registered(cls, v: str) -> str:
        get_mechanism(v)  # AccountingError (a ValueError) naming the registered mechanisms
        return v

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            got = "both" if self.epsilon is not None else "neither"
            raise ValueError(
                "privacy: give exactly one of `epsilon` (a target; dcoord calibrates the noise) or "
                f"`noise_multiplier` (fixed noise); got {got}"
            )
        if self.epsilon is not None and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"privacy.epsilon must be a finite number > 0, got {self.epsilon}")
        for key in ("noise_multiplier", "noise_multiplier_diff"):
            v = getattr(self, key)
            if v is not None and not 0 <= v <= MAX_NOISE_MULTIPLIER:
                raise ValueError(f"privacy.{key} must be a number from 0 to {MAX_NOISE_MULTIPLIER:g}, got {v}")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"privacy.clip (C1) must be a finite number > 0, got {self.clip}")
        if not 0 < self.restart_share < 1:
            raise ValueError(f"privacy.restart_share must be in (0, 1), got {self.restart_share}")
        self._check_sampling()
        get_mechanism(self.mechanism).check(self)
        if self.trust == "coordinator":
            if self.noise_split != "partition":
                raise ValueError("privacy.noise_split applies to trust: workers only (the coordinator adds one noise)")
        elif self.coordinator_seed is not None:
            raise ValueError(
                "privacy.coordinator_seed is not allowed with trust: workers (the coordinator must hold no noise seed)"
            )
        return self

    def _check_sampling(self) -> None:
        if self.sampling == "full":
            if self.sample_rate is not None:
                raise ValueError("privacy.sample_rate applies to sampling: poisson only (sampling is full: every "
                                 "sample every round); set privacy.sampling: poisson or delete sample_rate")
            return
        q = self.sample_rate
        if q is None or not 0 < q < 1:
            raise ValueError(f"privacy.sampling: poisson needs privacy.sample_rate in (0, 1), got {q} "
                             "(1 is sampling: full)")
        if self.mechanism != "dp-gd":
            raise ValueError(
                f"privacy.sampling: poisson needs mechanism: dp-gd, got {self.mechanism}: DIFF2's analysis is "
                "full-batch (its difference rounds need the same samples at x_t and x_(t-1), and its "
                "sensitivity bound has no subsampled form); use sampling: full"
            )

    @property
    def resolved_sample_rate(self) -> float:
        """q: the chance each sample is in a round's batch (1 for full-batch rounds)."""
        return 1.0 if self.sampling == "full" or self.sample_rate is None else float(self.sample_rate)

    def resolved_restart_every(self, rounds: int) -> int:
        """T actually used: 1 for dp-gd; for diff2 the override or max(2, round(0.01 * rounds))."""
        return get_mechanism(self.mechanism).restart_every(self, rounds)

    def resolved_clip_diff(self) -> float | None:
        """c2 actually used (diff2): the override or the paper's default 30."""
        return get_mechanism(self.mechanism).clip_diff(self)
