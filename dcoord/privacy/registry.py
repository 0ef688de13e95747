"""Privacy mechanisms and neighbouring relations by name.

Each mechanism (DP-GD, DIFF2, or one registered by a plugin) answers the questions the accounting, the
config checks and the plan ask (what each round releases, the accountant's history, how noise is split), so
none of them branches on the mechanism's name. The neighbouring relation (add/remove or replace one sample)
owns the sensitivity factor k (sensitivity k * C / N of the clipped mean) for every mechanism alike.
Pure: no I/O, no torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from dcoord.errors import AccountingError

History = list[tuple[float, float, int]]

#: default T for diff2 as a fraction of the rounds (the paper restarts every ~1% of the run)
DEFAULT_RESTART_FRACTION = 0.01
#: c2 of the DIFF2 paper's experiments
PAPER_CLIP_DIFF = 30.0


def restart_count(rounds: int, restart_every: int) -> int:
    """Number of 0-based rounds t < rounds with t % T == 0."""
    if rounds <= 0:
        return 0
    return -(-rounds // restart_every)


def diff2_noise_ratio(restart_every: int, restart_share: float) -> float:
    """z_diff / z_restart from the paper's budget allocation.

    The paper gives restarts 1/u and differences (u-1)/u of the RDP budget (u = 1.25, i.e. share 0.8) while
    counting R/T restarts and R differences; equal RDP per unit of budget gives
    z_diff / z_restart = sqrt(T * share / (1 - share)) (= sqrt(T / (u - 1)) = 2 sqrt(T) for u = 1.25).
    """
    if restart_every <= 1:
        return 1.0
    return math.sqrt(restart_every * restart_share / (1.0 - restart_share))


class Mechanism(ABC):
    """A full-batch private gradient mechanism: round t releases a restart (clip C1, multiplier z) or, for
    mechanisms with differences, a gradient difference (clip C2, multiplier z_diff)."""

    name: str = "mechanism"
    #: rounds between restarts release noised gradient differences (clip_diff, noise_multiplier_diff)
    has_differences: bool = False

    @abstractmethod
    def restart_every(self, cfg: Any, rounds: int) -> int:
        """T: a full private gradient every T rounds (1 = every round)."""

    def clip_diff(self, cfg: Any) -> float | None:
        """c2 used for difference rounds (None: the mechanism has none)."""
        return None

    def diff_ratio(self, restart_every: int, restart_share: float) -> float | None:
        """z_diff / z when the noise is calibrated (None: one multiplier only)."""
        return None

    def check(self, cfg: Any) -> None:
        """Mechanism-specific checks of a privacy config section (raise ValueError naming the field)."""
        return None

    def history(self, rounds: int, z: float, z_diff: float | None, restart_every: int) -> History:
        """The Opacus-style history the accountant composes (sample rate 1)."""
        return [(z, 1.0, rounds)]

    def round_multipliers(self, rounds: int, z: float, z_diff: float | None, restart_every: int) -> list[float]:
        """The noise multiplier of each 0-based round."""
        return [z] * rounds

    def plan_extra(self, cfg: Any, z_diff: float | None, part_factor: float, agg_factor: float,
                   n_samples: int) -> dict[str, Any]:
        """Extra fields of ``dcoord privacy``'s plan."""
        return {}


class DPGD(Mechanism):
    """Clipped, noised full gradient every round."""

    name = "dp-gd"

    def restart_every(self, cfg: Any, rounds: int) -> int:
        return 1

    def check(self, cfg: Any) -> None:
        for field in ("clip_diff", "noise_multiplier_diff"):
            if getattr(cfg, field) is not None:
                raise ValueError(f"privacy.{field} applies to mechanism: diff2 only (mechanism is dp-gd)")
        if cfg.restart_every not in (None, 1):
            raise ValueError(f"privacy.restart_every must be 1 or unset for mechanism: dp-gd, got {cfg.restart_every}")


