"""SR-SGC and M-SGC: loads, validation, the (B, W, lambda) model, decodability by the deadline, exact decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcoord.coding.base import DecodeError, ResultRef, SchemeError
from dcoord.coding.gc import GCCyclic, Uncoded
from dcoord.coding.registry import make_scheme
from dcoord.coding.sgc import MSGC, SRSGC, InnerCode, msgc_load, srsgc_load, srsgc_s

# ---------------------------------------------------------------------------------------------------------
# helpers: an independent (offline) statement of the (B, W, lambda) model, and a driver that checks decoding


def pattern_conforms(hist: list[np.ndarray], B: int, W: int, lam: int) -> bool:
    """Every window of W consecutive rounds: <= lam distinct stragglers, each one's rounds within B consecutive."""
    R = len(hist)
    if R == 0:
        return True
    H = np.array(hist)  # (rounds, n)
    for a in range(-W + 1, R):
        lo, hi = max(0, a), min(R, a + W)
        win = H[lo:hi]
        if np.count_nonzero(win.any(axis=0)) > lam:
            return False
        for i in np.flatnonzero(win.any(axis=0)):
            rs = np.flatnonzero(win[:, i])
            if rs[-1] - rs[0] + 1 > B:
                return False
    return True


def conforming_set(rng: np.random.Generator, hist: list[np.ndarray], n: int, B: int, W: int, lam: int,
                   density: float) -> np.ndarray:
    """A random straggler set for the next round that keeps ``hist`` conforming (bursts are favoured)."""
    r = len(hist)
    recent = np.zeros(n, dtype=bool)  # straggled within the window: free w.r.t. lambda
    old = np.zeros(n, dtype=bool)  # straggled too long ago in the window: may not straggle now
    for q in range(max(0, r - W + 1), r):
        recent |= hist[q]
        if q <= r - B:
            old |= hist[q]
    S = np.zeros(n, dtype=bool)
    budget = lam - np.count_nonzero(recent)
    for i in rng.permutation(n):
        if old[i] or rng.random() >= density:
            continue
        if recent[i]:
            S[i] = True
        elif budget > 0:
            S[i] = True
            budget -= 1
    return S


def message(task, grads) -> np.ndarray:
    return sum(c * grads[task.job][p] for p, c in zip(task.parts, task.coeffs, strict=True))


class Driver:
    """Runs a scheme round by round, stores every delivered message, decodes and checks every job."""

    def __init__(self, scheme, jobs: int, seed: int = 0):
        self.s, self.J = scheme, jobs
        rng = np.random.default_rng(seed)
        P = len(scheme.part_fractions())
        self.grads = {j: rng.standard_normal((P, 3)) for j in range(jobs)}
        self.msgs: dict[ResultRef, np.ndarray] = {}
        self.decoded: dict[int, int] = {}
        self.fallbacks = 0

    def round(self, r: int, arrived: np.ndarray) -> None:
        tasks = self.s.tasks(r)
        for i, ts in tasks.items():
            for t in ts:
                assert 0 <= t.job < self.J, f"task for job {t.job} outside 0..{self.J - 1}"
                if arrived[i]:
                    self.msgs[ResultRef(r, i, t.slot)] = message(t, self.grads)
        for j in self.s.close_round(r, frozenset(np.flatnonzero(arrived).tolist())):
            coeffs = self.s.decode(j)
            got = sum(c * self.msgs[ref] for ref, c in coeffs.items())
            want = self.grads[j].sum(axis=0)
            rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
            assert rel < 1e-9, f"job {j}: decoded gradient off by {rel:.2e} (relative)"
            assert j not in self.decoded
            self.decoded[j] = r
        due = r - self.s.delay
        if 0 <= due < self.J:
            assert due in self.decoded, f"job {due} not decodable by its deadline (round {r})"

    def finish(self) -> None:
        assert sorted(self.decoded) == list(range(self.J))
        for j, r in self.decoded.items():
            assert j <= r <= j + self.s.delay


sgc_params = st.tuples(
    st.sampled_from(["sr-sgc", "m-sgc"]),
    st.integers(2, 9),  # n
    st.integers(1, 3),  # B
    st.integers(1, 3),  # W offset
    st.integers(1, 9),  # lambda (clipped to n)
    st.integers(1, 9),  # jobs
    st.integers(0, 2**31 - 1),  # seed
)


def build(name: str, n: int, B: int, dw: int, lam: int, J: int):
    lam = min(lam, n)
    W = 1 + B * dw if name == "sr-sgc" else B + dw
    return make_scheme(name, n, B=B, W=W, lam=lam, jobs=J)


