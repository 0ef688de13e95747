"""Sequential gradient coding (Krishnan, Ebrahimi, Khisti, ICLR 2023): SR-SGC and M-SGC.

Job t starts in round t and must be decodable at the end of round t+T. Both schemes assume the (B, W, lambda)
bursty straggler model: in every window of W consecutive rounds at most lambda distinct workers straggle,
and each worker's straggling rounds in a window lie in one burst of at most B consecutive rounds. The
coordinator checks each round's straggler set against the recorded history (``accepts``); when it does not
conform it waits for everybody (or, minimal wait, for arrivals until the missing set conforms) and the
round is recorded with no stragglers, so the recorded pattern always conforms and every job decodes by
construction. A worker with no task in a round can never be a straggler in it.

State is kept per job as numpy masks so that ``accepts`` / ``close_round`` are O(n * W) with no linear
algebra; decoding coefficients are only solved in ``decode`` (cached per survivor set). Rounds must be
planned and closed in order. Per-job state is dropped ``keep_rounds`` rounds after the job's deadline, so
``decode(job)`` must be called within that many rounds (the coordinator decodes right after closing).

``Task.slot`` is the minitask index (M-SGC: minitask m of round r belongs to job r-m); a worker's list may
skip idle minitasks at the start and end of a run, so results are identified by ``Task.slot``, which is
what ``ResultRef.slot`` refers to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from dcoord.coding.base import (
    DecodeError,
    GridSpace,
    ResultRef,
    Scheme,
    SchemeError,
    SchemeParams,
    SchemeSpec,
    Task,
    register_scheme,
)
from dcoord.coding.gc import cyclic_encoding_matrix, cyclic_support, solve_decoding
from dcoord.coding.stable import stable_cyclic_matrix

__all__ = ["SRSGC", "MSGC", "InnerCode", "srsgc_s", "srsgc_load", "msgc_load"]


def srsgc_s(B: int, W: int, lam: int) -> int:
    """Inner GC strength of SR-SGC: s = ceil(B * lambda / (W - 1 + B))."""
    return -(-B * lam // (W - 1 + B))


def srsgc_load(n: int, B: int, W: int, lam: int) -> float:
    """Normalized load of SR-SGC: (s + 1) / n."""
    return (srsgc_s(B, W, lam) + 1) / n


def msgc_load(n: int, B: int, W: int, lam: int) -> float:
    """Normalized load of M-SGC: (lambda+1)(W-1+B) / (n (B + (W-1)(lambda+1))), or (W-1+B)/(n(W-1)) at lambda=n."""
    if lam == n:
        return (W - 1 + B) / (n * (W - 1))
    return (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))


def _int_param(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SchemeError(f"{name} must be an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise SchemeError(f"{name} must be >= {minimum} (got {value})")
    return int(value)


class InnerCode:
    """An (n, s) gradient code over n equal parts: row i is worker i's task; any n-s rows decode.

    ``kind="fr"`` (fractional repetition, binary, exact; needs (s+1) | n), ``"cyclic"`` (cyclic repetition
    with the best-conditioned coefficients of dcoord.coding.stable) or ``"tandon"`` (Tandon's random cyclic
    construction, kept for comparison); ``"auto"`` picks fr when (s+1) | n because its decoding
    coefficients are 0/1 and need no solve, else cyclic. (gc-binary cannot serve here: both schemes count
    delivered rows, which needs any n-s rows to decode.) The matrix is built lazily: the simulator never
    needs it.
    """

    def __init__(self, n: int, s: int, kind: str = "auto", seed: int = 0) -> None:
        if not 0 <= s < n:
            raise SchemeError(f"inner gradient code needs 0 <= s < workers (got s={s}, workers={n})")
        if kind == "auto":
            kind = "fr" if n % (s + 1) == 0 else "cyclic"
        if kind not in ("fr", "cyclic", "tandon"):
            raise SchemeError(f"inner code must be 'auto', 'fr', 'cyclic' or 'tandon' (got {kind!r})")
        if kind == "fr" and n % (s + 1):
            raise SchemeError(f"inner code 'fr' needs (s+1) | workers (got s={s}, workers={n})")
        self.n, self.s, self.kind, self.seed = n, s, kind, seed
        self._B: np.ndarray | None = None
        self._cache: dict[tuple[int, ...], tuple[dict[int, float], float]] = {}
        self.last_residual = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """The n x n encoding matrix (float64)."""
        if self._B is None:
            if self.kind == "fr":
                g = self.s + 1
                B = np.zeros((self.n, self.n))
                for a in range(self.n // g):
                    B[a * g:(a + 1) * g, a * g:(a + 1) * g] = 1.0
                self._B = B
            elif self.kind == "tandon":
                self._B = cyclic_encoding_matrix(self.n, self.s, self.seed)
            else:
                self._B = stable_cyclic_matrix(self.n, self.s)
        return self._B

    def row(self, i: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Parts and coefficients of worker i's coded task."""
        if self.kind == "fr":
            g = self.s + 1
            a = i // g
            return tuple(range(a * g, (a + 1) * g)), (1.0,) * g
        parts = cyclic_support(self.n, self.s, i)
        B = self.matrix
        return parts, tuple(float(B[i, j]) for j in parts)

    def decode(self, rows: Iterable[int]) -> dict[int, float]:
        """Coefficients a (row -> a_row) with sum_row a_row * B[row] = 1^T; needs >= n - s distinct rows."""
        key = tuple(sorted(set(int(r) for r in rows)))
        if len(key) < self.n - self.s:
            raise DecodeError(f"inner code needs {self.n - self.s} of {self.n} results, got {len(key)}")
        hit = self._cache.get(key)
        if hit is not None:
            self.last_residual = hit[1]
            return hit[0]
        if self.kind == "fr":
            g = self.s + 1
            chosen: dict[int, int] = {}
            for r in key:
                chosen.setdefault(r // g, r)
            if len(chosen) != self.n // g:
                raise DecodeError(f"fractional repetition: groups {sorted(set(range(self.n // g)) - set(chosen))} "
                                  "have no result")
            out = {r: 1.0 for r in chosen.values()}
            self.last_residual = 0.0
        else:
            # all delivered rows: the least-squares solution is the minimum-norm one, which amplifies the
            # rounding in what workers send the least
            a = solve_decoding(self.matrix, key)
            BF = self.matrix[list(key)]
            self.last_residual = float(np.max(np.abs(BF.T @ a - 1.0)))
            out = {r: float(c) for r, c in zip(key, a, strict=True) if c != 0.0}
        if len(self._cache) >= 256:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (out, self.last_residual)
        return out


@dataclass
class _Plan:
    """What every worker does in one round (computed once, before the round closes)."""

    round: int
    tasked: np.ndarray  # (n,) bool: worker has at least one task
    ntasks: np.ndarray  # (n,) int: number of minitasks
    extra: dict = field(default_factory=dict)


class _SequentialScheme(Scheme):
    """Shared plumbing: (B, W, lambda) model check against the recorded history, round bookkeeping."""

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int | None, delay: int,
                 models: int | None, keep_rounds: int) -> None:
        self.n = n
        self.B, self.W, self.lam = B, W, lam
        if jobs is not None:
            jobs = _int_param("jobs", jobs, 1)
        self.jobs = jobs
        self.delay = delay
        if models is None:
            models = delay + 1
        models = _int_param("models", models, 1)
        if models < delay + 1:
            raise SchemeError(
                f"models must be >= T+1 = {delay + 1} for {self.name} (delay T={delay}): job t+M reuses the "
                f"model of job t, which is only decoded at the end of round t+T (got models={models})"
            )
        self.models = models
        self.keep_rounds = _int_param("keep_rounds", keep_rounds, 0)
        self._next = 0  # next round to close
        self._hist = np.zeros((W, n), dtype=bool)  # effective straggler sets of the last W rounds
        self._hist_round = np.full(W, -1, dtype=np.int64)
        self._past: tuple[int, np.ndarray, np.ndarray] | None = None
        self._plans: dict[int, _Plan] = {}
        self._reported: set[int] = set()
        self.last_residual = 0.0

    # -- small helpers ---------------------------------------------------------------------------
    def uses_straggler_rule(self) -> bool:
        return True

    def _valid(self, job: int) -> bool:
        return job >= 0 and (self.jobs is None or job < self.jobs)

    def last_job(self, rounds: int) -> int:
        return rounds - 1 if self.jobs is None else min(rounds, self.jobs) - 1

    def _mask(self, workers: Iterable[int] | np.ndarray) -> np.ndarray:
        if isinstance(workers, np.ndarray) and workers.dtype == bool:
            if workers.shape != (self.n,):
                raise ValueError(f"worker mask must have shape ({self.n},), got {workers.shape}")
            return workers
        m = np.zeros(self.n, dtype=bool)
        idx = np.fromiter(workers, dtype=np.int64)
        if idx.size:
            if idx.min() < 0 or idx.max() >= self.n:
                raise ValueError(f"worker ids must be in 0..{self.n - 1}")
            m[idx] = True
        return m

    def _check_round(self, round: int) -> None:
        if round != self._next:
            raise SchemeError(
                f"{self.name}: rounds are planned and closed in order; got round {round}, next is {self._next}"
            )

    def _plan(self, round: int) -> _Plan:
        plan = self._plans.get(round)
        if plan is None:
            self._check_round(round)
            plan = self._make_plan(round)
            self._plans[round] = plan
        return plan

    def params(self) -> dict:
        return {"n": self.n, "B": self.B, "W": self.W, "lambda": self.lam, "T": self.delay,
                "models": self.models, "jobs": self.jobs}

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Straggler history of the last W rounds, per-job delivery records, jobs already reported.

        Plans are not kept: they are rebuilt from this state when the next round is planned."""
        out = super().state_dict()
        out.update(next=self._next, hist=self._hist.copy(), hist_round=self._hist_round.copy(),
                   reported=sorted(self._reported), last_residual=self.last_residual)
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._next = int(state["next"])
        self._hist = np.array(state["hist"], dtype=bool).reshape(self.W, self.n)
        self._hist_round = np.array(state["hist_round"], dtype=np.int64).reshape(self.W)
        self._reported = {int(j) for j in state["reported"]}
        self.last_residual = float(state["last_residual"])
        self._plans = {}
        self._past = None

    # -- the (B, W, lambda) model ----------------------------------------------------------------
    def _past_masks(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(workers that straggled in rounds r-W+1..r-1, workers that straggled in rounds r-W+1..r-B)."""
        if self._past is not None and self._past[0] == r:
            return self._past[1], self._past[2]
        spatial = np.zeros(self.n, dtype=bool)
        temporal = np.zeros(self.n, dtype=bool)
        for q in range(max(0, r - self.W + 1), r):
            k = q % self.W
            if self._hist_round[k] != q:
                continue
            spatial |= self._hist[k]
            if q <= r - self.B:
                temporal |= self._hist[k]
        self._past = (r, spatial, temporal)
        return spatial, temporal

    def _model_conforms(self, r: int, S: np.ndarray) -> bool:
        spatial, temporal = self._past_masks(r)
        if np.count_nonzero(spatial | S) > self.lam:
            return False
        return not np.any(temporal & S)

    def _exempt(self, plan: _Plan, S: np.ndarray) -> bool:
        """Rounds whose stragglers the scheme absorbs without any effect on later rounds (SR-SGC)."""
        return False

    def conforms(self, round: int, stragglers: Iterable[int] | np.ndarray) -> bool:
        """Does straggler set ``stragglers`` in ``round`` fit the (B, W, lambda) model given the history?

        Workers without a task this round are ignored. SR-SGC also exempts a round the inner code absorbs.
        """
        plan = self._plan(round)
        S = self._mask(stragglers) & plan.tasked
        return self._exempt(plan, S) or self._model_conforms(round, S)

    # -- the Scheme interface ----------------------------------------------------------------------
    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return self.accepts_mask(round, self._mask(arrived))

    def accepts_mask(self, round: int, arrived: np.ndarray) -> bool:
        plan = self._plan(round)
        arrived = self._mask(arrived)
        S = plan.tasked & ~arrived
        if not (self._exempt(plan, S) or self._model_conforms(round, S)):
            return False
        # guaranteed by the model; checked anyway so a closed round can never strand a due job
        return self._due_ok(plan, arrived)

    def close_round(self, round: int, arrived: frozenset[int]) -> list[int]:
        return self.close_round_mask(round, self._mask(arrived))

    def close_round_mask(self, round: int, arrived: np.ndarray) -> list[int]:
        arrived = self._mask(arrived)
        if not self.accepts_mask(round, arrived):
            missing = np.flatnonzero(self._plan(round).tasked & ~arrived).tolist()
            raise DecodeError(
                f"{self.name}: round {round} cannot close with stragglers {missing}: the set does not fit the "
                f"(B={self.B}, W={self.W}, lambda={self.lam}) model; wait for all workers instead"
            )
        plan = self._plans.pop(round)
        S = plan.tasked & ~arrived
        k = round % self.W
        self._hist[k] = False if self._exempt(plan, S) else S
        self._hist_round[k] = round
        self._past = None
        newly = self._apply(plan, arrived)
        self._next = round + 1
        self._prune(round)
        out = [j for j in sorted(newly) if j not in self._reported]
        self._reported.update(out)
        return out

    def worker_loads(self, round: int) -> np.ndarray:
        """Normalized load of each worker in ``round`` (fraction of one job's gradient)."""
        return self._plan(round).ntasks * self._task_fraction()

    def _prune(self, round: int) -> None:
        horizon = round - self.delay - self.keep_rounds
        self._reported = {j for j in self._reported if j >= horizon}
        self._drop_jobs_before(horizon)

    # -- per scheme --------------------------------------------------------------------------------
    def _make_plan(self, round: int) -> _Plan:
        raise NotImplementedError

    def _due_ok(self, plan: _Plan, arrived: np.ndarray) -> bool:
        raise NotImplementedError

    def _apply(self, plan: _Plan, arrived: np.ndarray) -> list[int]:
        raise NotImplementedError

    def _task_fraction(self) -> float:
        raise NotImplementedError

    def _drop_jobs_before(self, job: int) -> None:
        raise NotImplementedError


