"""Plain gradient codes (delay 0): uncoded, fractional repetition (gc-fr, and gc-binary for every (n, s)),
cyclic repetition, ignore-stragglers.

Tandon et al. (ICML 2017). Job j is computed in round j; n workers, n parts. Decoding coefficients are
solved in float64, their residual ||B_F^T a - 1||_inf is checked, and they are cached per survivor set
because straggler patterns repeat. Cyclic codes above 256 workers are solved from their band structure (``banded_decoding``:
O(n s^2), a sparse factorisation), not by a dense least-squares solve (O(n^3)), which at a thousand
workers took longer than the round.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

from dcoord.coding.base import (
    DecodeError,
    GridSpace,
    ResultRef,
    Scheme,
    SchemeError,
    SchemeSpec,
    Task,
    register_scheme,
)
from dcoord.coding.stable import binary_groups, binary_load, stable_cyclic_matrix, window_tiling

#: Largest accepted decode residual ||B_F^T a - 1||_inf (relative to 1).
DECODE_TOL = 1e-6
#: gc-cyclic solves from its band structure above this many workers; up to it the dense least-squares
#: solve is cheap (tens of ms) and its coefficients are the ones the decode-precision tables measure (the
#: banded solve agrees to ~1e-14 relative, which shows in float64 worst cases)
BANDED_MIN_N = 256


def cyclic_support(n: int, s: int, i: int) -> tuple[int, ...]:
    """Parts held by worker i under cyclic repetition: (i + m) mod n, m = 0..s."""
    return tuple((i + m) % n for m in range(s + 1))


def cyclic_encoding_matrix(n: int, s: int, seed: int = 0) -> np.ndarray:
    """Tandon's cyclic-repetition encoding matrix B (n x n, float64).

    Every row lies in null(H) for a random H with H 1 = 0, so any n-s rows span the all-ones vector
    with probability one. Deterministic in ``seed`` so workers and coordinator build the same B.
    """
    _check_ns(n, s)
    B = np.zeros((n, n))
    if s == 0:
        np.fill_diagonal(B, 1.0)
        return B
    rng = np.random.default_rng(seed)
    Ht = rng.standard_normal((s, n - 1))
    H = np.hstack([Ht, -Ht.sum(axis=1, keepdims=True)])
    for i in range(n):
        S = list(cyclic_support(n, s, i))
        B[i, S[0]] = 1.0
        B[i, S[1:]] = -np.linalg.solve(H[:, S[1:]], H[:, S[0]])
    return B


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """One controller per process: ``threadpool_limits`` rescans the loaded libraries on every call (4-9 ms on
    a loaded machine, more than the solve itself below n = 64); ``limit`` on a kept controller costs ~0.3 ms."""
    return ThreadpoolController()


def solve_decoding(Bmat: np.ndarray, rows: tuple[int, ...], tol: float = DECODE_TOL) -> np.ndarray:
    """Coefficients a with a^T B[rows] = 1^T (least squares, float64); raises DecodeError above ``tol``."""
    BF = np.asarray(Bmat, dtype=np.float64)[list(rows)]
    # one BLAS thread: the matrices are small, and threaded LAPACK stalls badly on shared cores
    with _blas().limit(limits=1, user_api="blas"):
        a, *_ = np.linalg.lstsq(BF.T, np.ones(BF.shape[1]), rcond=None)
    residual = float(np.max(np.abs(BF.T @ a - 1.0)))
    if not np.isfinite(residual) or residual > tol:
        raise DecodeError(f"decode residual {residual:.3g} above tolerance {tol:g} for workers {list(rows)}")
    return a


def banded_decoding(Bmat: np.ndarray, rows: tuple[int, ...], s: int, tol: float = DECODE_TOL,
                    with_residual: bool = False):
    """``solve_decoding`` for a cyclic-support B (row i nonzero only on parts i..i+s mod n) in O(n s^2).

    Why not the dense solve: a least-squares solve of the (n-s) x n system is O(n^3) (hundreds of ms at
    n = 1024, and the survivor set, hence the cache key, changes every round). B_F B_F^T is banded with
    half-bandwidth s plus an s-wide cyclic corner, so its sparse LU costs O(n s^2); one step of iterative
    refinement on the residual (semi-normal equations) recovers the accuracy squaring the condition number
    would lose. The residual is checked as for the dense solve; a singular or inaccurate system falls back
    to ``solve_decoding`` (same answer, dense cost). ``with_residual``: returns (a, residual)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    B = np.asarray(Bmat, dtype=np.float64)
    n = B.shape[0]
    r = np.asarray(rows, dtype=np.int64)
    m = len(r)
    cols = (r[:, None] + np.arange(s + 1)) % n
    BT = sp.csc_matrix((B[r[:, None], cols].ravel(), cols.ravel(), np.arange(0, m * (s + 1) + 1, s + 1)),
                       shape=(n, m))  # B_F^T: column k holds survivor rows[k]'s s+1 coefficients
    ones = np.ones(n)
    try:
        with np.errstate(all="ignore"):
            lu = spl.splu((BT.T @ BT).tocsc())
            a = lu.solve(BT.T @ ones)
            a += lu.solve(BT.T @ (ones - BT @ a))  # one refinement step
        residual = float(np.max(np.abs(BT @ a - 1.0)))
    except RuntimeError:  # exactly singular: the dense solve says why
        residual = math.inf
    if not np.isfinite(residual) or residual > tol:
        a = solve_decoding(B, rows, tol)
        residual = float(np.max(np.abs(B[list(rows)].T @ a - 1.0)))
    return (a, residual) if with_residual else a


