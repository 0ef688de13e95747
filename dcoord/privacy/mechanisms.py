"""DP-GD and DIFF2(-GD): what a worker sends for a partition, and how the coordinator turns it into a step.

Rounds are 0-BASED here: round t uses the parameters x_t (x_0 the initial model) and produces x_{t+1}.
The spec's 1-based round r is t = r - 1, so its restart test (r - 1) mod T == 0 is ``t % T == 0``; round 0
is always a restart. DP-GD is DIFF2 with T = 1 (every round a restart).

Per round t, partition j of a job with N samples in total (all partitions together):

    restart    m_j = (1/N) * sum_{i in j} clip_{C1}(grad l(x_t; z_i))                  + noise_j
    difference m_j = (1/N) * sum_{i in j} clip_{C2_t}(grad l(x_t; z_i) - grad l(x_{t-1}; z_i)) + noise_j
               C2_t = c2 * ||x_t - x_{t-1}||   (the step just taken; the paper's C2_r = c2 * ||x_{r-1} - x_{r-2}||)

m_j is LINEAR in the partition: a coded task f = sum_k a_k m_{p_k}; decoding with coefficients b gives
sum_j m_j = the uncoded private aggregate g_t (replicas of partition j draw the same noise_j from
(secret, stream, t, j), so they send identical m_j). The coordinator then sets

    restart    v_t = g_t              difference v_t = v_{t-1} + g_t        DIFF2-GD: x_{t+1} = x_t - eta v_t

(with trust=coordinator it first adds its own noise to g_t). With no noise and inactive clipping v_t
telescopes to grad f(x_t): DIFF2-GD is then plain GD.

Noise std per partition (see :func:`dcoord.privacy.accounting.noise_std_factors`): z * C / N each
(``noise_split: partition``, every message the coordinator can isolate is DP by itself; the decoded sum
carries sqrt(J) * z * C / N) or z * C / (N sqrt(J)) (``aggregate``: the decoded sum carries z * C / N, DP
only against an observer of the sum). z is z1 on restarts, z2 on differences.

What comes from the paper (Murata & Suzuki, ICML 2023, arXiv 2302.03884, and the authors' public code):
- the algorithm above, restart when (r-1) mod T == 0, v_r = v_{r-1} + mean_p d_p, x_r = x_{r-1} - eta v_r;
- C2_r = c2 * ||x_{r-1} - x_{r-2}|| (per-sample differences are <= L ||x_{r-1} - x_{r-2}||, so c2 plays L);
  code default c2 = 30, tuned over {1, 3, 10, 30, 100}; C1 tuned over {1, 3, 10, 30, 100} (default 10);
- T = max(1, int(tau * R)), tau tuned over {0.003, 0.01, 0.03, 0.1} (default 0.003); theory
  T = Theta(R * (G^2 sqrt(d) / (L n P eps))^(2/3)); R = 2000 rounds, P = 10 nodes in the experiments;
- noise: restarts get 1/u, differences (u-1)/u of the RDP budget, u = 1.25; this fixes the ratio
  sigma2 / sigma1 (as multipliers) = sqrt(T / (u - 1)) = 2 sqrt(T);
- eta: Theta(1/L) in theory; the experiments try eta = 0.5^i, i = 0..9, and keep the largest that does not
  diverge (no fixed default).
What dcoord chose: add/remove neighbours by default; ``neighbouring: replace-one`` gives the paper's
sensitivity 2C/N (every std doubles; the multipliers and the accounting are unchanged); accounting
with a library accountant (Opacus RDP/PRV) instead of the paper's closed-form RDP bound; calibration by bisection on a
common scale with the paper's ratio; default T = max(2, round(0.01 R)) (from the paper's tau grid); eta is
the runtime's learning rate (no privacy cost, not part of this module).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from dcoord.errors import AccountingError, PrivacyError
from dcoord.privacy.accounting import (
    History,
    mechanism_history,
    noise_std_factors,
    resolve_noise,
)
from dcoord.privacy.per_sample import LossFn, Params, clipped_diff_sum, clipped_sum
from dcoord.privacy.registry import get_mechanism, get_neighbouring

if TYPE_CHECKING:
    from dcoord.privacy.config import PrivacyConfig

# Paper grids / defaults (see module docstring).
PAPER_CLIP_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
PAPER_CLIP_DIFF_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
PAPER_ETA_GRID = tuple(0.5**i for i in range(10))
PAPER_U = 1.25

Kind = Literal["restart", "difference"]


# --------------------------------------------------------------------------------------------- noise keys


class NoiseKey:
    """A worker's noise secret (HMAC key). It cannot be pickled, copied, printed or converted.

    Why: with trust=workers the coordinator must never see the secret; every transport (gRPC protobufs,
    torch.distributed, MPI) serialises through pickle or explicit fields, so a key that refuses pickling
    and has no bytes/int/str form cannot be put into anything sent to the coordinator by accident.
    Per-(stream, round, partition) seeds are HMAC-SHA256 outputs of the key: knowing some of them reveals
    neither the key nor the seeds of other messages.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes | str, *, domain: bytes = b"dcoord/noise-key/v1") -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < 16:
            raise PrivacyError("a noise secret must have at least 16 bytes (use e.g. `openssl rand -hex 32`)")
        object.__setattr__(self, "_key", hmac.new(raw, domain, hashlib.sha256).digest())

    def _seed(self, stream: int, round: int, partition: int, binding: bytes = b"") -> int:
        """``binding``: a digest of what was asked (release_binding); another question, independent noise."""
        msg = b"dcoord/noise/v1" + struct.pack(">qqq", stream, round, partition) + binding
        return int.from_bytes(hmac.new(self._key, msg, hashlib.sha256).digest()[:8], "big")

    def _sample_seed(self, stream: int, round: int, sample_rate: float) -> int:
        """Seed of round ``round``'s Poisson batch: the round and q only (never the parameters), so every
        replica, and every answer about the round, uses the same batch; secret, so no one without the key
        learns which samples a release used (what amplification by subsampling needs)."""
        msg = b"dcoord/poisson-batch/v1" + struct.pack(">qqd", stream, round, sample_rate)
        return int.from_bytes(hmac.new(self._key, msg, hashlib.sha256).digest()[:8], "big")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NoiseKey is immutable")

    def __repr__(self) -> str:
        return "NoiseKey(<hidden>)"

    __str__ = __repr__

    def __reduce__(self):  # pickle, copy and deepcopy all go through here
        raise TypeError("a NoiseKey never leaves the worker: it cannot be pickled or copied")

    def __reduce_ex__(self, protocol):
        raise TypeError("a NoiseKey never leaves the worker: it cannot be pickled or copied")

    def __getstate__(self):
        raise TypeError("a NoiseKey never leaves the worker: it cannot be pickled or copied")


