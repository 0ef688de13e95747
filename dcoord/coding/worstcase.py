"""The worst survivor set of a code's decoding, searched rather than sampled (pure math, no I/O).

Why: a code with real decoding coefficients (gc-cyclic, the sequential codes' cyclic inner code) is badly
conditioned on a few rare survivor sets, and a sample of a few dozen sets misses them (gc-cyclic at n = 32,
s = 4 measured 3.6e-6 on 64 sampled sets and 1.8e-4 on its worst window). So every figure here comes from a
search: every survivor set when there are at most ``EXHAUSTIVE_MAX``; otherwise every window of s
consecutive stragglers, ``random_sets`` seeded random straggler sets, and an adversarial local search that
starts from the worst sets found and swaps one straggler for one survivor while the measured error grows.

What is measured, per survivor set: decoding goes through the Scheme interface (``tasks``, ``close_round``,
``decode``); workers' messages are formed in float64 from seeded random part gradients (``DIM`` coordinates,
one fixed draw) and rounded once to each payload dtype; the decode sum is float64; the error is
max|decoded - exact| / max|exact| against the correctly rounded exact sum. The test gradients are fixed (they
do not depend on the search's seed), so the error is a function of the survivor set alone and a search with
another seed can be compared figure for figure. ``sum_ratio`` is max_i max|a_i m_i| / max|g|: what a data
plane that adds the n decoded terms in the payload dtype multiplies its own rounding by.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["round_to", "WorstCase", "search", "DTYPES", "DIM", "EXHAUSTIVE_MAX", "RANDOM_SETS"]

#: the payload dtypes a search measures
DTYPES = ("float64", "float32", "bfloat16")
#: coordinates of the test gradients
DIM = 256
#: every survivor set is decoded when there are at most this many
EXHAUSTIVE_MAX = 3000
#: seeded random straggler sets of a search (besides the windows and the local search)
RANDOM_SETS = 1000
#: seed of the test gradients (fixed: a figure is a property of the code and the survivor set)
GRAD_SEED = 0
#: the dtype whose error steers the local search
STEER = "float32"


@dataclass(frozen=True)
class WorstCase:
    """The searched worst decode error of one code at (n, s), per payload dtype."""

    scheme: str
    n: int
    s: int
    worst_rel_error: dict[str, float]  # worst over the searched sets, per dtype
    uncoded_rel_error: dict[str, float]  # the plain uncoded sum of n rounded parts, same gradients
    worst_stragglers: tuple[int, ...]  # the straggler set of the float32 worst
    coef_l1: float  # sum |a_i| at that set
    sum_ratio: float  # worst max_i max|a_i m_i| / max|g| over the searched sets
    sets: int  # survivor sets decoded
    how: str  # how the search went, in words
    exhaustive: bool = False
    complete: bool = True  # False when a time budget cut the search short
    construction: str = "stable"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_stragglers"] = list(self.worst_stragglers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WorstCase:
        d = dict(d)
        d["worst_stragglers"] = tuple(d["worst_stragglers"])
        return cls(**d)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded once to ``dtype`` and widened back to float64 (what the coordinator decodes)."""
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    if dtype == "float32":
        return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)
    if dtype == "bfloat16":
        m, e = np.frexp(np.asarray(x, dtype=np.float64))
        return np.ldexp(np.rint(np.ldexp(m, 8)), e - 8)
    raise ValueError(f"unknown dtype {dtype!r} (float64, float32 or bfloat16)")


def exact_sum(parts: np.ndarray) -> np.ndarray:
    """Column sums correctly rounded (math.fsum), so that float64 payloads are measured too."""
    return np.array([math.fsum(col) for col in parts.T])


def code_rows(name: str, n: int, s: int, construction: str = "stable"):
    """Code ``name``'s encoding rows, part fractions and a decoder ``F -> {worker: coefficient}``.

    ``name`` is a plain scheme or ``"inner"`` (the sequential codes' inner code). Shared by the trial
    measurement and the worst-case search so both decode exactly what the coordinator decodes.
    """
    from dcoord.coding import gc
    from dcoord.coding.registry import make_scheme
    from dcoord.coding.sgc import InnerCode

    if name == "inner":
        code = InnerCode(n, s, "tandon" if construction == "tandon" else "auto")
        return [code.row(i) for i in range(n)], np.full(n, 1.0 / n), code.decode
    sch = gc.GCCyclic(n, s, construction=construction) if name == gc.GCCyclic.name else make_scheme(name, n, s=s)
    tasks = sch.tasks(0)
    rows = [(tasks[i][0].parts, tasks[i][0].coeffs) for i in range(n)]

    def coefficients(F):
        sch.close_round(0, frozenset(F))
        return {ref.worker: c for ref, c in sch.decode(0).items()}

    return rows, sch.part_fractions(), coefficients