# ---------------------------------------------------------------------------------------------------------
# loads


def to7(x: float, figure: float) -> bool:
    """x agrees with a figure quoted to 7 decimals (half-up, as the paper prints them)."""
    return abs(x - figure) <= 5e-8 + 1e-15


def test_listed_load_figures():
    assert to7(MSGC(256, 1, 2, 27, jobs=5).load(), 0.0075431)
    sr = SRSGC(256, 2, 3, 23, jobs=5)
    assert sr.s == 12 and sr.load() == 13 / 256 and to7(sr.load(), 0.0507813)
    assert GCCyclic(256, 15).load() == 0.0625
    assert Uncoded(256).load() == 1 / 256
    assert SRSGC(256, 1, 2, 1, jobs=5).load() == 0.0078125
    assert to7(MSGC(256, 1, 2, 5, jobs=5).load(), 0.0066964)
    assert msgc_load(256, 1, 2, 27) == MSGC(256, 1, 2, 27).load()
    assert srsgc_load(256, 2, 3, 23) == 13 / 256 and srsgc_s(2, 3, 23) == 12


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 4), st.integers(1, 4), st.integers(1, 40))
def test_loads_match_formulas_and_tasks(n, B, dw, lam):
    lam = min(lam, n)
    W = B + dw
    m = MSGC(n, B, W, lam, jobs=50)
    if lam < n:
        want = (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))
    else:
        want = (W - 1 + B) / (n * (W - 1))
    assert math.isclose(m.load(), want, rel_tol=1e-12)
    assert math.isclose(m.part_fractions().sum(), 1.0, rel_tol=1e-12)
    # steady state (every minitask busy, nobody straggling): every worker's load is exactly load()
    frac = m.part_fractions()
    for r in range(W - 1 + B + 1):
        loads = m.worker_loads(r)
        tasks = m.tasks(r)
        for i in range(n):
            assert math.isclose(loads[i], sum(frac[list(t.parts)].sum() for t in tasks[i]), rel_tol=1e-9)
        if r >= m.delay and lam < n:
            assert np.allclose(loads, m.load(), rtol=1e-9)
        assert np.all(loads <= m.load() * (1 + 1e-12))
        m.close_round(r, frozenset(range(n)))
    if n >= 2:
        Ws = 1 + B * dw
        s = math.ceil(B * lam / (Ws - 1 + B))
        if s < n:
            sr = SRSGC(n, B, Ws, lam, jobs=5)
            assert sr.s == s and math.isclose(sr.load(), (s + 1) / n)
            assert np.allclose(sr.worker_loads(0), (s + 1) / n)


# ---------------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("call, words", [
    (lambda: SRSGC(8, 2, 4, 3), ["B to divide W-1", "B=2", "W=4"]),
    (lambda: SRSGC(8, 0, 3, 3), ["coding.B", ">= 1"]),
    (lambda: SRSGC(8, 1, 1, 3), ["coding.W", ">= 2"]),
    (lambda: SRSGC(8, 1, 2, 9), ["lambda", "<= workers=8"]),
    (lambda: SRSGC(8, 1, 2, 0), ["coding.lambda", ">= 1"]),
    (lambda: MSGC(8, 2, 2, 3), ["1 <= B < W", "B=2", "W=2"]),
    (lambda: MSGC(8, 3, 2, 3), ["1 <= B < W"]),
    (lambda: MSGC(8, 1, 2, 9), ["lambda", "<= workers=8"]),
    (lambda: MSGC(8, 1, 3, 2, models=2), ["models", "T+1 = 3"]),
    (lambda: SRSGC(8, 2, 3, 2, models=2), ["models", "T+1 = 3"]),
    (lambda: MSGC(8, 1, 2, 2, jobs=0), ["jobs", ">= 1"]),
    (lambda: MSGC(8, 1.5, 2, 2), ["coding.B", "integer"]),
    (lambda: make_scheme("s-gc", 8), ["unknown scheme", "m-sgc"]),
    (lambda: make_scheme("m-sgc", 8, B=1, lam=2), ["coding.W"]),
])
def test_parameter_errors_name_the_parameter(call, words):
    with pytest.raises(SchemeError) as exc:
        call()
    for w in words:
        assert w in str(exc.value)