#: Where a worker reads its noise secret by default: a file named here, else the secret itself in SECRET_ENV.
SECRET_FILE_ENV = "DCOORD_NOISE_SECRET_FILE"
SECRET_ENV = "DCOORD_NOISE_SECRET"


def load_worker_noise_key(secret_file: str | None = None, *, env: Mapping[str, str] | None = None) -> NoiseKey:
    """THE ONE I/O FUNCTION: read the worker's noise secret: ``secret_file`` (the worker's --noise-secret-file),
    else the file named by $DCOORD_NOISE_SECRET_FILE, else $DCOORD_NOISE_SECRET.

    Where the secret comes from is the worker's own setting, never the job config's (the config comes from
    the coordinator, which must not pick which of the worker's files or variables becomes the key). All
    workers of a job get the same secret (a Kubernetes Secret, an env var set by the launcher) and the
    coordinator does not. Replicas of a partition then draw identical noise; the coordinator cannot.
    """
    env = os.environ if env is None else env
    secret_file = secret_file or env.get(SECRET_FILE_ENV) or None
    if secret_file is not None:
        try:
            with open(secret_file, "rb") as f:
                return NoiseKey(f.read().strip())
        except OSError as exc:
            raise PrivacyError(f"noise secret file {secret_file}: {exc.strerror or exc}") from None
    value = env.get(SECRET_ENV)
    if not value:
        raise PrivacyError(
            f"trust: workers (and sampling: poisson) needs the worker's noise secret: --noise-secret-file PATH, ${SECRET_FILE_ENV} "
            f"or ${SECRET_ENV}; the coordinator must not have it"
        )
    return NoiseKey(value)


