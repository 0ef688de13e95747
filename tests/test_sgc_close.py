"""coding.close = earliest for the sequential codes: close at the first arrival the scheme accepts.

The rule never strands a job: every pending job decodes by its deadline and exactly, on every small
(n, B, W, lambda) and many random arrival orders (heavy, bursty and adversarial), and the recorded late sets
always fit the (B, W, lambda) model. In the simulator it is never slower per round than the straggler rule on
the same history and it never trips the simulator's deadline check.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sgc import Driver, build, pattern_conforms

from dcoord.coding.registry import make_scheme
from dcoord.sim import ModelDelays, SimulateConfig, simulate
from dcoord.stragglers import InjectConfig, make_straggler_model


def close_earliest(scheme, r: int, times: np.ndarray) -> np.ndarray:
    """The earliest rule, stated plainly: admit arrivals in time order until the scheme accepts."""
    n = scheme.n
    tasked = scheme.worker_loads(r) > 0
    arrived = ~tasked
    if scheme.accepts_mask(r, arrived):
        return arrived
    for i in np.argsort(times, kind="stable"):
        if not tasked[i]:
            continue
        arrived = arrived.copy()
        arrived[i] = True
        if scheme.accepts_mask(r, arrived):
            return arrived
    raise AssertionError(f"round {r}: not accepted with all {n} workers in")


def times_for(rng: np.random.Generator, n: int, r: int, slow: np.ndarray, kind: str) -> np.ndarray:
    if kind == "uniform":
        return rng.random(n)
    if kind == "bursty":  # slow workers stay slow for a while (Gilbert-Elliott)
        return rng.random(n) + 5.0 * slow
    # adversarial: the same few workers are always the fastest, the rest arrive in a fresh order
    t = 1.0 + rng.random(n)
    t[: max(1, n // 3)] = rng.random(max(1, n // 3)) * 0.1
    return t


def run_earliest(name: str, n: int, B: int, dw: int, lam: int, J: int, seed: int, kind: str) -> int:
    scheme = build(name, n, B, dw, lam, J)
    rng = np.random.default_rng(seed)
    drv = Driver(scheme, J, seed)
    hist: list[np.ndarray] = []
    slow = rng.random(n) < 0.3
    late_total = 0
    for r in range(J + scheme.delay):
        slow = np.where(slow, rng.random(n) < 0.7, rng.random(n) < 0.2)
        tasked = scheme.worker_loads(r) > 0
        arrived = close_earliest(scheme, r, times_for(rng, n, r, slow, kind))
        late = tasked & ~arrived
        late_total += int(late.sum())
        reps = name == "sr-sgc" and any(ts and ts[0].kind == "repeat" for ts in scheme.tasks(r).values())
        absorbed = name == "sr-sgc" and not reps and late.sum() <= scheme.s
        hist.append(np.zeros(n, dtype=bool) if absorbed else late)
        assert pattern_conforms(hist, scheme.B, scheme.W, scheme.lam), f"round {r}: recorded set outside the model"
        drv.round(r, arrived)  # decodes exactly and asserts the job due this round decoded
    drv.finish()
    return late_total


def small_params():
    for name in ("sr-sgc", "m-sgc"):
        for n in range(2, 7):
            for B in (1, 2, 3):
                for dw in (1, 2, 3):
                    for lam in range(1, n + 1):
                        yield name, n, B, dw, lam


@pytest.mark.slow
def test_earliest_never_strands_a_job_on_all_small_parameters():
    """Every (scheme, n <= 6, B <= 3, W offset <= 3, lambda <= n), one uniform, bursty and adversarial run each."""
    late = 0
    cases = 0
    for name, n, B, dw, lam in small_params():
        for rep, kind in enumerate(("uniform", "bursty", "adversarial")):
            late += run_earliest(name, n, B, dw, lam, J=7, seed=1000 * rep + 7 * n + lam, kind=kind)
            cases += 1
    assert cases > 300
    assert late > cases  # the rule does close with stragglers out, a lot


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["sr-sgc", "m-sgc"]), st.integers(2, 12), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 12), st.integers(1, 14), st.integers(0, 2**31 - 1),
       st.sampled_from(["uniform", "bursty", "adversarial"]))
def test_earliest_random_patterns_decode_by_the_deadline(name, n, B, dw, lam, J, seed, kind):
    run_earliest(name, n, B, dw, min(lam, n), J, seed, kind)


@pytest.mark.parametrize("name, params", [("m-sgc", {"B": 1, "W": 2, "lam": 3}), ("m-sgc", {"B": 2, "W": 3, "lam": 5}),
                                          ("sr-sgc", {"B": 1, "W": 2, "lam": 4}), ("sr-sgc", {"B": 2, "W": 5, "lam": 6})])
@pytest.mark.parametrize("load_model", ["actual", "nominal"])
def test_simulator_earliest_decodes_and_closes_with_more_stragglers(name, params, load_model):
    n, J = 16, 60
    inj = InjectConfig(model="pareto", shape=1.5, scale=0.5)  # every worker jitters, a heavy tail straggles
    src = ModelDelays(make_straggler_model(inj, n, 3), base_time=1.0, base_comp=2.0)
    cfg = SimulateConfig(jobs=J, load_model=load_model)
    rule = simulate(make_scheme(name, n, jobs=J, **params), src, cfg)
    early = simulate(make_scheme(name, n, jobs=J, **params), src, cfg.model_copy(update={"close": "earliest"}))
    # simulate() raises SimulationError when a job misses its deadline: reaching here means none did
    assert np.isfinite(early.job_finish_times).all()
    assert early.stragglers_per_round.sum() > rule.stragglers_per_round.sum()
    assert early.wait_all_rounds == 0


def test_earliest_round_is_never_later_than_the_rule_on_the_same_history():
    """Given the same recorded history, the earliest close time is <= the straggler rule's close time."""
    n, J = 8, 30
    rng = np.random.default_rng(5)
    for B, W, lam in itertools.product((1, 2), (3, 4), (2, 4)):
        scheme = make_scheme("m-sgc", n, B=B, W=W, lam=lam, jobs=J)
        for r in range(J + scheme.delay):
            t = rng.exponential(1.0, n) + 1.0
            tasked = scheme.worker_loads(r) > 0
            early = close_earliest(scheme, r, t)
            t_early = max((t[i] for i in np.flatnonzero(tasked & early)), default=0.0)
            rule_dur = min(2 * t[tasked].min(), t[tasked].max())
            rule_arr = ~tasked | (t <= rule_dur)
            if scheme.accepts_mask(r, rule_arr):
                assert t_early <= rule_dur
                scheme.close_round_mask(r, rule_arr)
            else:
                scheme.close_round_mask(r, np.ones(n, dtype=bool))