def test_delay_and_models():
    sr, m = SRSGC(8, 2, 5, 4, jobs=3), MSGC(8, 2, 4, 3, jobs=3)
    assert (sr.delay, sr.models) == (2, 3)
    assert (m.delay, m.models) == (4, 5)
    big = MSGC(8, 2, 4, 3, jobs=3, models=7)
    assert big.models == 7 and big.model_of(8) == 1
    assert sr.uses_straggler_rule() and m.uses_straggler_rule()
    assert m.last_job(10) == 2 and MSGC(8, 1, 2, 1).last_job(10) == 9


def test_rounds_in_order_and_nonconforming_close_refused():
    m = MSGC(6, 1, 2, 1, jobs=4)
    with pytest.raises(SchemeError, match="in order"):
        m.tasks(1)
    m.close_round(0, frozenset(range(6)))
    assert not m.accepts(1, frozenset(range(4)))  # two stragglers > lambda = 1
    with pytest.raises(DecodeError, match="wait for all"):
        m.close_round(1, frozenset(range(4)))
    with pytest.raises(DecodeError):
        m.decode(3)


# ---------------------------------------------------------------------------------------------------------
# task assignment


def test_msgc_task_layout():
    n, B, W, lam, J = 5, 2, 3, 2, 6
    m = MSGC(n, B, W, lam, jobs=J)
    K = W - 1
    for r in range(J + m.delay):
        tasks = m.tasks(r)
        for i, ts in tasks.items():
            for t in ts:
                assert t.job == r - t.slot and 0 <= t.job < J
                if t.slot < K:
                    assert t.kind == "d1" and t.parts == (i * K + t.slot,) and t.coeffs == (1.0,)
                else:
                    g = t.slot - K
                    assert t.kind in ("d2", "d1")
                    if t.kind == "d2":
                        assert all(n * K + g * n <= p < n * K + (g + 1) * n for p in t.parts)
                        assert len(t.parts) == lam + 1
        # worker 0 straggles in round 1: it redoes its lost D1 chunk of job 1 in its D2 slot of round 3
        arrived = frozenset(range(1, n)) if r == 1 else frozenset(range(n))
        m.close_round(r, arrived)
        if r == 2:
            nxt = m.tasks(3)[0]
            redo = [t for t in nxt if t.slot == K]
            assert redo and redo[0].kind == "d1" and redo[0].job == 1 and redo[0].parts == (0 * K + 0,)


def test_srsgc_repeats_exactly_what_is_missing():
    n, B, W, lam, J = 8, 1, 2, 6, 5  # s = ceil(6/2) = 3
    sr = SRSGC(n, B, W, lam, jobs=J)
    assert sr.s == 3
    stragglers = {0: {1, 4, 5, 6, 7}}  # 5 missing > s -> 2 lowest of them repeat job 0 in round 1
    # conformance: 5 stragglers <= lambda = 6
    for r in range(J + B):
        arrived = frozenset(range(n)) - stragglers.get(r, set())
        tasks = sr.tasks(r)
        if r == 1:
            assert [i for i, ts in tasks.items() if ts and ts[0].kind == "repeat"] == [1, 4]
            assert all(tasks[i][0].job == 0 for i in (1, 4))
            assert all(ts[0].job == 1 for i, ts in tasks.items() if i not in (1, 4))
        if r == J:  # after the last job: only repeats (none needed), nobody works
            assert all(ts == [] for ts in tasks.values())
        sr.close_round(r, arrived)


# ---------------------------------------------------------------------------------------------------------
# decodability and exact decoding


@settings(max_examples=80, deadline=None)
@given(sgc_params, st.sampled_from([0.15, 0.4, 0.8]))
def test_conforming_patterns_decode_without_fallback(params, density):
    name, n, B, dw, lam, J, seed = params
    scheme = build(name, n, B, dw, lam, J)
    rng = np.random.default_rng(seed)
    drv = Driver(scheme, J, seed)
    hist: list[np.ndarray] = []
    for r in range(J + scheme.delay):
        tasked = scheme.worker_loads(r) > 0
        S = conforming_set(rng, hist, n, scheme.B, scheme.W, scheme.lam, density) & tasked
        hist.append(S)
        assert pattern_conforms(hist, scheme.B, scheme.W, scheme.lam)
        assert scheme.conforms(r, S)
        assert scheme.accepts(r, frozenset(np.flatnonzero(~S).tolist())), "conforming pattern needed a fallback"
        drv.round(r, ~S)
    drv.finish()