def coordinator_noise_key(seed: int) -> NoiseKey:
    """Key for trust=coordinator noise, from the coordinator's own seed (domain-separated from workers')."""
    return NoiseKey(struct.pack(">q", int(seed)) * 2, domain=b"dcoord/coordinator-noise-key/v1")


def gaussian_noise(
    key: NoiseKey,
    round: int,
    partition: int,
    numel: int,
    std: float,
    *,
    stream: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    binding: bytes = b"",
) -> Tensor:
    """N(0, std^2 I) of length ``numel``, a deterministic function of (key, stream, round, partition).

    Drawn in float64 by torch's CPU generator (bitwise reproducible on any machine), then cast and moved,
    so replicas on different devices get the same noise. ``stream`` separates models/jobs sharing rounds.
    Note: torch's generator is a Mersenne Twister, not a CSPRNG (like Opacus without secure_mode).
    """
    if std < 0 or not math.isfinite(std):
        raise PrivacyError(f"noise std must be finite and >= 0, got {std}")
    g = torch.Generator(device="cpu")
    g.manual_seed(key._seed(stream, round, partition, binding))
    z = torch.randn(numel, generator=g, dtype=torch.float64) * std
    return z.to(dtype=dtype, device=device)


def poisson_batch(key: NoiseKey, round: int, num_samples: int, sample_rate: float, *, stream: int = 0) -> Tensor:
    """Round ``round``'s Poisson batch as a (num_samples,) bool mask: sample i is in it with probability q,
    independently, a deterministic function of (key, stream, round, q) (torch's CPU generator, float64)."""
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate}")
    if not isinstance(key, NoiseKey):
        raise PrivacyError("Poisson sampling needs the workers' NoiseKey (load_worker_noise_key)")
    g = torch.Generator(device="cpu")
    g.manual_seed(key._sample_seed(stream, round, float(sample_rate)))
    return torch.rand(num_samples, generator=g, dtype=torch.float64) < sample_rate


# ------------------------------------------------------------------------------------------ the mechanism


@dataclass(frozen=True)
class RoundSpec:
    """Everything public about one round's release: both sides compute it the same way.

    Every field shapes the release, so every field is bound into the workers' noise seed
    (:func:`release_binding`): a field added here is bound too, with no other change."""

    round: int
    kind: Kind
    clip: float  # C1 (restart) or C2_t = c2 * ||x_t - x_{t-1}|| (difference)
    noise_multiplier: float
    n_samples: int  # N: the message is a sum over the partition divided by N
    partition_std: float  # std of the noise in each partition message (0 with trust=coordinator)
    aggregate_std: float  # std of the total noise in the decoded sum
    coordinator_std: float  # std the coordinator adds after decoding (0 with trust=workers)
    mechanism: str = ""  # the registered mechanism's name
    neighbouring: str = "add-remove"  # the neighbouring relation the sensitivity is for
    noise_split: str = "partition"  # how the workers' noise is split over partitions
    partition_multiplier: float = 0.0  # partition_std / sensitivity: what one partition message costs
    sample_rate: float = 1.0  # q: Poisson sampling divides the clipped sum by the expected batch q * N

    @property
    def batch_scale(self) -> float:
        """The divisor of the clipped sum: N (full batch) or q * N (Poisson sampling, fixed and public)."""
        return self.n_samples * self.sample_rate


def release_binding(spec: RoundSpec, partition: int, params: bytes, *, stream: int = 0) -> bytes:
    """SHA-256 of everything that shapes one worker message, canonically encoded: the round's public
    parameters (every field of ``spec``: mechanism, noise, clip, relation, round), the partition, the
    stream and the digest of the parameters asked about (:func:`params_digest`).

    Why all of it: two messages about the same partition that share a noise draw at two noise scales (or
    two clips) can be combined to cancel the noise exactly; bound to everything, two different questions
    never share a draw, while replicas asked the same question still send identical messages."""
    fields = {k: (v.hex() if isinstance(v, float) else v) for k, v in asdict(spec).items()}
    fields.update(partition=int(partition), stream=int(stream), params=params.hex())
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"dcoord/release/v1" + blob).digest()