class SRSGC(_SequentialScheme):
    """Selective-repeat SGC: a cyclic (or fractional-repetition) GC of strength s = ceil(B lambda/(W-1+B))
    per job, plus repetition in round t+B of just enough job-t tasks that did not arrive in round t.

    T = B, requires B | (W-1). Load (s+1)/n.
    """

    name = "sr-sgc"
    _state = ("_del0", "_rep", "_del1")

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int | None = None, *, models: int | None = None,
                 inner: str = "auto", seed: int = 0, keep_rounds: int = 64) -> None:
        n = _int_param("workers", n, 2)
        B = _int_param("coding.B", B, 1)
        W = _int_param("coding.W", W, 2)
        lam = _int_param("coding.lambda", lam, 1)
        if (W - 1) % B:
            raise SchemeError(f"sr-sgc needs B to divide W-1 (got B={B}, W={W}); use W = 1 + k*B, e.g. W={B + 1}")
        if lam > n:
            raise SchemeError(f"coding.lambda must satisfy 1 <= lambda <= workers={n} (got {lam})")
        self.s = srsgc_s(B, W, lam)
        super().__init__(n, B, W, lam, jobs, B, models, keep_rounds)
        self.code = InnerCode(n, self.s, inner, seed)
        self._del0: dict[int, np.ndarray] = {}  # job -> workers that delivered it in round job
        self._rep: dict[int, np.ndarray] = {}  # job -> workers that repeat it in round job+B
        self._del1: dict[int, np.ndarray] = {}  # job -> repeaters that delivered it in round job+B

    def part_fractions(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def load(self) -> float:
        return (self.s + 1) / self.n

    def _task_fraction(self) -> float:
        return (self.s + 1) / self.n

    def params(self) -> dict:
        return {**super().params(), "s": self.s, "inner": self.code.kind}

    def _make_plan(self, r: int) -> _Plan:
        t = r - self.B
        rep = np.zeros(self.n, dtype=bool)
        if self._valid(t) and t in self._del0 and t not in self._reported:
            missing = np.flatnonzero(~self._del0[t])
            v = missing.size
            if v > self.s:
                rep[missing[: v - self.s]] = True
        cur = r if self._valid(r) else None
        tasked = np.ones(self.n, dtype=bool) if cur is not None else rep.copy()
        return _Plan(r, tasked, tasked.astype(np.int64), {"job": cur, "rep_job": t, "rep": rep})

    def _exempt(self, plan: _Plan, S: np.ndarray) -> bool:
        # no repeats this round and at most s stragglers: the job of this round decodes from its own round
        # and nothing is repeated for it later, exactly as if nobody had straggled
        return not plan.extra["rep"].any() and np.count_nonzero(S) <= self.s

    def _due_ok(self, plan: _Plan, arrived: np.ndarray) -> bool:
        t = plan.extra["rep_job"]
        if not self._valid(t) or t in self._reported or t not in self._del0:
            return True
        got = np.count_nonzero(self._del0[t]) + np.count_nonzero(plan.extra["rep"] & arrived)
        return got >= self.n - self.s

    def _apply(self, plan: _Plan, arrived: np.ndarray) -> list[int]:
        r, rep = plan.round, plan.extra["rep"]
        newly = []
        t = plan.extra["rep_job"]
        if self._valid(t) and t in self._del0 and t not in self._reported:
            self._rep[t] = rep
            self._del1[t] = rep & arrived
            if np.count_nonzero(self._del0[t]) + np.count_nonzero(self._del1[t]) >= self.n - self.s:
                newly.append(t)
        if plan.extra["job"] is not None:
            self._del0[r] = arrived & ~rep
            if np.count_nonzero(self._del0[r]) >= self.n - self.s:
                newly.append(r)
        return newly

    def _drop_jobs_before(self, job: int) -> None:
        for d in (self._del0, self._rep, self._del1):
            for j in [j for j in d if j < job]:
                del d[j]

    def tasks(self, round: int) -> dict[int, list[Task]]:
        plan = self._plan(round)
        rep = plan.extra["rep"]
        out: dict[int, list[Task]] = {}
        for i in range(self.n):
            if rep[i]:
                parts, coeffs = self.code.row(i)
                out[i] = [Task(job=plan.extra["rep_job"], parts=parts, coeffs=coeffs, kind="repeat", slot=0)]
            elif plan.extra["job"] is not None:
                parts, coeffs = self.code.row(i)
                out[i] = [Task(job=round, parts=parts, coeffs=coeffs, kind="gc", slot=0)]
            else:
                out[i] = []
        return out

    def decode(self, job: int) -> dict[ResultRef, float]:
        if job not in self._reported or job not in self._del0:
            raise DecodeError(f"sr-sgc: job {job} is not decodable (not yet, or its state was dropped)")
        where: dict[int, int] = {int(i): job for i in np.flatnonzero(self._del0[job])}
        if job in self._del1:
            where.update({int(i): job + self.B for i in np.flatnonzero(self._del1[job])})
        coeffs = self.code.decode(where)
        self.last_residual = self.code.last_residual
        return {ResultRef(where[i], i, 0): c for i, c in coeffs.items()}


class MSGC(_SequentialScheme):
    """Multiplexed SGC: W-1 uncoded D1 chunks + B coded D2 groups per job and worker, spread over W-1+B
    rounds; a worker that lost a D1 chunk redoes it in its D2 slot, adapting to past stragglers.

    T = W-2+B, 1 <= B < W, 1 <= lambda <= n. Parts of a job: n(W-1) D1 chunks (worker i owns i(W-1)+m)
    then, for lambda < n, B groups of n D2 parts (group g part p is n(W-1) + g n + p), so decoding is exact.
    """

    name = "m-sgc"
    _state = ("_d1_round", "_d2_done")

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int | None = None, *, models: int | None = None,
                 inner: str = "auto", seed: int = 0, keep_rounds: int = 64) -> None:
        n = _int_param("workers", n, 1)
        B = _int_param("coding.B", B, 1)
        W = _int_param("coding.W", W, 2)
        lam = _int_param("coding.lambda", lam, 1)
        if B >= W:
            raise SchemeError(f"m-sgc needs 1 <= B < W (got B={B}, W={W})")
        if lam > n:
            raise SchemeError(f"coding.lambda must satisfy 1 <= lambda <= workers={n} (got {lam})")
        super().__init__(n, B, W, lam, jobs, W - 2 + B, models, keep_rounds)
        self.K = W - 1  # D1 chunks per worker and job
        if lam < n:
            self.d1 = Fraction((lam + 1) * (W - 1), B + (lam + 1) * (W - 1))
            self.code: InnerCode | None = InnerCode(n, lam, inner, seed)
        else:
            self.d1 = Fraction(1)
            self.code = None
        self._chunk = float(self.d1 / (n * (W - 1)))
        self._d1_round: dict[int, np.ndarray] = {}  # job -> (n, K) round each D1 chunk was delivered, -1
        self._d2_done: dict[int, np.ndarray] = {}  # job -> (B, n) coded D2 results delivered

    def part_fractions(self) -> np.ndarray:
        d1 = np.full(self.n * self.K, float(self.d1 / (self.n * self.K)))
        if self.code is None:
            return d1
        return np.concatenate([d1, np.full(self.B * self.n, float((1 - self.d1) / (self.B * self.n)))])

    def load(self) -> float:
        return msgc_load(self.n, self.B, self.W, self.lam)

    def _task_fraction(self) -> float:
        return self._chunk

    def params(self) -> dict:
        p = {**super().params(), "d1": float(self.d1)}
        if self.code is not None:
            p["inner"] = self.code.kind
        return p

    def _make_plan(self, r: int) -> _Plan:
        n, K = self.n, self.K
        ntasks = np.zeros(n, dtype=np.int64)
        slots = []  # (m, job, d2 mask or None, redo chunk per worker or None)
        for m in range(K + self.B):
            j = r - m
            if not self._valid(j):
                continue
            if m < K:
                slots.append((m, j, None, None))
                ntasks += 1
                continue
            missing = self._d1_round[j] < 0
            has_all = ~missing.any(axis=1)
            redo = np.argmax(missing, axis=1)
            slots.append((m, j, has_all, redo))
            ntasks += 1 if self.code is not None else ~has_all
        return _Plan(r, ntasks > 0, ntasks, {"slots": slots})

    def _job_ok(self, d1_done: np.ndarray, d2_count: np.ndarray | None) -> bool:
        if not d1_done.all():
            return False
        return self.code is None or bool(np.all(d2_count >= self.n - self.lam))

    def _due_ok(self, plan: _Plan, arrived: np.ndarray) -> bool:
        j = plan.round - self.delay
        if not self._valid(j) or j in self._reported:
            return True
        d1 = self._d1_round[j] >= 0
        d2 = self._d2_done[j].sum(axis=1)
        for m, jj, has_all, redo in plan.extra["slots"]:
            if jj != j:
                continue
            if has_all is None:
                d1 = d1.copy()
                d1[arrived, m] = True
            else:
                w = np.flatnonzero(~has_all & arrived)
                d1 = d1.copy()
                d1[w, redo[w]] = True
                if self.code is not None:
                    d2 = d2.copy()
                    d2[m - self.K] += np.count_nonzero(has_all & arrived)
        return self._job_ok(d1, d2)

    def _apply(self, plan: _Plan, arrived: np.ndarray) -> list[int]:
        r = plan.round
        touched = []
        for m, j, has_all, redo in plan.extra["slots"]:
            if m == 0:
                self._d1_round[j] = np.full((self.n, self.K), -1, dtype=np.int64)
                self._d2_done[j] = np.zeros((self.B, self.n), dtype=bool)
            if has_all is None:
                self._d1_round[j][arrived, m] = r
            else:
                w = np.flatnonzero(~has_all & arrived)
                self._d1_round[j][w, redo[w]] = r
                if self.code is not None:
                    self._d2_done[j][m - self.K] |= has_all & arrived
            touched.append(j)
        newly = []
        for j in sorted(set(touched)):
            if j in self._reported:
                continue
            if self.code is not None and not self._d2_done[j][self.B - 1].any():
                continue  # the last D2 group runs in round j+T: not decodable before
            if self._job_ok(self._d1_round[j] >= 0, self._d2_done[j].sum(axis=1)):
                newly.append(j)
        return newly

    def _drop_jobs_before(self, job: int) -> None:
        for d in (self._d1_round, self._d2_done):
            for j in [j for j in d if j < job]:
                del d[j]

    def tasks(self, round: int) -> dict[int, list[Task]]:
        plan = self._plan(round)
        K = self.K
        out: dict[int, list[Task]] = {i: [] for i in range(self.n)}
        for m, j, has_all, redo in plan.extra["slots"]:
            for i in range(self.n):
                if has_all is None:
                    out[i].append(Task(job=j, parts=(i * K + m,), coeffs=(1.0,), kind="d1", slot=m))
                elif not has_all[i]:
                    out[i].append(Task(job=j, parts=(i * K + int(redo[i]),), coeffs=(1.0,), kind="d1", slot=m))
                elif self.code is not None:
                    g = m - K
                    parts, coeffs = self.code.row(i)
                    base = self.n * K + g * self.n
                    out[i].append(Task(job=j, parts=tuple(base + p for p in parts), coeffs=coeffs,
                                       kind="d2", slot=m))
        return out

    def decode(self, job: int) -> dict[ResultRef, float]:
        if job not in self._reported or job not in self._d1_round:
            raise DecodeError(f"m-sgc: job {job} is not decodable (not yet, or its state was dropped)")
        out: dict[ResultRef, float] = {}
        rounds = self._d1_round[job]
        for i, m in zip(*np.nonzero(rounds >= 0), strict=True):
            rr = int(rounds[i, m])
            out[ResultRef(rr, int(i), rr - job)] = 1.0
        self.last_residual = 0.0
        if self.code is not None:
            for g in range(self.B):
                rows = np.flatnonzero(self._d2_done[job][g])
                coeffs = self.code.decode(rows.tolist())
                self.last_residual = max(self.last_residual, self.code.last_residual)
                rr = job + self.K + g
                for i, c in coeffs.items():
                    out[ResultRef(rr, i, self.K + g)] = c
        return out