def test_config_and_simulate_job_carry_the_close_rule(tmp_path):
    from dcoord.config import load_config
    from dcoord.sim import simulate_job

    cfg = load_config(None, data={"name": "x", "workload": "logreg-digits", "workers": 4, "rounds": 2,
                                  "coding": {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1, "close": "earliest"}})
    assert cfg.coding.close == "earliest"
    with pytest.raises(Exception, match="close"):
        load_config(None, data={"name": "x", "workload": "logreg-digits", "workers": 4, "rounds": 2,
                                "coding": {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1, "close": "soon"}})
    inj = {"model": "bernoulli", "p": 0.3, "slowdown": 5.0}
    data = simulate_job(4, cfg.coding.model_dump(by_alias=True), {"jobs": 10}, tmp_path, inject=inj, plot=False)
    assert data["simulate"]["close"] == "earliest"


def test_carry_over_delays_a_cut_off_worker_into_the_next_round():
    """Persistent workers: a worker cut off at the close keeps working and starts the next round late."""
    from dcoord.sim import TraceDelays

    hand = np.array([[1.0, 1.0, 1.0, 3.0],   # worker 3 late (> 2 x fastest): cut off at t=2, 1 s left
                     [1.0, 1.0, 1.0, 1.0]])  # fresh: everybody at 1; carry-over: worker 3 at 1 + 1 = 2
    src = TraceDelays(hand, base_comp=0.0)
    cfg = SimulateConfig(jobs=2, plain_close="straggler-rule")
    fresh = simulate(make_scheme("gc-cyclic", 4, s=1, jobs=2), src, cfg)
    carry = simulate(make_scheme("gc-cyclic", 4, s=1, jobs=2), src, cfg.model_copy(update={"carry_over": True}))
    assert fresh.round_durations.tolist() == [2.0, 1.0]
    assert carry.round_durations.tolist() == [2.0, 2.0]  # 2 <= (1+mu) x 1: it is waited for, not late
    # the first decodable arrival does not wait for it at all
    early = simulate(make_scheme("gc-cyclic", 4, s=1, jobs=2), src,
                     SimulateConfig(jobs=2, carry_over=True))
    assert early.round_durations.tolist() == [1.0, 1.0]
