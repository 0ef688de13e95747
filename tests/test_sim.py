"""The virtual-time simulator, the tuner and the report: semantics by hand, real traces, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED
from pydantic import ValidationError

from dcoord.coding.registry import make_scheme
from dcoord.coding.sgc import MSGC
from dcoord.sim import (
    ModelDelays,
    SimulateConfig,
    SimulationError,
    TraceDelays,
    compare,
    scheme_args,
    simulate,
    simulate_job,
)
from dcoord.sim.tune import best_per_scheme, candidates, estimate_base_comp, format_choices, tune
from dcoord.stragglers import InjectConfig, load_trace_csv, make_straggler_model

TRACES = SHARED / "traces"  # ../shared beside the repo, or DCOORD_SHARED
LONDON = TRACES / "sam-gc-cnn_profile_est-mbp__w256-n10-l0_000-b256-cno_forloop-London.csv"
LONDON_L1 = TRACES / "sam-gc-cnn_profile_est-mbp__w256-n10-l1_000-b256-cno_forloop-London.csv"

# rows = rounds, columns = 4 workers; base_comp 0 so the times are exactly these
HAND = np.array([
    [1.0, 1.0, 1.0, 3.0],  # worker 3 late (> 2 * fastest): conforms, the round lasts 2
    [1.0, 1.0, 1.0, 3.0],  # worker 3 late again: burst longer than B=1 -> wait for all (3)
    [1.0, 5.0, 1.0, 1.0],  # worker 1 late: conforms (round 1 was recorded straggler-free), lasts 2
    [1.0, 1.0, 3.0, 4.0],  # {2, 3} late with {1} in the window: 3 > lambda=2; minimal wait admits 2 at t=3
])


def hand_source() -> TraceDelays:
    return TraceDelays(HAND, base_comp=0.0)


def test_straggler_rule_and_fallbacks_by_hand():
    cfg = SimulateConfig(jobs=3, mu=1.0)
    res = simulate(MSGC(4, 1, 2, 2, jobs=3), hand_source(), cfg)
    assert res.rounds == 4 and res.delay == 1
    assert res.round_durations.tolist() == [2.0, 3.0, 2.0, 4.0]
    assert (res.runtime_s, res.wait_all_rounds, res.extended_rounds) == (11.0, 2, 2)
    assert res.stragglers_per_round.tolist() == [1, 0, 1, 0]
    assert res.job_finish_times.tolist() == [5.0, 7.0, 11.0]

    res = simulate(MSGC(4, 1, 2, 2, jobs=3), hand_source(), cfg.model_copy(update={"wait": "minimal"}))
    assert res.round_durations.tolist() == [2.0, 3.0, 2.0, 3.0]
    assert (res.runtime_s, res.wait_all_rounds, res.extended_rounds) == (10.0, 1, 2)
    assert res.stragglers_per_round.tolist() == [1, 0, 1, 1]


def test_plain_codes_close_at_the_first_decodable_arrival():
    cfg = SimulateConfig(jobs=4, mu=1.0)
    assert simulate(make_scheme("gc-cyclic", 4, s=1, jobs=4), hand_source(), cfg).round_durations.tolist() == [
        1.0, 1.0, 1.0, 3.0]
    assert simulate(make_scheme("uncoded", 4, jobs=4), hand_source(), cfg).runtime_s == 3 + 3 + 5 + 4
    # the SGC paper's protocol: plain codes too wait (1+mu) * fastest and wait for all when they cannot decode
    paper = cfg.model_copy(update={"plain_close": "straggler-rule"})
    res = simulate(make_scheme("gc-cyclic", 4, s=1, jobs=4), hand_source(), paper)
    assert res.round_durations.tolist() == [2.0, 2.0, 2.0, 4.0] and res.wait_all_rounds == 1


def test_real_trace_sane_values():
    n, J, bc = 256, 20, 0.8
    src = TraceDelays.from_csv(LONDON, n, base_comp=bc)
    d0 = load_trace_csv(LONDON)
    cfg = SimulateConfig(jobs=J, mu=1.0)
    schemes = {
        "uncoded": lambda: make_scheme("uncoded", n, jobs=J),
        "gc-cyclic": lambda: make_scheme("gc-cyclic", n, s=15, jobs=J),
        "sr-sgc": lambda: make_scheme("sr-sgc", n, B=2, W=3, lam=23, jobs=J),
        "m-sgc": lambda: make_scheme("m-sgc", n, B=1, W=2, lam=27, jobs=J),
    }
    res = compare(schemes, src, cfg)
    # uncoded waits for the slowest every round; gc-cyclic for the (n-s)-th arrival
    assert res["uncoded"].runtime_s == pytest.approx(sum((d0[r % 10] + bc / n).max() for r in range(J)))
    assert res["gc-cyclic"].runtime_s == pytest.approx(
        sum(np.sort(d0[r % 10] + bc * 16 / n)[n - 16] for r in range(J)))
    for r in res.values():
        assert r.rounds == J + r.delay and r.jobs == J
        assert np.all(np.isfinite(r.job_finish_times))
        ends = np.cumsum(r.round_durations)
        for j, t in enumerate(r.job_finish_times):
            assert ends[j] - 1e-9 <= t <= ends[j + r.delay] + 1e-9
        assert r.runtime_s == pytest.approx(r.round_durations.sum())
        for k in range(r.rounds):
            row = d0[k % 10]
            if r.round_durations[k] > 0:
                assert row.min() <= r.round_durations[k] <= row.max() + bc + 1e-9
    assert res["uncoded"].runtime_s > res["gc-cyclic"].runtime_s
    assert res["m-sgc"].load == pytest.approx(0.0075431, abs=1e-7)
    assert 0 <= res["m-sgc"].wait_all_rounds <= res["m-sgc"].rounds


def test_deterministic():
    src = TraceDelays.from_csv(LONDON, 64, base_comp=0.5)
    cfg = SimulateConfig(jobs=15, wait="minimal")
    a = simulate(make_scheme("m-sgc", 64, B=1, W=3, lam=6, jobs=15), src, cfg)
    b = simulate(make_scheme("m-sgc", 64, B=1, W=3, lam=6, jobs=15), src, cfg)
    da, db = a.to_dict(), b.to_dict()
    da.pop("sim_wall_s")
    db.pop("sim_wall_s")
    assert da == db
    ge = InjectConfig(model="gilbert-elliott", p_good_to_bad=0.05, p_bad_to_good=0.3, slowdown=3.0)
    runs = [simulate(make_scheme("sr-sgc", 64, B=1, W=3, lam=8, jobs=15),
                     ModelDelays(make_straggler_model(ge, 64, 5), 1.0, 2.0), SimulateConfig(jobs=15))
            for _ in range(2)]
    assert np.array_equal(runs[0].round_durations, runs[1].round_durations)
    assert runs[0].runtime_s > 15 * 1.0  # never faster than the base time


def test_broken_scheme_is_reported():
    class Forgetful(MSGC):
        def close_round_mask(self, round, arrived):
            super().close_round_mask(round, arrived)
            return []

    with pytest.raises(SimulationError, match="job 0 not decodable"):
        simulate(Forgetful(4, 1, 2, 2, jobs=3), hand_source(), SimulateConfig(jobs=3))
    with pytest.raises(SimulationError, match="built for 5 jobs"):
        simulate(MSGC(4, 1, 2, 2, jobs=5), hand_source(), SimulateConfig(jobs=3))


def test_large_n_runs():
    n = 2048
    model = make_straggler_model(InjectConfig(model="shifted-exponential", shift=0.0, rate=5.0), n, 1)
    res = simulate(make_scheme("m-sgc", n, B=1, W=2, lam=64, jobs=10), ModelDelays(model, 1.0, 2.0),
                   SimulateConfig(jobs=10))
    assert np.all(np.isfinite(res.job_finish_times)) and res.runtime_s > 10.0


def test_config_and_coding_args():
    with pytest.raises(ValidationError, match="Extra inputs"):
        SimulateConfig(trace=None, jobz=3)
    with pytest.raises(ValidationError):
        SimulateConfig(mu=-1)
    assert scheme_args({"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 27, "stragglers": 0, "mu": 1.0}) == (
        "m-sgc", {"B": 1, "W": 2, "lam": 27, "s": 0})
    with pytest.raises(ValueError, match="coding.scheme must be one of"):
        scheme_args({"scheme": "m-sgcc", "B": 1})


def test_simulate_job_writes_report(tmp_path):
    out = tmp_path / "sim"
    data = simulate_job(
        32, {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 3},
        {"trace": str(LONDON), "base_comp": 1.0, "jobs": 8, "max_delay": 2, "lambda_grid": [1, 2, 4, 8]},
        out, compare=["gc-cyclic", "uncoded", "sr-sgc", "m-sgc"], seed=1,
    )
    on_disk = json.loads((out / "simulation.json").read_text())
    assert set(on_disk["schemes"]) == {"m-sgc", "gc-cyclic", "uncoded", "sr-sgc", "m-sgc (tuned)"}
    for entry in on_disk["schemes"].values():
        for key in ("runtime_s", "wait_all_rounds", "load", "params", "job_finish_times"):
            assert key in entry
        assert entry["runtime_s"] > 0
    assert on_disk["schemes"]["gc-cyclic"]["tuned"] and not on_disk["schemes"]["uncoded"]["tuned"]
    assert on_disk["schemes"]["m-sgc (tuned)"]["runtime_s"] <= on_disk["schemes"]["m-sgc"]["runtime_s"] + 1e-9
    assert data["schemes"]["m-sgc"]["params"]["lambda"] == 3
    assert (out / "simulation.png").stat().st_size > 1000
    # without a trace: the injected model on a base time
    data = simulate_job(16, {"scheme": "sr-sgc", "B": 1, "W": 2, "lambda": 2}, {"jobs": 5, "base_time": 2.0},
                        tmp_path / "inj", inject={"model": "bernoulli", "p": 0.1, "slowdown": 4}, plot=False)
    assert data["delays"]["kind"] == "model" and data["schemes"]["sr-sgc"]["runtime_s"] >= 10.0


def test_tune_ranks_by_simulated_runtime():
    choices = tune(LONDON, jobs=6, max_delay=2, n=32, base_comp=1.0, top=None, lambda_grid=[1, 2, 4, 8])
    assert len(choices) == len(list(candidates(32, 2, lambda_grid=[1, 2, 4, 8])))
    runtimes = [c.runtime_s for c in choices]
    assert runtimes == sorted(runtimes)
    best = best_per_scheme(choices)
    assert set(best) == {"uncoded", "gc-fr", "gc-cyclic", "gc-binary", "sr-sgc", "m-sgc"}
    assert all(c.delay <= 2 for c in choices)
    # the reported runtime is what simulating that choice gives
    src = TraceDelays.from_csv(LONDON, 32, base_comp=1.0)
    for c in best.values():
        again = simulate(make_scheme(c.scheme, 32, jobs=6, **c.kwargs), src, SimulateConfig(jobs=6))
        assert again.runtime_s == pytest.approx(c.runtime_s)
    top = tune(LONDON, jobs=6, max_delay=2, n=32, base_comp=1.0, top=3, lambda_grid=[1, 2, 4, 8])
    assert [c.runtime_s for c in top] == runtimes[:3]
    assert "runtime=" in format_choices(top)


def test_estimate_base_comp():
    a = np.full((3, 4), 1.0)
    assert estimate_base_comp(a, a + 2.5) == pytest.approx(2.5)
    assert estimate_base_comp(a, a + 1.0, 0.0, 0.5) == pytest.approx(2.0)
    bc = estimate_base_comp(LONDON, LONDON_L1)
    assert 0.0 < bc < 2.0