# -- registry entries (name, config parameters, tuning grid, plot colour) ---------------------------------
_SEQ_PARAMS = ("B", "W", "lambda", "models")


def _kw(p: SchemeParams) -> dict:
    return {"models": p.models} if p.models is not None else {}


def _sr_grid(g: GridSpace):
    for B in range(1, g.max_delay + 1):
        for W in range(B + 1, g.max_window + 1, B):
            for lam in g.lambdas:
                if lam <= g.n:
                    yield {"B": B, "W": W, "lambda": lam}


def _m_grid(g: GridSpace):
    for W in range(2, g.max_delay + 3):
        for B in range(1, W):
            if W - 2 + B <= g.max_delay:
                for lam in g.lambdas:
                    if lam <= g.n:
                        yield {"B": B, "W": W, "lambda": lam}


register_scheme(SchemeSpec(
    "sr-sgc", lambda n, p: SRSGC(n, p.B, p.W, p.lam, jobs=p.jobs, **_kw(p)), params=_SEQ_PARAMS,
    required=("B", "W", "lambda"), grid=_sr_grid, color="C3", real_coefficients=True, paper=True,
    precision=lambda n, p: ("inner", srsgc_s(p.B, p.W, p.lam)),  # its inner code; uncoded chunks add nothing
    description="selective-repeat sequential gradient code (delay T = B)"))
register_scheme(SchemeSpec(
    "m-sgc", lambda n, p: MSGC(n, p.B, p.W, p.lam, jobs=p.jobs, **_kw(p)), params=_SEQ_PARAMS,
    required=("B", "W", "lambda"), grid=_m_grid, color="C2", real_coefficients=True, paper=True,
    precision=lambda n, p: ("inner", p.lam) if p.lam < n else ("uncoded", 0),
    description="multiplexed sequential gradient code (delay T = W-2+B)"))
