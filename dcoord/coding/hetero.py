"""Heterogeneity-aware gradient coding (gc-hetero): each worker's load in proportion to its speed, any s
stragglers tolerated, the exact gradient decoded.

The batch is cut into ``parts`` equal grid parts (8 per worker by default) that never change, so a re-plan
(new speeds) only moves which worker computes which grid parts: workers keep their data partition. A plan
is one of two constructions, whichever is faster for the speeds (the 0/1 one when within ``LAYER_SLACK``):

- **layered** (0/1, exact as a plain sum): the workers are split into s + 1 layers of near-equal total
  speed; each layer covers the whole batch once, cut among its members in proportion to their speeds.
  With at most s stragglers one layer is intact (pigeonhole), and the sum of its messages is the gradient,
  with coefficient 1 each (no amplification at all). Round time W / min(layer speed); for speeds
  {1,1,1,1,2,2,4,4}, s = 1 the layers {4,2,1,1} + {4,2,1,1} meet the load-balanced bound exactly.
- **wrap** (real coefficients): loads l_i = (s+1) c_i / sum c (clipped at the whole batch and rebalanced)
  are laid end to end around the batch, wrapping s + 1 times, so every grid part is held by exactly s + 1
  workers (each load <= the batch, so no worker holds a part twice). Coefficients come from a polynomial
  (Reed-Solomon-like) construction: the parts held by T get p_T(alpha_i) = prod_{k not in T}(alpha_i -
  alpha_k), a monic polynomial of degree n - s - 1 vanishing off T, so for any n - s survivors the
  Lagrange weights 1 / prod_{k in F, k != i}(alpha_i - alpha_k) sum every column to its leading coefficient
  1: any n - s workers decode, for any speeds. Decoding solves the float64 least-squares system with the
  same residual check as gc-cyclic (amplification grows with n, as for every real-coefficient code).

Speeds are declared (``coding.speeds``) or measured: the first ``warmup`` rounds run the equal-speed plan
and wait for every worker, then the plan follows the median seconds per unit of work over the last
``window`` rounds, re-planned again when that estimate, taken over a whole window under the current plan,
drifts more than ``drift`` from the planned speeds.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from dcoord.coding.base import DecodeError, ResultRef, SchemeError, SchemeSpec, Task, register_scheme
from dcoord.coding.gc import _PlainScheme, solve_decoding
from dcoord.dtypes import UNIT_ROUNDOFF

#: grid parts per worker (the batch is cut into parts = PARTS_PER_WORKER * n equal parts)
PARTS_PER_WORKER = 8
#: the 0/1 layered plan is taken when its round time is within this factor of the wrap plan's
LAYER_SLACK = 0.05
#: measured speeds: rounds of the equal plan (all workers waited for) before the first re-plan
WARMUP = 3
#: measured speeds: rounds in the moving (median) estimate
WINDOW = 5
#: measured speeds: re-plan when some worker's share of the total speed moves more than this (relative)
DRIFT = 0.2


def balanced_loads(speeds: np.ndarray, s: int) -> np.ndarray:
    """Loads (fractions of the batch) proportional to speed with sum s + 1, none above 1 (the whole batch):
    the fastest are clipped at 1 and the rest share what is left in proportion to their speeds."""
    c = np.asarray(speeds, dtype=np.float64)
    loads = np.zeros(len(c))
    clipped = np.zeros(len(c), dtype=bool)
    while True:
        rest = ~clipped
        share = (s + 1 - clipped.sum()) * c[rest] / c[rest].sum()
        loads[rest] = share
        over = rest.copy()
        over[rest] = share > 1.0
        if not over.any():
            break
        clipped |= over
        loads[clipped] = 1.0
    return loads


def bound_time(speeds: np.ndarray, s: int) -> float:
    """Round time (batch compute at unit speed = 1) of the load-balanced bound: max_i l_i / c_i."""
    c = np.asarray(speeds, dtype=np.float64)
    return float(np.max(balanced_loads(c, s) / c))


def speed_layers(speeds: np.ndarray, s: int) -> list[list[int]]:
    """s + 1 groups of workers with total speeds as equal as possible (greedy by speed, then moves and swaps
    that raise the slowest group's total)."""
    c = np.asarray(speeds, dtype=np.float64)
    groups: list[list[int]] = [[] for _ in range(s + 1)]
    sums = np.zeros(s + 1)
    for i in sorted(range(len(c)), key=lambda i: (-c[i], i)):
        g = int(np.argmin(sums))
        groups[g].append(i)
        sums[g] += c[i]
    improved = True
    while improved:
        improved = False
        lo = int(np.argmin(sums))
        for hi in np.argsort(-sums):
            hi = int(hi)
            if hi == lo:
                continue
            gap = sums[hi] - sums[lo]
            best = None  # (new min of the pair, worker from hi, worker from lo or None)
            for a in groups[hi]:
                if len(groups[hi]) > 1 and 0 < c[a] < gap:
                    best = max(best or (0, -1, None), (min(sums[hi] - c[a], sums[lo] + c[a]), a, None))
                for b in groups[lo]:
                    d = c[a] - c[b]
                    if 0 < d < gap:
                        best = max(best or (0, -1, None), (min(sums[hi] - d, sums[lo] + d), a, b))
            if best is not None and best[0] > sums[lo] + 1e-12 * sums.max():
                _, a, b = best
                groups[hi].remove(a)
                groups[lo].append(a)
                sums[hi] -= c[a]
                sums[lo] += c[a]
                if b is not None:
                    groups[lo].remove(b)
                    groups[hi].append(b)
                    sums[lo] -= c[b]
                    sums[hi] += c[b]
                improved = True
                break
    return [sorted(g) for g in groups]


@dataclass
class Plan:
    """One assignment: every worker's grid parts and coefficients, and how to decode it."""

    kind: str  # "layered" | "wrap"
    speeds: np.ndarray  # the speeds it was planned for (normalised: max 1)
    rows: list[tuple[tuple[int, ...], tuple[float, ...]]]
    layers: list[list[int]] | None  # layered: the worker groups that each cover the batch once
    B: np.ndarray  # n x parts encoding matrix (0 off the support)
    time: float  # predicted round time, batch compute at unit speed = 1 (fastest worker's speed = 1)

    def loads(self, parts: int) -> np.ndarray:
        return np.array([len(p) / parts for p, _ in self.rows])

    def holdings(self) -> list[set[int]]:
        return [set(p) for p, _ in self.rows]


def _rows_from_B(B: np.ndarray) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    rows = []
    for i in range(B.shape[0]):
        nz = np.flatnonzero(B[i])
        rows.append((tuple(int(j) for j in nz), tuple(float(B[i, j]) for j in nz)))
    return rows


def layered_plan(speeds: np.ndarray, s: int, parts: int) -> Plan:
    """The 0/1 plan: s + 1 speed-balanced layers, each cutting the batch among its members by speed."""
    c = np.asarray(speeds, dtype=np.float64)
    layers = speed_layers(c, s)
    B = np.zeros((len(c), parts))
    for g in layers:
        total = c[g].sum()
        cut = np.rint(np.concatenate([[0.0], np.cumsum(c[g])]) / total * parts).astype(int)
        cut[-1] = parts
        for i, a, b in zip(g, cut[:-1], cut[1:]):
            B[i, a:b] = 1.0
    loads = B.sum(axis=1) / parts
    t = max(float(np.max(loads[g] / c[g])) for g in layers)
    return Plan("layered", c, _rows_from_B(B), layers, B, t)


def _nodes(n: int) -> np.ndarray:
    """Chebyshev points: the best-spread real evaluation points (they keep the Lagrange weights small)."""
    return np.cos((2 * np.arange(n) + 1) * np.pi / (2 * n))


def wrap_plan(speeds: np.ndarray, s: int, parts: int) -> Plan:
    """The real-coefficient plan: speed-proportional loads wrapped s + 1 times around the batch."""
    c = np.asarray(speeds, dtype=np.float64)
    n = len(c)
    loads = balanced_loads(c, s)
    pos = np.rint(np.concatenate([[0.0], np.cumsum(loads)]) * parts).astype(int)
    pos[-1] = (s + 1) * parts
    holders: list[list[int]] = [[] for _ in range(parts)]
    for i in range(n):
        for q in range(pos[i], pos[i + 1]):
            holders[q % parts].append(i)
    alpha = _nodes(n)
    B = np.zeros((n, parts))
    for q, T in enumerate(holders):
        if len(set(T)) != s + 1:
            raise SchemeError(f"gc-hetero: grid part {q} is held by {sorted(T)}, not s+1={s + 1} workers")
        off = [k for k in range(n) if k not in T]
        for i in T:
            B[i, q] = float(np.prod(alpha[i] - alpha[off]))
    scale = np.max(np.abs(B), axis=1)
    B /= np.where(scale > 0, scale, 1.0)[:, None]  # row scaling leaves decodability as it is
    got = (B != 0).sum(axis=1) / parts
    return Plan("wrap", c, _rows_from_B(B), None, B, float(np.max(got / c)))


CONSTRUCTIONS = ("auto", "layered", "wrap")


def make_plan(speeds: np.ndarray, s: int, parts: int, construction: str = "auto") -> Plan:
    """The faster of the two constructions for these speeds, the 0/1 layered one unless it is more than
    ``LAYER_SLACK`` slower (or s = 0: one layer, everything split by speed); ``construction`` forces one."""
    c = np.asarray(speeds, dtype=np.float64)
    c = c / c.max()
    if construction == "wrap":
        return wrap_plan(c, s, parts)
    if construction == "layered":
        return layered_plan(c, s, parts)
    layered = layered_plan(c, s, parts)
    if s == 0 or layered.time <= (1 + LAYER_SLACK) * bound_time(c, s):
        return layered
    wrap = wrap_plan(c, s, parts)
    return layered if layered.time <= (1 + LAYER_SLACK) * wrap.time else wrap


def moved_parts(old: Plan, new: Plan) -> int:
    """Grid parts a re-plan gives to a worker that did not hold them (the data a re-plan moves)."""
    return sum(len(b - a) for a, b in zip(old.holdings(), new.holdings()))


def plan_precision(plan: Plan, s: int, dtype: str = "float32", max_sets: int = 64, seed: int = 0) -> dict:
    """The plan's decode precision, measured as for the other codes (dcoord.coding.precision): the worst
    relative error of the decoded sum over survivor sets (every one, or ``max_sets`` random ones) with the
    messages rounded to ``dtype``, and that error over the dtype's unit roundoff (the amplification)."""
    n, parts = plan.B.shape
    set_rng, grad_rng = (np.random.default_rng(q) for q in np.random.SeedSequence(seed).spawn(2))
    exhaustive = math.comb(n, s) <= max_sets
    sets = (list(itertools.combinations(range(n), n - s)) if exhaustive
            else [tuple(sorted(set_rng.choice(n, n - s, replace=False).tolist())) for _ in range(max_sets)])
    g = grad_rng.standard_normal((parts, 16)) / parts
    exact = np.array([math.fsum(col) for col in g.T])  # correctly rounded, so float64 is measured too
    msgs = plan.B @ g
    if dtype != "float64":  # rounded once to the payload dtype, as the workers send them
        msgs = _round_once(msgs, dtype)
    worst = 0.0
    for F in sets:
        if plan.layers is not None:
            layer = next(L for L in plan.layers if all(w in F or not plan.rows[w][0] for w in L))
            rows, a = [w for w in layer if plan.rows[w][0]], None
            got = msgs[rows].sum(axis=0)
        else:
            rows = [w for w in F if plan.rows[w][0]]
            a = solve_decoding(plan.B, tuple(rows))
            got = a @ msgs[rows]
        worst = max(worst, float(np.max(np.abs(got - exact)) / np.max(np.abs(exact))))
    return {"dtype": dtype, "worst_rel_error": worst, "amplification": worst / UNIT_ROUNDOFF[dtype],
            "sets": len(sets), "exhaustive": exhaustive}


def _round_once(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded once to float32 or bfloat16 and widened back to float64."""
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    m, e = np.frexp(x)
    return np.ldexp(np.rint(np.ldexp(m, 8)), e - 8)


def check_speeds(speeds, n: int) -> tuple[float, ...]:
    """Validated declared speeds: n finite values > 0 (SchemeError naming coding.speeds otherwise)."""
    vals = tuple(float(v) for v in speeds)
    if len(vals) != n:
        raise SchemeError(f"coding.speeds needs one speed per worker ({n} values, got {len(vals)})")
    bad = [v for v in vals if not (math.isfinite(v) and v > 0)]
    if bad:
        raise SchemeError(f"coding.speeds must be finite and > 0 (got {bad[0]:g}); give each worker's relative speed")
    return vals


class GCHetero(_PlainScheme):
    """gc-hetero: loads in proportion to (declared or measured) speeds; any s stragglers decode exactly."""

    name = "gc-hetero"

    def __init__(self, n: int, s: int, speeds=None, jobs: int | None = None, parts: int | None = None,
                 warmup: int = WARMUP, window: int = WINDOW, drift: float = DRIFT,
                 construction: str = "auto") -> None:
        super().__init__(n, s, jobs)
        if construction not in CONSTRUCTIONS:
            raise SchemeError(f"gc-hetero construction must be one of {CONSTRUCTIONS} (got {construction!r})")
        self.construction = construction
        self.grid = parts or PARTS_PER_WORKER * n
        self.declared = speeds is not None
        c = np.array(check_speeds(speeds, n) if speeds is not None else [1.0] * n)
        self.warmup, self.window, self.drift = warmup, window, drift
        self.plan = make_plan(c, s, self.grid, construction)
        self.epoch = 0
        self._round_plan: dict[int, Plan] = {}
        self._unit_s: list[np.ndarray] = []  # per closed round: seconds per unit of work (nan = not seen)
        self._cache: dict[tuple[int, frozenset[int]], tuple[dict[int, float], float]] = {}
        self.replans: list[dict] = []
        self._last_replan = 0  # first round of the current plan

    # -- plan ---------------------------------------------------------------------------------------
    def part_fractions(self) -> np.ndarray:
        return np.full(self.grid, 1.0 / self.grid)

    def _plan_for(self, round: int) -> Plan:
        return self._round_plan.get(round, self.plan)

    def tasks(self, round: int) -> dict[int, list[Task]]:
        if self.jobs is not None and round >= self.jobs:
            return {i: [] for i in range(self.n)}
        plan = self._round_plan.setdefault(round, self.plan)
        return {i: [Task(job=round, parts=p, coeffs=cf, kind=self.name)] if p else []
                for i, (p, cf) in enumerate(plan.rows)}

    def worker_loads(self, round: int) -> np.ndarray:
        if self.jobs is not None and round >= self.jobs:
            return np.zeros(self.n)
        return self._plan_for(round).loads(self.grid)

    def load(self) -> float:
        return float(self.plan.loads(self.grid).max())

    def measuring(self, round: int) -> bool:
        """Measured speeds, still in the warm-up: the round waits for every worker (all are timed)."""
        return not self.declared and round < self.warmup

    # -- decode -------------------------------------------------------------------------------------
    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        plan = self._plan_for(round)
        idle = {i for i, (p, _) in enumerate(plan.rows) if not p}
        if self.measuring(round):
            return len(arrived | idle) == self.n
        if plan.layers is not None:
            return any(all(w in arrived or w in idle for w in g) for g in plan.layers)
        return len(arrived | idle) >= self.n - self.s

    def _coefficients_for(self, round: int, arrived: frozenset[int]) -> dict[int, float]:
        plan = self._plan_for(round)
        if plan.layers is not None:
            self.last_residual = 0.0
            for g in plan.layers:
                if all(w in arrived or not plan.rows[w][0] for w in g):
                    return {w: 1.0 for w in g if plan.rows[w][0]}
            raise DecodeError(f"gc-hetero: no layer intact among workers {sorted(arrived)}")
        key = (id(plan), frozenset(arrived))
        hit = self._cache.get(key)
        if hit is None:
            rows = tuple(w for w in sorted(arrived) if plan.rows[w][0])
            a = solve_decoding(plan.B, rows)
            residual = float(np.max(np.abs(plan.B[list(rows)].T @ a - 1.0)))
            hit = ({w: float(x) for w, x in zip(rows, a)}, residual)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = hit
        self.last_residual = hit[1]
        return hit[0]

    def decode(self, job: int) -> dict[ResultRef, float]:
        arrived = self._arrived.pop(job, None)
        if arrived is None:
            raise DecodeError(f"job {job} was not closed or was already decoded")
        coeffs = self._coefficients_for(job, arrived)
        self._round_plan.pop(job, None)
        return {ResultRef(job, w, 0): c for w, c in coeffs.items()}

    # -- measured speeds ----------------------------------------------------------------------------
    def estimate(self) -> np.ndarray | None:
        """Speeds from the median seconds per unit of work over the last ``window`` rounds (None: a worker
        not yet timed)."""
        if not self._unit_s:
            return None
        with warnings.catch_warnings():  # a worker never timed in the window: nan, handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.array(self._unit_s[-self.window:]), axis=0)
        if not np.all(np.isfinite(med) & (med > 0)):
            return None
        return (1.0 / med) / np.max(1.0 / med)

    def observe_times(self, round: int, busy_s: dict[int, float]) -> dict | None:
        """The closed round's per-worker busy seconds (compute plus injected delay): measured-speed runs
        update their estimate and re-plan from the next round when it drifted. Returns the re-plan record
        (for the metrics) or None."""
        if self.declared:
            return None
        plan = self._plan_for(round)
        loads = plan.loads(self.grid)
        unit = np.full(self.n, np.nan)
        for w, t in busy_s.items():
            if 0 <= w < self.n and loads[w] > 0 and t > 0:
                unit[w] = t / loads[w]
        self._unit_s.append(unit)
        del self._unit_s[:-self.window]
        if round + 1 < self.warmup:
            return None
        est = self.estimate()
        if est is None:
            return None
        share_new, share_old = est / est.sum(), self.plan.speeds / self.plan.speeds.sum()
        drift = float(np.max(np.abs(share_new / share_old - 1.0)))
        if self.epoch > 0 and (drift <= self.drift or round + 1 - self._last_replan < self.window):
            return None  # a drift re-plan needs a whole window timed under the current plan
        if self.epoch == 0 and round + 1 > self.warmup and drift <= self.drift:
            return None
        new = make_plan(est, self.s, self.grid, self.construction)
        record = {"from_round": round + 1, "why": "measured speeds" if self.epoch == 0 else "speed drift",
                  "speeds": [round_sig(v) for v in new.speeds], "construction": new.kind,
                  "moved_parts": moved_parts(self.plan, new), "parts": self.grid, "drift": round_sig(drift),
                  "epoch": self.epoch + 1, "predicted_time": round_sig(new.time)}
        self.plan, self.epoch, self._last_replan = new, self.epoch + 1, round + 1
        self.replans.append(record)
        return record

    # -- reports and checkpoints --------------------------------------------------------------------
    def params(self) -> dict:
        return {"n": self.n, "s": self.s, "parts": self.grid, "construction": self.plan.kind,
                "speeds": [round_sig(v) for v in self.plan.speeds], "declared": self.declared}

    def round_info(self, round: int) -> dict:
        return {"plan_epoch": self.epoch}

    def report(self) -> dict:
        return {"hetero": {"construction": self.plan.kind, "speeds": [round_sig(v) for v in self.plan.speeds],
                           "replans": len(self.replans),
                           "moved_parts": sum(r["moved_parts"] for r in self.replans),
                           "decode_precision": plan_precision(self.plan, self.s)}}

    def state_dict(self) -> dict:
        st = super().state_dict()
        st.update({"plan_speeds": self.plan.speeds.tolist(), "epoch": self.epoch,
                   "unit_s": [u.tolist() for u in self._unit_s], "replans": list(self.replans),
                   "last_replan": self._last_replan})
        return st

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.plan = make_plan(np.array(state["plan_speeds"]), self.s, self.grid, self.construction)
        self.epoch = int(state["epoch"])
        self._unit_s = [np.array(u, dtype=np.float64) for u in state["unit_s"]]
        self.replans = list(state["replans"])
        self._last_replan = int(state["last_replan"])
        self._round_plan = {}


def round_sig(x: float, digits: int = 4) -> float:
    """A float to ``digits`` significant digits (for metrics lines)."""
    return float(f"{float(x):.{digits}g}")


register_scheme(SchemeSpec(
    GCHetero.name, lambda n, p: GCHetero(n, p.s, speeds=p.speeds, jobs=p.jobs), params=("stragglers", "speeds"),
    grid=None, tunable=False, color="C6", real_coefficients=True,
    description="heterogeneity-aware code: loads in proportion to declared (coding.speeds) or measured speeds"))
