"""Privacy accounting through a library (Opacus), calibration by bisection, and the plan for ``dcoord privacy``.

Neighbouring relation (``privacy.neighbouring``): ADD/REMOVE ONE SAMPLE (default) or REPLACE ONE SAMPLE
(record-level). The dataset size N is treated as public; each round releases (a noisy version of)
(1/N) * sum_i clip_C(u_i) -- u_i a per-sample gradient (restart, dp-gd) or gradient difference (diff2).
Its L2 sensitivity is k * C / N with k = 1 under add/remove (one added or removed sample moves the sum by at
most C) and k = 2 under replace-one (the replaced sample's clipped term goes from one vector of norm <= C to
another: the DIFF2 paper's 2C/N). The noise multiplier z is always noise std / sensitivity, so a release
with std s has z = s * N / (k C), the number the accountant sees: the accountant and the calibration are the
same for both relations, and the mechanisms scale the std by k (the relation's, see
:class:`dcoord.privacy.registry.Neighbouring`). Full-batch rounds have sample rate 1. Rounds are adaptive
(C2_r depends on earlier releases), which Gaussian/RDP composition allows because z is fixed in advance.

Per partition (coded runs): a partition's message (1/N) * sum_{i in part} clip_C(u_i) has the same
sensitivity C/N, each sample lives in one partition, so one round is one Gaussian mechanism with multiplier
z for every partition (parallel composition); coded combinations and replicas are post-processing.

A history is a list of (noise_multiplier, sample_rate, steps), as in Opacus. dp-gd: [(z, 1, R)]. diff2:
[(z1, 1, #restarts), (z2, 1, #differences)] with #restarts = ceil(R / T) (0-based rounds t with t % T == 0).

Poisson sampling (``privacy.sampling: poisson``, dp-gd only): each round every sample is in the batch
independently with probability q, and the round releases (1/(qN)) * sum_{i in batch} clip_C(g_i) + noise of
std z * k * C / (qN) (Opacus's DP-SGD: the expected batch size qN is public and fixed, so the sensitivity is
k * C / (qN) and z is unchanged). History [(z, q, R)]: the accountant's subsampled Gaussian (amplification by
subsampling), as Opacus accounts its own DP-SGD. Replicas and a compromised coordinator's repeated questions
about a round see the same batch (drawn from the workers' secret and the round only), so their releases
compose inside one subsampled mechanism.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dcoord.errors import AccountingError
from dcoord.privacy.registry import History, get_mechanism, get_neighbouring
from dcoord.privacy.registry import diff2_noise_ratio as diff2_noise_ratio  # re-exported
from dcoord.privacy.registry import restart_count as restart_count  # re-exported
from dcoord.privacy.registry import sensitivity_factor as sensitivity_factor  # re-exported

if TYPE_CHECKING:
    from dcoord.privacy.config import PrivacyConfig


# Opacus's default orders plus larger ones, so small epsilons / few rounds still find their best order.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 192, 256, 384, 512, 1024]
)


class Accountant(ABC):
    """epsilon(history, delta) for a composition of (sub)sampled Gaussian mechanisms."""

    name: str = "accountant"

    def epsilon(self, history: Sequence[tuple[float, float, int]], delta: float) -> float:
        """Smallest epsilon the backend certifies for the whole history at this delta (inf if unbounded).

        The cases every backend answers the same way are settled here: nothing released costs 0, a release
        without noise costs infinity; the backend sees only checked, non-trivial histories.
        """
        hist = _check_history(history)
        if not hist:
            return 0.0
        if any(z == 0 for z, _, _ in hist):
            return math.inf
        return self._epsilon(hist, delta)

    @abstractmethod
    def _epsilon(self, hist: History, delta: float) -> float:
        """The backend's epsilon for a checked history of noisy releases."""


def _check_history(history: Sequence[tuple[float, float, int]]) -> History:
    out: History = []
    for z, q, steps in history:
        if steps < 0 or not 0 <= q <= 1 or z < 0:
            raise AccountingError(f"bad history entry (noise_multiplier={z}, sample_rate={q}, steps={steps})")
        if steps > 0 and q > 0:
            out.append((float(z), float(q), int(steps)))
    return out