class PrivateGD:
    """DP-GD (restart_every=1) or DIFF2 (restart_every=T>1): pure, holds only public parameters."""

    def __init__(
        self,
        *,
        mechanism: Literal["dp-gd", "diff2"],
        clip: float,
        noise_multiplier: float,
        n_samples: int,
        num_partitions: int = 1,
        clip_diff: float | None = None,
        restart_every: int = 1,
        noise_multiplier_diff: float | None = None,
        trust: Literal["workers", "coordinator"] = "workers",
        noise_split: Literal["partition", "aggregate"] = "partition",
        neighbouring: Literal["add-remove", "replace-one"] = "add-remove",
        sample_rate: float = 1.0,
    ) -> None:
        try:
            mech = get_mechanism(mechanism)
            relation = get_neighbouring(neighbouring)
        except AccountingError as exc:
            raise PrivacyError(str(exc)) from None
        if not mech.has_differences:
            restart_every = 1
        elif restart_every > 1 and (clip_diff is None or noise_multiplier_diff is None):
            raise PrivacyError(f"{mechanism} with restart_every > 1 needs clip_diff and noise_multiplier_diff")
        if not 0 < sample_rate <= 1 or (sample_rate < 1 and mech.has_differences):
            raise PrivacyError(f"sample_rate must be in (0, 1] (1 for {mechanism}), got {sample_rate}")
        if clip <= 0 or noise_multiplier < 0 or n_samples <= 0 or num_partitions <= 0 or restart_every < 1:
            raise PrivacyError(
                f"bad mechanism parameters: clip={clip}, noise_multiplier={noise_multiplier}, "
                f"n_samples={n_samples}, num_partitions={num_partitions}, restart_every={restart_every}"
            )
        self.mechanism = mechanism
        self.clip = float(clip)
        self.clip_diff = None if clip_diff is None else float(clip_diff)
        self.restart_every = int(restart_every)
        self.noise_multiplier = float(noise_multiplier)
        self.noise_multiplier_diff = None if noise_multiplier_diff is None else float(noise_multiplier_diff)
        self.n_samples = int(n_samples)
        self.num_partitions = int(num_partitions)
        self.trust = trust
        self.noise_split = noise_split
        self.neighbouring = neighbouring
        self.sample_rate = float(sample_rate)
        self.sensitivity_factor = relation.sensitivity_factor  # k: sensitivity k * C / N, the relation's
        self._part, self._agg = noise_std_factors(trust, noise_split, num_partitions)

    @classmethod
    def from_config(
        cls, cfg: PrivacyConfig, *, rounds: int, n_samples: int, num_partitions: int = 1
    ) -> PrivateGD:
        """Build from a PrivacyConfig: resolves T, c2 and the noise (calibrated when epsilon is given)."""
        z1, z2 = resolve_noise(cfg, rounds)
        return cls(
            mechanism=cfg.mechanism,
            clip=cfg.clip,
            noise_multiplier=z1,
            n_samples=n_samples,
            num_partitions=num_partitions,
            clip_diff=cfg.resolved_clip_diff(),
            restart_every=cfg.resolved_restart_every(rounds),
            noise_multiplier_diff=z2,
            trust=cfg.trust,
            noise_split=cfg.noise_split,
            neighbouring=cfg.neighbouring,
            sample_rate=cfg.resolved_sample_rate,
        )

    def is_restart(self, round: int) -> bool:
        """0-based: restart iff round % T == 0 (the spec's (r-1) mod T == 0 with r = round + 1)."""
        if round < 0:
            raise PrivacyError(f"round must be >= 0, got {round}")
        return round % self.restart_every == 0

    def round_spec(self, round: int, step_norm: float = 0.0) -> RoundSpec:
        """The round's clip and noise. ``step_norm`` = ||x_t - x_{t-1}|| (needed on difference rounds)."""
        if self.is_restart(round):
            kind: Kind = "restart"
            clip, z = self.clip, self.noise_multiplier
        else:
            kind = "difference"
            if not (step_norm >= 0 and math.isfinite(step_norm)):
                raise PrivacyError(f"step_norm must be finite and >= 0, got {step_norm}")
            assert self.clip_diff is not None and self.noise_multiplier_diff is not None
            clip, z = self.clip_diff * step_norm, self.noise_multiplier_diff
        unit = z * self.sensitivity_factor * clip / (self.n_samples * self.sample_rate)  # z * sensitivity
        return RoundSpec(
            round=round,
            kind=kind,
            clip=clip,
            noise_multiplier=z,
            n_samples=self.n_samples,
            partition_std=self._part * unit,
            aggregate_std=self._agg * unit,
            coordinator_std=unit if self.trust == "coordinator" else 0.0,
            mechanism=self.mechanism,
            neighbouring=self.neighbouring,
            noise_split=self.noise_split,
            partition_multiplier=self._part * z,
            sample_rate=self.sample_rate,
        )

    def history(self, rounds: int) -> History:
        """Opacus-style accountant history of the first ``rounds`` rounds."""
        return mechanism_history(
            self.mechanism,
            rounds,
            self.noise_multiplier,
            noise_multiplier_diff=self.noise_multiplier_diff,
            restart_every=self.restart_every,
            sample_rate=self.sample_rate,
        )

    def add_coordinator_noise(
        self, decoded: Tensor, round: int, seed: int, step_norm: float = 0.0, *, stream: int = 0
    ) -> Tensor:
        """trust=coordinator: decoded clipped aggregate + N(0, (z k C / N)^2 I) from the coordinator's seed.

        This is the DIFF2 paper's setting: one noise draw on the aggregate (the average over nodes)."""
        if self.trust != "coordinator":
            raise PrivacyError("add_coordinator_noise is for trust: coordinator (with trust: workers it holds no seed)")
        spec = self.round_spec(round, step_norm)
        return add_coordinator_noise(decoded, round, seed, spec.coordinator_std, stream=stream)