class Evaluator:
    """Decode errors of one code on any straggler set, on fixed seeded test gradients."""

    def __init__(self, name: str, n: int, s: int, construction: str = "stable", dim: int = DIM,
                 dtypes: tuple[str, ...] = DTYPES) -> None:
        self.name, self.n, self.s, self.dtypes = name, n, s, dtypes
        rows, frac, self._coefficients = code_rows(name, n, s, construction)
        E = np.zeros((n, len(frac)))
        for i, (parts, coeffs) in enumerate(rows):
            E[i, list(parts)] = coeffs
        rng = np.random.default_rng(GRAD_SEED)
        grads = rng.standard_normal((len(frac), dim)) * frac[:, None]
        self.exact = exact_sum(grads)
        self.scale = float(np.max(np.abs(self.exact)))
        self.exact_msgs = E @ grads
        self.msgs = {dt: round_to(self.exact_msgs, dt) for dt in dtypes}
        self.evaluated = 0
        # the uncoded baseline: n parts of the same kind of gradient, rounded and summed
        parts = np.random.default_rng(GRAD_SEED + 1).standard_normal((n, dim)) / n
        ex = exact_sum(parts)
        self.uncoded = {dt: float(np.max(np.abs(round_to(parts, dt).sum(axis=0) - ex)) / np.max(np.abs(ex)))
                        for dt in dtypes}

    def __call__(self, stragglers: tuple[int, ...]) -> tuple[dict[str, float], float, float]:
        """(relative error per dtype, sum |a_i|, max_i max|a_i m_i| / max|g|) with ``stragglers`` missing."""
        gone = set(stragglers)
        F = tuple(w for w in range(self.n) if w not in gone)
        a = self._coefficients(F)
        idx = np.fromiter(a.keys(), dtype=np.int64)
        w = np.fromiter(a.values(), dtype=np.float64)
        self.evaluated += 1
        errs = {dt: float(np.max(np.abs(w @ self.msgs[dt][idx] - self.exact))) / self.scale for dt in self.dtypes}
        ratio = float(np.max(np.abs(w[:, None] * self.exact_msgs[idx]))) / self.scale
        return errs, float(np.sum(np.abs(w))), ratio


def search(name: str, n: int, s: int, *, random_sets: int = RANDOM_SETS, starts: int = 3, swaps: int = 32,
           steps: int = 12, seed: int = 0, budget_s: float | None = None, construction: str = "stable",
           dim: int = DIM, exhaustive_max: int = EXHAUSTIVE_MAX) -> WorstCase:
    """Search the straggler sets of plain code ``name`` (or ``"inner"``) at (n, s) for the worst decode error.

    ``seed`` draws the random sets and the local search's swaps (not the test gradients). ``budget_s``: stop
    after about this many seconds (the figure is then a lower bound, ``complete`` False).
    """
    from dcoord.coding.gc import Uncoded

    if name == Uncoded.name:
        s = 0
    ev = Evaluator(name, n, s, construction, dim)
    t0 = time.perf_counter()
    worst = dict.fromkeys(DTYPES, 0.0)
    best: dict[tuple[int, ...], float] = {}  # straggler set -> steering error
    state = {"set": (), "l1": 0.0, "ratio": 0.0}
    out_of_time = False

    def visit(st: tuple[int, ...]) -> float:
        st = tuple(sorted(st))
        if st in best:
            return best[st]
        errs, l1, ratio = ev(st)
        for dt, e in errs.items():
            worst[dt] = max(worst[dt], e)
        if errs[STEER] >= max(best.values(), default=-1.0):
            state["set"], state["l1"] = st, l1
        state["ratio"] = max(state["ratio"], ratio)
        best[st] = errs[STEER]
        return errs[STEER]

    def late() -> bool:
        return budget_s is not None and time.perf_counter() - t0 > budget_s

    exhaustive = s == 0 or math.comb(n, s) <= exhaustive_max
    if exhaustive:
        for st in itertools.combinations(range(n), s):
            visit(st)
            if late():
                out_of_time = True
                break
        how = f"all {len(best)} survivor sets" if not out_of_time else f"{len(best)} survivor sets (time budget)"
    else:
        rng = np.random.default_rng(seed)
        for o in range(n):
            visit(tuple((o + k) % n for k in range(s)))
        windows = len(best)
        for _ in range(random_sets):
            if late():
                out_of_time = True
                break
            visit(tuple(rng.choice(n, s, replace=False).tolist()))
        moves = 0
        ranked = sorted(best, key=best.get, reverse=True)[:starts]
        for start in ranked:
            cur, cur_err = start, best[start]
            for _ in range(steps):
                if out_of_time or late():
                    out_of_time = True
                    break
                survivors = [w for w in range(n) if w not in cur]
                pairs = [(o, i) for o in cur for i in survivors]
                if len(pairs) > swaps:
                    pick = rng.choice(len(pairs), swaps, replace=False)
                    pairs = [pairs[k] for k in pick]
                cand = [tuple(sorted((set(cur) - {o}) | {i})) for o, i in pairs]
                errs = [visit(c) for c in cand]
                k = int(np.argmax(errs))
                if errs[k] <= cur_err:
                    break
                cur, cur_err = cand[k], errs[k]
                moves += 1
        how = (f"{windows} windows of {s} consecutive stragglers + {random_sets} random sets (seed {seed}) + "
               f"local search from the worst {len(ranked)} ({moves} improving swaps); {len(best)} sets")
        if out_of_time:
            how += " (cut by the time budget)"
    return WorstCase(name, n, s, worst, ev.uncoded, state["set"], state["l1"], state["ratio"], len(best), how,
                     exhaustive and not out_of_time, not out_of_time, construction)
