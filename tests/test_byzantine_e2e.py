"""coding.byzantine end to end: real worker processes, some lying (DCOORD_TEST_LIE, test only), with
injected stragglers. The final model equals the unattacked run's, every liar is identified in the first round
it lies, no honest worker is accused, and more liars in one group than tolerated stop the run with a
checkpoint (which --resume continues, offences and exclusions kept)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dcoord.config import load_config
from dcoord.errors import RunFailed
from dcoord.runtime.local import run_local
from dcoord.runtime.store.checkpoint import load_latest

pytestmark = pytest.mark.slow

# 8 workers, gc-fr with a = 1 liar and s = 1 straggler per round: two groups of 2a+s+1 = 4 replicas,
# {0,1,2,3} and {4,5,6,7}. Workers 2, 5 and 6 are slow every round (their results come late, and are still
# checked). Worker 4 is then the first of its group on time: the payload liar sits there, so its payload is
# the one used (a liar with an honest digest is caught when its payload is used, see docs/byzantine.md).
ROUNDS = 1000  # the clean run: nobody honest is accused over 1,000 rounds with stragglers
ATTACK_ROUNDS = 60  # attacked runs: each liar lies by round 3 and is excluded at once; 60 rounds then compare
BASE = {
    "name": "byz", "workload": "logreg-digits", "seed": 0, "workers": 8, "rounds": ROUNDS, "batch_size": 256,
    "optimizer": {"name": "sgd", "lr": 0.5},
    "coding": {"scheme": "gc-fr", "stragglers": 1, "byzantine": 1},
    "inject": {"model": "fixed", "workers": [2, 5, 6], "slowdown": 10},
    "runtime": {"progress": False, "emulate_job_s": 0.002, "checkpoint_every": 0},
}


def _run(tmp_path, monkeypatch, name: str, lies: str, **over):
    monkeypatch.setenv("DCOORD_TEST_LIE", lies)
    out = tmp_path / name
    summary = run_local(load_config(None, data={**BASE, **over}), out, progress=False)
    return out, summary


def _lied(out, worker: int) -> list[int]:
    """The rounds ``worker`` lied in, from its own log (the test liar says so)."""
    text = (out / "workers" / f"worker-{worker}.log").read_text()
    return [int(r) for r in re.findall(rf"test liar: worker {worker} lies in round (\d+)", text)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The unattacked run: 1,000 rounds with stragglers; nobody is accused."""
    mp = pytest.MonkeyPatch()
    try:
        out, summary = _run(tmp_path_factory.mktemp("byz"), mp, "clean", "")
    finally:
        mp.undo()
    return out, summary


@pytest.fixture(scope="module")
def clean_short(tmp_path_factory):
    """The unattacked run the attacked ones are compared with, as long as they are."""
    mp = pytest.MonkeyPatch()
    try:
        out, summary = _run(tmp_path_factory.mktemp("byz"), mp, "clean", "", rounds=ATTACK_ROUNDS)
    finally:
        mp.undo()
    return out, summary


def test_clean_run_with_stragglers_accuses_nobody(clean):
    out, summary = clean
    assert summary["rounds_completed"] == ROUNDS
    assert summary["byzantine"]["offences"] == {} and summary["byzantine"]["excluded"] == []
    assert summary["byzantine"]["replication"] == 4
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r.get("event") == "offence"]
    assert sum(1 for r in records if r.get("stragglers")) > ROUNDS // 2  # the slow workers did straggle


@pytest.mark.parametrize("lies", [
    "1:alie,7:noise",            # a perturbation within the honest spread; Gaussian noise
    "3:constant,4:payload",      # a constant; an honest digest with a dishonest (-100x) payload
    "0:scaled:3,7:scaled:3",     # two colluding liars in different groups, -100x, every third round
])
def test_liars_are_caught_at_once_and_change_nothing(tmp_path, monkeypatch, clean_short, lies):
    out, summary = _run(tmp_path, monkeypatch, "attacked", lies, rounds=ATTACK_ROUNDS)
    assert summary["rounds_completed"] == ATTACK_ROUNDS
    assert clean_short[1]["byzantine"]["offences"] == {}
    ref = torch.load(clean_short[0] / "model.pt")
    got = torch.load(out / "model.pt")
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) <= 1e-6
    liars = sorted(int(item.split(":")[0]) for item in lies.split(","))
    byz = summary["byzantine"]
    assert sorted(int(w) for w in byz["offences"]) == liars  # nobody honest is accused
    assert byz["excluded"] == liars  # coding.exclude_after: 1
    for w in liars:
        lied = _lied(out, w)
        assert lied, f"worker {w} never lied"
        first = min(e["round"] for e in byz["events"] if e["worker"] == w)
        assert first == lied[0], f"worker {w} lied first in round {lied[0]}, was identified in round {first}"


def test_more_liars_than_tolerated_stop_with_a_checkpoint_and_resume(tmp_path, monkeypatch):
    """Group {0,1,2} of a = 1, s = 0 gets two liars with different lies in round 2: no value has a+1 = 2
    copies, so the run stops with one line and the checkpoint of round 1; worker 4 was caught lying in
    round 0 and excluded, and stays excluded when the run is resumed (without liars)."""
    data = {**BASE, "workers": 6, "rounds": 6, "coding": {"scheme": "gc-fr", "byzantine": 1},
            "inject": {"model": "none"}, "runtime": {"progress": False, "checkpoint_every": 1}}
    monkeypatch.setenv("DCOORD_TEST_LIE", "0:noise:3,1:constant:3,4:scaled")
    out = tmp_path / "run"
    with pytest.raises(RunFailed, match=r"round 2: the replicas of group 0 .* more than coding.byzantine = 1") as e:
        run_local(load_config(None, data=data), out, progress=False)
    assert "\n" not in str(e.value)
    state, _ = load_latest(out / "checkpoints")
    assert state["round"] == 1 and state["byzantine"]["excluded"] == [4]
    monkeypatch.delenv("DCOORD_TEST_LIE")
    summary = run_local(load_config(None, data=data), out, progress=False, mode="resume")
    assert summary["rounds_completed"] == 6
    assert summary["byzantine"]["offences"] == {"4": 1} and summary["byzantine"]["excluded"] == [4]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(4 in r["stragglers"] for r in records if "round" in r and "wall_s" in r and r["round"] >= 2)


def test_robust_aggregator_baseline_survives_a_liar_approximately(tmp_path, monkeypatch):
    """coding.aggregate: median over uncoded messages keeps training under a -100x liar (approximate: the
    summary says so); the exact decode of the same messages would be dragged to 0 accuracy."""
    data = {**BASE, "workers": 6, "rounds": 30, "batch_size": None,
            "coding": {"scheme": "uncoded", "aggregate": "median", "byzantine": 1},
            "inject": {"model": "none"}, "runtime": {"progress": False, "checkpoint_every": 0}}
    monkeypatch.setenv("DCOORD_TEST_LIE", "2:scaled")
    summary = run_local(load_config(None, data=data), tmp_path / "run", progress=False)
    assert summary["aggregate"] == "median" and summary["approximate"] is True
    assert summary["test_accuracy"][0] > 0.8
    assert "byzantine" not in summary  # nothing is checked or accused: the aggregator only dampens