class OpacusRDPAccountant(Accountant):
    """Opacus's RDP accountant (Mironov 2017; improved RDP->DP conversion of Balle et al. 2020)."""

    name = "rdp"

    def __init__(self, orders: Sequence[float] = RDP_ORDERS) -> None:
        self.orders = list(orders)

    def _epsilon(self, hist: History, delta: float) -> float:
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = hist
        with warnings.catch_warnings():  # "optimal order is the largest alpha": still a valid (loose) bound
            warnings.simplefilter("ignore", UserWarning)
            return float(acc.get_epsilon(delta=delta, alphas=self.orders))


class OpacusPRVAccountant(Accountant):
    """Opacus's PRV accountant (Gopi et al. 2021): numerically tight, slower; eps_error is absolute."""

    name = "prv"

    def __init__(self, eps_error: float = 0.01) -> None:
        self.eps_error = eps_error

    def _epsilon(self, hist: History, delta: float) -> float:
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        acc.history = hist
        try:
            with warnings.catch_warnings():  # log(0) inside Opacus's PRV for sample rate 1 is harmless
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)
                return float(acc.get_epsilon(delta=delta, eps_error=self.eps_error))
        except (ValueError, RuntimeError, FloatingPointError) as e:  # domain / discretisation failures
            raise AccountingError(f"PRV accountant failed for history {hist}: {e}; use accountant: rdp") from e


ACCOUNTANTS: dict[str, type[Accountant]] = {"rdp": OpacusRDPAccountant, "prv": OpacusPRVAccountant}


def register_accountant(name: str, cls: type[Accountant]) -> None:
    """Make ``privacy.accountant: <name>`` resolve to ``cls()``."""
    ACCOUNTANTS[name] = cls


def get_accountant(name: str) -> Accountant:
    """A registered accountant: 'rdp' (default) or 'prv' built in."""
    cls = ACCOUNTANTS.get(name)
    if cls is None:
        raise AccountingError(f"accountant must be {' or '.join(repr(n) for n in ACCOUNTANTS)}, got {name!r}")
    return cls()


def mechanism_history(
    mechanism: str,
    rounds: int,
    noise_multiplier: float,
    *,
    noise_multiplier_diff: float | None = None,
    restart_every: int = 1,
    sample_rate: float = 1.0,
) -> History:
    """Opacus-style history of a run as the named mechanism releases it (sample rate q = ``sample_rate``)."""
    hist = get_mechanism(mechanism).history(rounds, noise_multiplier, noise_multiplier_diff, restart_every)
    if sample_rate == 1.0:
        return hist
    return [(z, float(sample_rate), steps) for z, _, steps in hist]


