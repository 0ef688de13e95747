"""gc-hetero: speed-proportional loads, exact decoding under any s stragglers, injected and measured speeds."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference import full_batch_gd, max_rel_diff

from dcoord.coding.hetero import (
    GCHetero,
    balanced_loads,
    bound_time,
    moved_parts,
)
from dcoord.coding.registry import make_scheme
from dcoord.config import load_config
from dcoord.errors import ConfigError, SchemeError
from dcoord.stragglers import InjectConfig, make_straggler_model


def _decode_error(sch: GCHetero, F: tuple[int, ...], r: int, rng: np.random.Generator) -> float:
    """Relative error of the decoded sum over random float64 part gradients when only F delivers."""
    tasks = sch.tasks(r)
    g = rng.standard_normal((sch.num_parts(), 7))
    msgs = {w: sum(c * g[p] for p, c in zip(ts[0].parts, ts[0].coeffs)) for w, ts in tasks.items() if ts}
    assert sch.accepts(r, frozenset(F))
    sch.close_round(r, frozenset(F))
    got = sum(c * msgs[ref.worker] for ref, c in sch.decode(r).items())
    exact = g.sum(axis=0)
    return float(np.max(np.abs(got - exact)) / np.max(np.abs(exact)))


def _survivor_sets(n, s, rng, many=40):
    if n <= 10:
        return list(itertools.combinations(range(n), n - s))
    return [tuple(sorted(rng.choice(n, n - s, replace=False))) for _ in range(many)]


@pytest.mark.parametrize("construction", ["auto", "layered", "wrap"])
def test_any_s_stragglers_decode_the_exact_sum(construction):
    rng = np.random.default_rng(7)
    cases = [(n, s) for n in (2, 3, 5, 8) for s in range(min(n, 3))] + [(12, 2), (16, 1), (16, 3)]
    for n, s in cases:
        speeds = rng.uniform(0.2, 5.0, n)
        sch = GCHetero(n, s, speeds=speeds, construction=construction)
        worst = max(_decode_error(sch, F, r, rng) for r, F in enumerate(_survivor_sets(n, s, rng)))
        assert worst < 1e-9, (construction, n, s, speeds, worst)


def test_loads_follow_speed_and_meet_the_bound():
    sch = make_scheme("gc-hetero", 8, s=1, speeds=[1, 1, 1, 1, 2, 2, 4, 4])
    loads = sch.worker_loads(0)
    assert np.allclose(loads, np.array([1, 1, 1, 1, 2, 2, 4, 4]) / 8)  # (s+1) c_i / sum c
    assert sch.plan.kind == "layered"  # {4,2,1,1} + {4,2,1,1}: 0/1 decoding
    c = np.array([1, 1, 1, 1, 2, 2, 4, 4]) / 4
    assert np.max(loads / c) == pytest.approx(bound_time(c, 1))
    # a worker faster than the rest together is clipped at the whole batch
    lo = balanced_loads(np.array([10.0, 1, 1, 1]), 1)
    assert lo[0] == 1.0 and lo.sum() == pytest.approx(2.0) and np.allclose(lo[1:], 1 / 3)


def test_config_speeds_are_checked_in_one_line():
    base = {"workload": "logreg-digits", "workers": 4, "rounds": 2, "coding": {"scheme": "gc-hetero", "stragglers": 1}}
    cfg = load_config(None, data={**base, "coding": {**base["coding"], "speeds": [1, 2, 3, 4]}})
    assert cfg.make_scheme().plan.kind in ("layered", "wrap")
    for bad, word in (([1, 2], "one speed per worker"), ([1, 2, 0, 4], "> 0")):
        with pytest.raises(ConfigError) as e:
            load_config(None, data={**base, "coding": {**base["coding"], "speeds": bad}})
        assert "coding.speeds" in str(e.value) and word in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="coding.speeds is read by gc-hetero only"):
        load_config(None, data={**base, "coding": {"scheme": "gc-cyclic", "stragglers": 1, "speeds": [1, 1, 1, 1]}})
    with pytest.raises(SchemeError):
        make_scheme("gc-hetero", 3, s=1, speeds=[1.0, float("nan"), 1.0])


@pytest.mark.slow  # a whole CLI process; the fast tier keeps the in-process refusals
def test_cli_refuses_bad_speeds_with_one_line(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("workload: logreg-digits\nworkers: 3\nrounds: 2\ncoding: {scheme: gc-hetero, stragglers: 1, "
                   "speeds: [1, 2]}\n")
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "dcoord", "run", str(cfg), "--out", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "coding.speeds" in err[0] and "Traceback" not in p.stderr
    assert not out.exists()


def test_injected_speeds_stretch_compute_and_combine():
    m = make_straggler_model(InjectConfig(model="speeds", speeds=[1, 2, 4]), 3, 0)
    assert np.allclose(m.times(0, np.ones(3)), [4, 2, 1])
    both = make_straggler_model(InjectConfig(model="fixed", workers=[2], slowdown=5, speeds=[1, 2, 4]), 3, 0)
    assert np.allclose(both.times(0, np.ones(3)), [4, 2, 5])  # the fast one is 5x its own compute
    with pytest.raises(Exception, match="one speed per worker"):
        make_straggler_model(InjectConfig(model="speeds", speeds=[1, 2]), 3, 0)
    with pytest.raises(Exception, match="inject.speeds is required"):
        InjectConfig(model="speeds")


def test_measured_speeds_replan_after_warmup_and_on_drift():
    true = np.array([1, 1, 1, 1, 2, 2, 4, 4], dtype=float)
    sch = GCHetero(8, 1, warmup=2, window=3, drift=0.2)
    records = []

    def run_round(r, speeds):
        sch.tasks(r)
        loads = sch.worker_loads(r)
        everyone = frozenset(range(8))
        if sch.measuring(r):
            assert not sch.accepts(r, everyone - {0})  # the warm-up waits for every worker (all are timed)
        sch.close_round(r, everyone)
        sch.decode(r)
        rec = sch.observe_times(r, {w: loads[w] / speeds[w] for w in range(8)})
        if rec:
            records.append((r, rec))

    for r in range(6):
        run_round(r, true)
    assert [r for r, _ in records] == [1]  # once, after the warm-up; steady speeds: no more
    rec = records[0][1]
    assert rec["why"] == "measured speeds" and rec["from_round"] == 2 and rec["moved_parts"] > 0
    assert np.allclose(sch.worker_loads(6), true / 8)
    slower = true.copy()
    slower[6] = 1.0  # a fast worker becomes slow
    for r in range(6, 12):
        run_round(r, slower)
    assert len(records) == 2 and records[1][1]["why"] == "speed drift"
    assert np.allclose(sch.plan.speeds / sch.plan.speeds.max(), slower / slower.max())
    # the re-plan's moved-parts count is what changed owners
    assert moved_parts(sch.plan, sch.plan) == 0


@pytest.mark.slow
def test_injected_mixed_cluster_equals_full_batch_gd_with_measured_replan(tmp_path):
    from dcoord.runtime.local import run_local

    rounds = 10
    cfg = load_config(None, data={
        "name": "hetero", "workload": "logreg-digits", "seed": 0, "workers": 8, "rounds": rounds,
        "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
        "coding": {"scheme": "gc-hetero", "stragglers": 1},
        "inject": {"model": "speeds", "speeds": [1, 1, 1, 1, 2, 2, 4, 4]},
        "runtime": {"progress": False, "emulate_job_s": 0.4},
    })
    summary = run_local(cfg, tmp_path, progress=False)
    assert summary["rounds_completed"] == rounds
    assert summary["max_decode_residual"] < 1e-9
    ref = full_batch_gd("logreg-digits", seed=0, rounds=rounds, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-6
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    replans = [x for x in lines if x.get("event") == "replan"]
    assert replans and replans[0]["why"] == "measured speeds" and replans[0]["from_round"] == 3
    speeds = np.array(replans[0]["speeds"])
    assert speeds[6] > 1.5 * speeds[4] > 3 * speeds[0] / 1.5  # the planned speeds follow the injected ones


def test_simulator_runs_a_heterogeneous_profile(tmp_path):
    from dcoord.sim import simulate_job

    speeds = [1, 1, 1, 1, 2, 2, 4, 4]
    sim = {"jobs": 20, "base_time": 0.0, "base_comp": 1.0}
    inject = {"model": "speeds", "speeds": speeds}
    per_round = {}
    for label, coding in (("declared", {"scheme": "gc-hetero", "stragglers": 1, "speeds": speeds}),
                          ("measured", {"scheme": "gc-hetero", "stragglers": 1}),
                          ("cyclic", {"scheme": "gc-cyclic", "stragglers": 1})):
        data = simulate_job(8, coding, sim, tmp_path / label, inject=inject, plot=False)
        per_round[label] = next(iter(data["schemes"].values()))["runtime_s"] / 20
    # the bound: (s+1) x the batch at the fastest worker's speed / (sum of speeds / fastest) = 2 / 4
    assert per_round["declared"] == pytest.approx(0.5)
    assert per_round["cyclic"] == pytest.approx(1.0)  # waits for a speed-1 worker at load 2/8
    # measured: three equal warm-up rounds that wait for all, then the declared plan's rounds
    assert per_round["measured"] == pytest.approx((3 * 1.0 + 17 * 0.5) / 20)
    # with a transient 5x straggler on top the code still closes every round (one layer intact)
    data = simulate_job(8, {"scheme": "gc-hetero", "stragglers": 1, "speeds": speeds}, sim, tmp_path / "t",
                        inject={"model": "bernoulli", "p": 0.1, "slowdown": 5, "speeds": speeds}, plot=False)
    assert next(iter(data["schemes"].values()))["wait_all_rounds"] == 0


def test_decode_precision_is_reported_and_small():
    from dcoord.coding.hetero import make_plan, plan_precision

    rng = np.random.default_rng(3)
    for n, s in ((8, 2), (16, 3)):
        speeds = rng.uniform(0.2, 5.0, n)
        for kind in ("layered", "wrap"):
            p = plan_precision(make_plan(speeds, s, 8 * n, kind), s)
            assert p["amplification"] < (2.0 if kind == "layered" else 100.0), (n, s, kind, p)
    rep = make_scheme("gc-hetero", 8, s=1, speeds=[1, 1, 1, 1, 2, 2, 4, 4]).report()["hetero"]
    assert rep["construction"] == "layered" and rep["decode_precision"]["exhaustive"]


def test_measured_plan_continues_exactly_from_a_checkpoint():
    true = np.array([1, 1, 1, 1, 2, 2, 4, 4], dtype=float)

    def step(sch, r, speeds):
        tasks = sch.tasks(r)
        loads = sch.worker_loads(r)
        arrived = frozenset(range(8)) if sch.measuring(r) else frozenset(range(8)) - {r % 8}
        sch.close_round(r, arrived)
        dec = sorted((k.worker, round(c, 12)) for k, c in sch.decode(r).items())
        rec = sch.observe_times(r, {w: loads[w] / speeds[w] for w in arrived})
        return tasks, dec, rec

    a = GCHetero(8, 1)
    for r in range(5):
        step(a, r, true)
    assert a.epoch == 1
    b = GCHetero(8, 1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # plain values: what a checkpoint holds
    drifted = true.copy()
    drifted[7] = 1.0
    for r in range(5, 14):
        assert step(a, r, drifted) == step(b, r, drifted), r
    assert a.epoch == b.epoch >= 2 and a.report() == b.report()