def _check_ns(n: int, s: int) -> None:
    if n < 1:
        raise SchemeError(f"workers must be >= 1 (got {n})")
    if not 0 <= s < n:
        raise SchemeError(f"coding.stragglers must satisfy 0 <= s < workers (got s={s}, workers={n})")


class _PlainScheme(Scheme):
    """Shared plumbing: job == round, one task per worker, decode from the arrived set of that round."""

    def __init__(self, n: int, s: int, jobs: int | None = None) -> None:
        _check_ns(n, s)
        self.n, self.s, self.jobs = n, s, jobs
        self._arrived: dict[int, frozenset[int]] = {}
        self.last_residual = 0.0
        self._rows: list[tuple[tuple[int, ...], tuple[float, ...]]] | None = None  # each worker's (parts, coeffs)

    def part_fractions(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def _row(self, worker: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        raise NotImplementedError

    def tasks(self, round: int) -> dict[int, list[Task]]:
        if self.jobs is not None and round >= self.jobs:
            return {i: [] for i in range(self.n)}
        if self._rows is None:  # the same every round: made once, not O(n s) Python work per round
            self._rows = [self._row(i) for i in range(self.n)]
        return {i: [Task(job=round, parts=parts, coeffs=coeffs, kind=self.name)]
                for i, (parts, coeffs) in enumerate(self._rows)}

    def worker_loads(self, round: int) -> np.ndarray:
        """Every worker computes the same load each round (the simulator's hot path: no Task objects)."""
        if self.jobs is not None and round >= self.jobs:
            return np.zeros(self.n)
        return np.full(self.n, self.load())

    def close_round(self, round: int, arrived: frozenset[int]) -> list[int]:
        if not self.accepts(round, arrived):
            raise DecodeError(f"round {round}: workers {sorted(arrived)} cannot decode under {self.name}")
        self._arrived[round] = frozenset(arrived)
        return [round]

    def decode(self, job: int) -> dict[ResultRef, float]:
        arrived = self._arrived.pop(job, None)
        if arrived is None:
            raise DecodeError(f"job {job} was not closed or was already decoded")
        coeffs = self._coefficients(arrived)
        return {ResultRef(job, w, 0): c for w, c in coeffs.items()}

    def _coefficients(self, arrived: frozenset[int]) -> dict[int, float]:
        raise NotImplementedError

    def params(self) -> dict:
        return {"n": self.n, "s": self.s}

    def state_dict(self) -> dict:
        """Closed but not yet decoded rounds (empty between rounds: plain codes decode when they close)."""
        return {"arrived": {r: sorted(a) for r, a in self._arrived.items()}, "last_residual": self.last_residual}

    def load_state_dict(self, state: dict) -> None:
        self._arrived = {int(r): frozenset(a) for r, a in state["arrived"].items()}
        self.last_residual = float(state["last_residual"])


class Uncoded(_PlainScheme):
    """Each worker one part; wait for all n."""

    name = "uncoded"

    def __init__(self, n: int, s: int = 0, jobs: int | None = None) -> None:
        super().__init__(n, 0, jobs)

    def _row(self, worker: int):
        return (worker,), (1.0,)

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return len(arrived) == self.n

    def _coefficients(self, arrived):
        return {w: 1.0 for w in sorted(arrived)}

    def load(self) -> float:
        return 1.0 / self.n


class IgnoreStragglers(_PlainScheme):
    """Each worker one part; keep the fastest n-s and rescale by n/|arrived|. Biased; a baseline."""

    name = "ignore-stragglers"

    def _row(self, worker: int):
        return (worker,), (1.0,)

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return len(arrived) >= self.n - self.s

    def _coefficients(self, arrived):
        scale = self.n / len(arrived)
        return {w: scale for w in sorted(arrived)}

    def load(self) -> float:
        return 1.0 / self.n


class _GroupScheme(_PlainScheme):
    """A code whose workers fall into ``n_groups`` groups sending the same sum: any one survivor per group
    decodes, with coefficient 1 (the lowest-numbered survivor is taken, so decoding is deterministic)."""

    n_groups: int

    def group_of(self, worker: int) -> int:
        raise NotImplementedError

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return len({self.group_of(w) for w in arrived}) == self.n_groups

    def _coefficients(self, arrived):
        chosen: dict[int, int] = {}
        for w in sorted(arrived):
            chosen.setdefault(self.group_of(w), w)
        return {w: 1.0 for w in chosen.values()}


class GCFractional(_GroupScheme):
    """Fractional repetition: groups of s+1 workers hold the same s+1 parts and send their plain sum."""

    name = "gc-fr"

    def __init__(self, n: int, s: int, jobs: int | None = None) -> None:
        super().__init__(n, s, jobs)
        if n % (s + 1):
            raise SchemeError(
                f"gc-fr needs (stragglers+1) to divide workers (got s={s}, workers={n}); "
                "use gc-cyclic or pick s with (s+1) | n"
            )
        self.group_size = s + 1
        self.n_groups = n // self.group_size

    def group_of(self, worker: int) -> int:
        return worker // self.group_size

    def _row(self, worker: int):
        g = self.group_of(worker)
        parts = tuple(range(g * self.group_size, (g + 1) * self.group_size))
        return parts, (1.0,) * len(parts)

    def load(self) -> float:
        return (self.s + 1) / self.n


class GCBinary(_GroupScheme):
    """Fractional repetition for every (n, s): floor(n/(s+1)) groups of s+1 or s+2 workers, one equal part
    per group; encoding and decoding coefficients are 0/1 (see dcoord.coding.stable). Load 1/floor(n/(s+1)).
    """

    name = "gc-binary"

    def __init__(self, n: int, s: int, jobs: int | None = None) -> None:
        super().__init__(n, s, jobs)
        self.groups = binary_groups(n, s)
        self.n_groups = len(self.groups)
        self._group = np.empty(n, dtype=np.int64)
        for g, members in enumerate(self.groups):
            self._group[list(members)] = g

    def part_fractions(self) -> np.ndarray:
        return np.full(len(self.groups), 1.0 / len(self.groups))

    def group_of(self, worker: int) -> int:
        return int(self._group[worker])

    def _row(self, worker: int):
        return (self.group_of(worker),), (1.0,)

    def accepts_mask(self, round: int, arrived: np.ndarray) -> bool:
        return bool(np.all(np.bincount(self._group[np.asarray(arrived, dtype=bool)],
                                       minlength=len(self.groups)) > 0))

    def load(self) -> float:
        return binary_load(self.n, self.s)


class GCCyclic(_PlainScheme):
    """Cyclic repetition; decodes from any n-s workers.

    ``construction="stable"`` (default) takes the best-conditioned coefficients of dcoord.coding.stable
    (the all-ones window with binary decoding when (s+1) | n, else a cyclic MDS code); ``"tandon"`` keeps
    Tandon's random construction (for comparison: it amplifies float32 rounding ~1e4-fold).
    """

    name = "gc-cyclic"

    def __init__(self, n: int, s: int, jobs: int | None = None, seed: int = 0,
                 construction: str = "stable") -> None:
        super().__init__(n, s, jobs)
        if construction not in ("stable", "tandon"):
            raise SchemeError(f"gc-cyclic construction must be 'stable' or 'tandon' (got {construction!r})")
        self.seed = seed
        self.construction = construction
        self.window = construction == "stable" and s > 0 and n % (s + 1) == 0  # binary tiling decode
        self._B: np.ndarray | None = None
        self._solve = lru_cache(maxsize=4096)(self._solve_uncached)

    @property
    def B(self) -> np.ndarray:
        """The encoding matrix, built on first use (the tuner makes many schemes it never decodes with)."""
        if self._B is None:
            if self.construction == "tandon":
                self._B = cyclic_encoding_matrix(self.n, self.s, self.seed)
            else:
                with threadpool_limits(1, user_api="blas"):
                    self._B = stable_cyclic_matrix(self.n, self.s)
        return self._B

    def _row(self, worker: int):
        parts = cyclic_support(self.n, self.s, worker)
        return parts, tuple(float(self.B[worker, j]) for j in parts)

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return len(arrived) >= self.n - self.s

    def _solve_uncached(self, rows: tuple[int, ...]) -> tuple[np.ndarray, float]:
        if self.n > BANDED_MIN_N:
            return banded_decoding(self.B, rows, self.s, with_residual=True)
        a = solve_decoding(self.B, rows)
        return a, float(np.max(np.abs(self.B[list(rows)].T @ a - 1.0)))

    def decoding_coefficients(self, arrived: frozenset[int]) -> np.ndarray:
        """Coefficients over the first n-s arrived workers (sorted), cached per set."""
        rows = tuple(sorted(arrived))[: self.n - self.s]
        a, self.last_residual = self._solve(rows)
        return a

    def cache_info(self):
        return self._solve.cache_info()

    def _coefficients(self, arrived):
        if self.window:
            tiling = window_tiling(self.n, self.s, arrived)
            if tiling is not None:  # always, for >= n-s arrivals (pigeonhole over the s+1 classes)
                self.last_residual = 0.0
                return {w: 1.0 for w in tiling}
        rows = tuple(sorted(arrived))[: self.n - self.s]
        a = self.decoding_coefficients(arrived)
        return {w: float(c) for w, c in zip(rows, a)}

    def load(self) -> float:
        return (self.s + 1) / self.n


# -- registry entries (name, config parameters, tuning grid, plot colour) ---------------------------------
def _s_grid(g: GridSpace):
    return ({"s": s} for s in g.ss)


def _s_spec(cls: type[_PlainScheme], grid=_s_grid, **kw) -> SchemeSpec:
    """The spec of a plain code built from (n, s) that reads only ``coding.stragglers``."""
    return SchemeSpec(cls.name, lambda n, p: cls(n, p.s, jobs=p.jobs), params=("stragglers",), grid=grid, **kw)


def _itself(name: str):
    """A plain code's precision is its own decoding's."""
    return lambda n, p: (name, p.s)


register_scheme(SchemeSpec(
    "uncoded", lambda n, p: Uncoded(n, p.s, jobs=p.jobs), grid=lambda g: [{}], color="C7", elastic=True,
    precision=_itself("uncoded"), paper=True,
    description="every worker computes its own part; the round waits for all"))
register_scheme(_s_spec(
    GCFractional, grid=lambda g: ({"s": s} for s in g.ss if g.n % (s + 1) == 0), color="C1", elastic=True,
    precision=_itself(GCFractional.name),
    description="fractional-repetition gradient code; (s+1) must divide the workers"))
register_scheme(_s_spec(GCCyclic, color="C0", elastic=True, precision=_itself(GCCyclic.name), real_coefficients=True,
                        paper=True,
                        description="cyclic gradient code: any n-s workers decode"))
register_scheme(_s_spec(
    GCBinary, color="C4", precision=_itself(GCBinary.name),
    description="0/1 fractional repetition for any (n, s): one survivor per group decodes, exactly"))
register_scheme(_s_spec(
    IgnoreStragglers, tunable=False, color="C5", elastic=True,
    description="uncoded, dropping the s slowest parts (biased gradient)"))