def compute_epsilon(history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """epsilon of a history with the named backend."""
    return get_accountant(accountant).epsilon(history, delta)


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    mechanism: str = "dp-gd",
    restart_every: int = 1,
    ratio: float | None = None,
    restart_share: float = 0.8,
    accountant: str = "rdp",
    rel_tol: float = 1e-4,
    sample_rate: float = 1.0,
) -> tuple[float, float | None]:
    """Smallest (z_restart, z_diff) with z_diff = ratio * z_restart whose epsilon is <= target (bisection).

    For diff2, ``ratio`` defaults to :func:`diff2_noise_ratio` (the paper's allocation). Returns
    (z, None) for dp-gd. The result errs on the private side: epsilon(result) <= target_epsilon.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise AccountingError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
    if rounds <= 0:
        raise AccountingError(f"rounds must be >= 1, got {rounds}")
    acc = get_accountant(accountant)
    mech = get_mechanism(mechanism)
    default_k = mech.diff_ratio(restart_every, restart_share)
    two = default_k is not None  # a second multiplier (difference rounds), tied to the first by the ratio
    k = (ratio if ratio is not None else default_k) if two else 1.0

    def eps(z: float) -> float:
        return acc.epsilon(mechanism_history(mechanism, rounds, z, noise_multiplier_diff=k * z if two else None,
                                             restart_every=restart_every, sample_rate=sample_rate), delta)

    lo, hi = 1e-3, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e7:
            raise AccountingError(f"no noise multiplier below 1e7 reaches epsilon={target_epsilon}")
    if eps(lo) <= target_epsilon:
        raise AccountingError(f"epsilon={target_epsilon} is reached with almost no noise; give noise_multiplier")
    while hi - lo > rel_tol * hi:
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi, (k * hi if two else None)


def epsilon_per_round(history_of_rounds: Sequence[float], delta: float, accountant: str = "rdp",
                      sample_rate: float = 1.0) -> list[float]:
    """Cumulative epsilon after each round, given each round's noise multiplier (every round sample rate q).

    Groups equal multipliers, so a diff2 run costs O(R) accountant calls with two-entry histories.
    """
    acc = get_accountant(accountant)
    out: list[float] = []
    counts: dict[float, int] = {}
    for z in history_of_rounds:
        counts[z] = counts.get(z, 0) + 1
        out.append(acc.epsilon([(zz, sample_rate, c) for zz, c in counts.items()], delta))
    return out


def round_multipliers(
    mechanism: str, rounds: int, noise_multiplier: float, noise_multiplier_diff: float | None, restart_every: int
) -> list[float]:
    """The noise multiplier of each 0-based round (restart when t % T == 0)."""
    return get_mechanism(mechanism).round_multipliers(rounds, noise_multiplier, noise_multiplier_diff, restart_every)


def resolve_noise(cfg: PrivacyConfig, rounds: int) -> tuple[float, float | None]:
    """(z_restart, z_diff) for a config: the given multipliers or the calibrated ones."""
    T = cfg.resolved_restart_every(rounds)
    ratio = get_mechanism(cfg.mechanism).diff_ratio(T, cfg.restart_share)
    if cfg.noise_multiplier is not None:
        if ratio is None:
            return cfg.noise_multiplier, None
        z2 = cfg.noise_multiplier_diff
        if z2 is None:
            z2 = ratio * cfg.noise_multiplier
        return cfg.noise_multiplier, z2
    assert cfg.epsilon is not None
    return calibrate_noise(
        cfg.epsilon,
        cfg.delta,
        rounds,
        mechanism=cfg.mechanism,
        restart_every=T,
        restart_share=cfg.restart_share,
        accountant=cfg.accountant,
        sample_rate=cfg.resolved_sample_rate,
    )


def compromised_coordinator_epsilon(privacy_cfg: PrivacyConfig, rounds: int, num_partitions: int, replicas: int,
                                    z1: float, z2: float | None) -> float:
    """Epsilon against a coordinator that asks every replica of a partition, each with other parameters.

    With trust: workers every replica binds its noise to the parameters it was asked about and answers each
    (round, partition) once, so such a coordinator gets up to ``replicas`` (s + 1 for gradient codes)
    independently noised answers about each partition per round; one sample lies in one partition, so
    that is ``replicas`` adaptive Gaussian releases of a query of sensitivity C/N with each message's own
    noise (z * C/N, or z * C/(N sqrt J) with noise_split: aggregate): by RDP composition, one release with
    multiplier z * part_factor / sqrt(replicas). With trust: coordinator it sees un-noised sums: infinite.
    """
    if privacy_cfg.trust == "coordinator":
        return math.inf
    if replicas < 1:
        raise AccountingError(f"replicas must be >= 1, got {replicas}")
    part_factor, _ = noise_std_factors(privacy_cfg.trust, privacy_cfg.noise_split, num_partitions)
    scale = part_factor / math.sqrt(replicas)
    hist = mechanism_history(privacy_cfg.mechanism, rounds, z1 * scale,
                             noise_multiplier_diff=None if z2 is None else z2 * scale,
                             restart_every=privacy_cfg.resolved_restart_every(rounds),
                             sample_rate=privacy_cfg.resolved_sample_rate)
    return get_accountant(privacy_cfg.accountant).epsilon(hist, privacy_cfg.delta)


def plan(privacy_cfg: PrivacyConfig, rounds: int, n_samples: int, num_partitions: int = 1,
         replicas: int = 1) -> dict[str, Any]:
    """What ``dcoord privacy JOB.yaml`` prints: the noise, the epsilon it buys, restarts, noise stds, and
    the epsilon a compromised coordinator can get (``replicas``: workers that hold each partition).

    Noise stds include the neighbouring relation's sensitivity factor (x2 under replace-one). They are those
    of the released MEAN gradient (sum over partitions): per partition and in the
    decoded aggregate, for restarts (clip C1) and per unit of C2_r for differences (C2_r is only known at
    run time: c2 * ||x_{r-1} - x_{r-2}||).
    """
    if rounds <= 0 or n_samples <= 0 or num_partitions <= 0:
        raise AccountingError(
            f"rounds, n_samples and num_partitions must be >= 1, got {rounds}, {n_samples}, {num_partitions}"
        )
    cfg = privacy_cfg
    T = cfg.resolved_restart_every(rounds)
    z1, z2 = resolve_noise(cfg, rounds)
    q = cfg.resolved_sample_rate
    hist = mechanism_history(cfg.mechanism, rounds, z1, noise_multiplier_diff=z2, restart_every=T, sample_rate=q)
    eps = get_accountant(cfg.accountant).epsilon(hist, cfg.delta)
    n_restart = restart_count(rounds, T)
    part_factor, agg_factor = noise_std_factors(cfg.trust, cfg.noise_split, num_partitions)
    relation = get_neighbouring(cfg.neighbouring)
    k = relation.sensitivity_factor
    part_factor, agg_factor = k * part_factor, k * agg_factor
    n_batch = q * n_samples  # the divisor of the clipped sum: N, or the expected batch qN under Poisson sampling
    out: dict[str, Any] = {
        "mechanism": cfg.mechanism,
        "accountant": cfg.accountant,
        "neighbouring": relation.description,
        "epsilon": eps,
        "target_epsilon": cfg.epsilon,
        "delta": cfg.delta,
        "rounds": rounds,
        "n_samples": n_samples,
        "num_partitions": num_partitions,
        "trust": cfg.trust,
        "noise_split": cfg.noise_split if cfg.trust == "workers" else None,
        "clip": cfg.clip,
        "noise_multiplier": z1,
        "restart_every": T,
        "restarts": n_restart,
        "differences": rounds - n_restart,
        "history": [list(h) for h in hist],
        "epsilon_per_round_mean": eps / rounds,
        "sampling": cfg.sampling,
        "sample_rate": q,
        "expected_batch_size": n_batch,
        "noise_std_partition": part_factor * z1 * cfg.clip / n_batch,
        "noise_std_aggregate": agg_factor * z1 * cfg.clip / n_batch,
    }
    out["replicas_per_partition"] = replicas
    out["epsilon_compromised_coordinator"] = compromised_coordinator_epsilon(cfg, rounds, num_partitions,
                                                                             replicas, z1, z2)
    out.update(get_mechanism(cfg.mechanism).plan_extra(cfg, z2, part_factor, agg_factor, n_samples))
    return out


def noise_std_factors(trust: str, noise_split: str, num_partitions: int) -> tuple[float, float]:
    """(per-partition, aggregate) noise std in units of z * sensitivity = z * k * clip / N.

    - trust=coordinator: partitions carry no noise; the coordinator adds std z*C/N once after decoding.
    - trust=workers, noise_split=partition (default): each partition message carries std z*C/N, so EVERY
      message the coordinator can isolate is itself (eps, delta)-DP; the decoded sum of J partitions has
      std sqrt(J)*z*C/N (the price of not trusting the coordinator; the spec's per-node accounting).
    - trust=workers, noise_split=aggregate: each partition carries z*C/(N*sqrt(J)), the decoded sum has
      exactly z*C/N (the DIFF2 authors' code adds noise to the average). Only valid against an observer of
      the decoded SUM: a coordinator that can isolate one partition's message (uncoded or replicated
      schemes) sees sqrt(J) less noise than accounted. Use with secure aggregation or a trusted decoder.
    """
    if trust == "coordinator":
        return 0.0, 1.0
    if noise_split == "partition":
        return 1.0, math.sqrt(num_partitions)
    if noise_split == "aggregate":
        return 1.0 / math.sqrt(num_partitions), 1.0
    raise AccountingError(f"noise_split must be 'partition' or 'aggregate', got {noise_split!r}")