class DIFF2(Mechanism):
    """A restart every T rounds, noised gradient differences in between (a running estimator)."""

    name = "diff2"
    has_differences = True

    def restart_every(self, cfg: Any, rounds: int) -> int:
        if cfg.restart_every is not None:
            return cfg.restart_every
        return max(2, round(DEFAULT_RESTART_FRACTION * rounds))

    def clip_diff(self, cfg: Any) -> float | None:
        return PAPER_CLIP_DIFF if cfg.clip_diff is None else cfg.clip_diff

    def diff_ratio(self, restart_every: int, restart_share: float) -> float | None:
        return diff2_noise_ratio(restart_every, restart_share) if restart_every > 1 else None

    def check(self, cfg: Any) -> None:
        if cfg.clip_diff is not None and not (cfg.clip_diff > 0 and math.isfinite(cfg.clip_diff)):
            raise ValueError(f"privacy.clip_diff (c2) must be a finite number > 0, got {cfg.clip_diff}")
        if cfg.restart_every is not None and cfg.restart_every < 1:
            raise ValueError(f"privacy.restart_every (T) must be an integer >= 1, got {cfg.restart_every}")
        if cfg.noise_multiplier_diff is not None:
            if cfg.noise_multiplier is None:
                raise ValueError(
                    "privacy.noise_multiplier_diff needs noise_multiplier too (with epsilon both are calibrated)"
                )
            if not (cfg.noise_multiplier_diff >= 0 and math.isfinite(cfg.noise_multiplier_diff)):
                raise ValueError(
                    f"privacy.noise_multiplier_diff must be a finite number >= 0, got {cfg.noise_multiplier_diff}"
                )

    def history(self, rounds: int, z: float, z_diff: float | None, restart_every: int) -> History:
        if restart_every <= 1:
            return [(z, 1.0, rounds)]
        if z_diff is None:
            raise AccountingError("diff2 needs noise_multiplier_diff")
        n_restart = restart_count(rounds, restart_every)
        return [(z, 1.0, n_restart), (z_diff, 1.0, rounds - n_restart)]

    def round_multipliers(self, rounds: int, z: float, z_diff: float | None, restart_every: int) -> list[float]:
        if restart_every <= 1:
            return [z] * rounds
        if z_diff is None:
            raise AccountingError("diff2 needs noise_multiplier_diff")
        return [z if t % restart_every == 0 else z_diff for t in range(rounds)]

    def plan_extra(self, cfg: Any, z_diff: float | None, part_factor: float, agg_factor: float,
                   n_samples: int) -> dict[str, Any]:
        out: dict[str, Any] = {"noise_multiplier_diff": z_diff, "clip_diff": self.clip_diff(cfg),
                               "restart_share": cfg.restart_share}
        if z_diff is not None:
            out["noise_std_diff_partition_per_C2"] = part_factor * z_diff / n_samples
            out["noise_std_diff_aggregate_per_C2"] = agg_factor * z_diff / n_samples
        return out


_MECHANISMS: dict[str, Mechanism] = {}


def register_mechanism(mech: Mechanism, *, replace: bool = False) -> Mechanism:
    """Make ``privacy.mechanism: <mech.name>`` resolve to ``mech``."""
    if mech.name in _MECHANISMS and not replace:
        raise AccountingError(f"privacy mechanism {mech.name!r} is already registered")
    _MECHANISMS[mech.name] = mech
    return mech


def mechanism_names() -> tuple[str, ...]:
    return tuple(_MECHANISMS)


def get_mechanism(name: str) -> Mechanism:
    mech = _MECHANISMS.get(name)
    if mech is None:
        raise AccountingError(f"mechanism must be {' or '.join(repr(n) for n in _MECHANISMS)}, got {name!r}")
    return mech


register_mechanism(DPGD())
register_mechanism(DIFF2())


@dataclass(frozen=True)
class Neighbouring:
    """A neighbouring relation: k in the sensitivity k * C / N of any clipped-mean release.

    The noise multiplier z stays noise std / sensitivity, so the accountant sees the same z under every
    relation; only the std a mechanism draws scales with k."""

    name: str
    sensitivity_factor: float
    description: str


NEIGHBOURING: dict[str, Neighbouring] = {
    n.name: n
    for n in (
        Neighbouring("add-remove", 1.0, "add/remove one sample (sensitivity C/N of the mean)"),
        Neighbouring("replace-one", 2.0, "replace one sample (sensitivity 2C/N of the mean)"),
    )
}


def get_neighbouring(name: str) -> Neighbouring:
    """The relation named by ``privacy.neighbouring``."""
    rel = NEIGHBOURING.get(name)
    if rel is None:
        raise AccountingError(
            f"privacy.neighbouring must be {' or '.join(repr(n) for n in NEIGHBOURING)}, got {name!r}"
        )
    return rel


def sensitivity_factor(neighbouring: str) -> float:
    """k in sensitivity k * C / N of the clipped mean: 1 for add/remove one sample, 2 for replace-one."""
    return get_neighbouring(neighbouring).sensitivity_factor