def add_coordinator_noise(decoded: Tensor, round: int, seed: int, std: float, *, stream: int = 0) -> Tensor:
    """decoded + N(0, std^2 I), deterministic in (seed, stream, round)."""
    if isinstance(seed, NoiseKey) or not isinstance(seed, int):
        raise PrivacyError("the coordinator's noise seed must be an int (never a worker NoiseKey)")
    noise = gaussian_noise(
        coordinator_noise_key(seed),
        round,
        -1,
        decoded.numel(),
        std,
        stream=stream,
        dtype=decoded.dtype,
        device=decoded.device,
    )
    return decoded + noise.view_as(decoded)


# ---------------------------------------------------------------------------------------- worker side


def worker_message(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    *,
    spec: RoundSpec,
    partition: int,
    key: NoiseKey | None,
    params: Params = None,
    prev_params: Params = None,
    stream: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """Partition ``partition``'s private message m_j for ``spec.round`` (a flat (d,) tensor, nothing else).

    ``X, y`` are the partition's samples (under Poisson sampling: those of the round's batch, see
    :func:`poisson_batch`); ``params`` = x_t (default: the model's own), ``prev_params`` =
    x_{t-1} (difference rounds). ``key`` is the workers' NoiseKey (required when spec.partition_std > 0).
    The noise seed binds everything that shapes the message (:func:`release_binding`: the round's spec, the
    partition and a digest of (x_t, x_{t-1})): replicas asked the same question send identical messages
    (decoding stays exact), while a coordinator that asks about the same partition with other parameters, or
    at another noise level or clip, gets independent noise and cannot cancel it by combining two answers.
    """
    if spec.kind == "restart":
        s = clipped_sum(model, loss_fn, X, y, spec.clip, params, chunk_size=chunk_size)
    else:
        if prev_params is None:
            raise PrivacyError(f"round {spec.round} is a difference round: pass prev_params (x_(t-1))")
        s = clipped_diff_sum(model, loss_fn, X, y, spec.clip, params, prev_params, chunk_size=chunk_size)
    m = s / spec.batch_scale
    if spec.partition_std > 0:
        if not isinstance(key, NoiseKey):
            raise PrivacyError("trust: workers needs the workers' NoiseKey (load_worker_noise_key) for the noise")
        binding = release_binding(spec, partition, params_digest(model if params is None else params, prev_params),
                                  stream=stream)
        m = m + gaussian_noise(
            key, spec.round, partition, m.numel(), spec.partition_std, stream=stream, dtype=m.dtype, device=m.device,
            binding=binding,
        )
    return m.detach()


def params_digest(params, prev_params=None) -> bytes:
    """SHA-256 of the parameters a message was asked about, canonical as float64 (a float32 vector and its
    exact float64 copy give the same digest); ``params`` a flat tensor/array, a name -> tensor mapping, or a
    module (its own parameters)."""
    h = hashlib.sha256(b"dcoord/params/v1")
    for p in (params, prev_params):
        if p is None:
            h.update(b"\x00none")
            continue
        if isinstance(p, nn.Module):
            tensors = [t.detach() for t in p.parameters()]
        elif isinstance(p, Mapping):
            tensors = [torch.as_tensor(p[k]).detach() for k in sorted(p)]
        else:
            tensors = [torch.as_tensor(p).detach()]
        flat = torch.cat([t.reshape(-1).to("cpu", torch.float64) for t in tensors])
        h.update(struct.pack(">q", flat.numel()))
        h.update(flat.numpy().tobytes())
    return h.digest()


def encode(parts: Sequence[int], coeffs: Sequence[float], messages: Mapping[int, Tensor]) -> Tensor:
    """A coded task's message: sum_k coeffs[k] * m_{parts[k]} (the linear code over private messages)."""
    if len(parts) != len(coeffs) or not parts:
        raise PrivacyError("parts and coeffs must be non-empty and of the same length")
    out = coeffs[0] * messages[parts[0]]
    for p, c in zip(parts[1:], coeffs[1:], strict=True):
        out = out + c * messages[p]
    return out


# ----------------------------------------------------------------------------------- coordinator side


class GradientEstimator:
    """The coordinator's running estimate v_t: v_t = g_t on restarts, v_{t-1} + g_t on differences."""

    def __init__(self, mech: PrivateGD) -> None:
        self.mech = mech
        self.v: Tensor | None = None
        self.last_round: int | None = None

    def update(self, round: int, decoded: Tensor, *, step_norm: float = 0.0, seed: int | None = None) -> Tensor:
        """Fold the decoded aggregate of ``round`` in; returns v_t (the direction: x_{t+1} = x_t - eta v_t).

        trust=coordinator: ``seed`` (the coordinator's own) is required and noise is added first.
        trust=workers: ``seed`` must be None -- the coordinator holds no noise seed.
        """
        if self.last_round is not None and round != self.last_round + 1:
            raise PrivacyError(f"rounds must be folded in order: got {round} after {self.last_round}")
        if self.last_round is None and round != 0 and not self.mech.is_restart(round):
            raise PrivacyError(f"the first round folded in must be a restart, got difference round {round}")
        if self.mech.trust == "coordinator":
            if seed is None:
                raise PrivacyError("trust: coordinator needs the coordinator's noise seed")
            decoded = self.mech.add_coordinator_noise(decoded, round, seed, step_norm)
        elif seed is not None:
            raise PrivacyError("trust: workers -- the coordinator must not hold a noise seed")
        if self.mech.is_restart(round):
            self.v = decoded.clone()
        else:
            assert self.v is not None
            self.v = self.v + decoded
        self.last_round = round
        return self.v

    def state_dict(self) -> dict:
        """The running estimate v_t and the last round folded in (a checkpoint continues from them)."""
        return {"v": None if self.v is None else self.v.clone(), "last_round": self.last_round}

    def load_state_dict(self, state: dict) -> None:
        self.v = None if state["v"] is None else state["v"].clone()
        self.last_round = None if state["last_round"] is None else int(state["last_round"])