@settings(max_examples=80, deadline=None)
@given(sgc_params, st.sampled_from([0.1, 0.3, 0.6]), st.sampled_from(["all", "minimal"]))
def test_any_pattern_decodes_through_the_fallback(params, p, wait):
    name, n, B, dw, lam, J, seed = params
    scheme = build(name, n, B, dw, lam, J)
    rng = np.random.default_rng(seed)
    drv = Driver(scheme, J, seed)
    for r in range(J + scheme.delay):
        S = rng.random(n) < p
        arrived = ~S
        ok = scheme.accepts(r, frozenset(np.flatnonzero(arrived).tolist()))
        # whenever the set fits the model (with SR-SGC's exemption) the scheme can close: the theorem
        assert ok == scheme.conforms(r, S)
        if not ok:
            if wait == "all":
                arrived = np.ones(n, dtype=bool)
            else:
                for i in rng.permutation(np.flatnonzero(S)):
                    arrived[i] = True
                    if scheme.accepts_mask(r, arrived):
                        break
            assert scheme.accepts_mask(r, arrived)
        drv.round(r, arrived)
    drv.finish()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(1, 3), st.integers(1, 3), st.integers(1, 8), st.integers(0, 10**6))
def test_msgc_conformance_check_is_the_model(n, B, dw, lam, seed):
    """M-SGC's online check agrees with the offline definition on every window (recorded history)."""
    lam = min(lam, n)
    W = B + dw
    m = MSGC(n, B, W, lam, jobs=8)
    rng = np.random.default_rng(seed)
    hist: list[np.ndarray] = []
    for r in range(8 + m.delay):
        tasked = m.worker_loads(r) > 0
        S = (rng.random(n) < rng.choice([0.1, 0.3, 0.6])) & tasked
        assert m.conforms(r, S) == pattern_conforms(hist + [S], B, W, lam)
        arrived = ~S if m.accepts_mask(r, ~S) else np.ones(n, dtype=bool)
        hist.append(tasked & ~arrived)
        m.close_round_mask(r, arrived)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 3), st.integers(1, 3), st.integers(1, 8), st.integers(0, 10**6))
def test_srsgc_accepts_everything_the_model_allows(n, B, dw, lam, seed):
    lam = min(lam, n)
    W = 1 + B * dw
    sr = SRSGC(n, B, W, lam, jobs=8)
    rng = np.random.default_rng(seed)
    hist: list[np.ndarray] = []
    for r in range(8 + sr.delay):
        tasked = sr.worker_loads(r) > 0
        S = (rng.random(n) < rng.choice([0.1, 0.3, 0.6])) & tasked
        if pattern_conforms(hist + [S], B, W, lam):
            assert sr.conforms(r, S)
        repeats = any(ts and ts[0].kind == "repeat" for ts in sr.tasks(r).values())
        arrived = ~S if sr.accepts_mask(r, ~S) else np.ones(n, dtype=bool)
        St = tasked & ~arrived
        # the exemption records a round the inner code absorbed as straggler-free
        hist.append(np.zeros(n, dtype=bool) if not repeats and St.sum() <= sr.s else St)
        sr.close_round_mask(r, arrived)


@pytest.mark.parametrize("n, s, kind", [(6, 2, "fr"), (7, 2, "cyclic"), (9, 4, "cyclic"), (8, 3, "auto")])
def test_inner_code_decodes_any_n_minus_s(n, s, kind):
    code = InnerCode(n, s, kind)
    rng = np.random.default_rng(n * 10 + s)
    g = rng.standard_normal((n, 2))
    msgs = {i: sum(c * g[p] for p, c in zip(*code.row(i), strict=True)) for i in range(n)}
    for _ in range(20):
        k = int(rng.integers(n - s, n + 1))
        rows = rng.choice(n, size=k, replace=False)
        a = code.decode(rows.tolist())
        got = sum(c * msgs[i] for i, c in a.items())
        assert np.allclose(got, g.sum(axis=0), rtol=1e-10, atol=1e-10)
    with pytest.raises(DecodeError):
        code.decode(range(n - s - 1))


def test_paper_scale_scheme_decodes_exactly():
    """n = 40 with a cyclic inner code: coefficients grow, decoding must stay exact."""
    m = MSGC(40, 1, 2, 5, jobs=4)
    assert m.code.kind == "cyclic"
    drv = Driver(m, 4, 1)
    rng = np.random.default_rng(3)
    for r in range(4 + m.delay):
        S = np.zeros(40, dtype=bool)
        if r % 2 == 0:
            S[rng.choice(40, 5, replace=False)] = True
        drv.round(r, ~S)
    drv.finish()
    assert m.last_residual < 1e-8
