"""Sequential gradient coding end to end: M models trained concurrently, each equal to its uncoded training."""

import json

import pytest
import torch
from reference import full_batch_gd, max_rel_diff

from dcoord.config import load_config
from dcoord.runtime.local import run_local

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("coding", [
    {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1},
    {"scheme": "sr-sgc", "B": 1, "W": 2, "lambda": 2},
    # the earliest close rule: rounds close with stragglers out as soon as the model allows, still exact
    {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1, "close": "earliest"},
    {"scheme": "sr-sgc", "B": 1, "W": 2, "lambda": 2, "close": "earliest"},
])
def test_sequential_codes_train_every_model_exactly(tmp_path, coding):
    lrs = [0.5, 0.25]
    data = {
        "name": "sgc", "workload": "logreg-digits", "workers": 4, "rounds": 16, "seed": 0,
        "optimizer": {"name": "sgd", "lr": lrs}, "coding": coding,
        # bursty stragglers: a worker turns 10x slow and stays slow for a few rounds
        "inject": {"model": "gilbert-elliott", "p_good_to_bad": 0.15, "p_bad_to_good": 0.5, "slowdown": 10},
        "runtime": {"progress": False, "emulate_part_s": 0.004},
    }
    cfg = load_config(None, data=data)
    scheme = cfg.make_scheme()
    assert scheme.models == 2 and scheme.delay == 1
    summary = run_local(cfg, tmp_path, progress=False)
    assert summary["rounds_completed"] == 16 + scheme.delay
    assert summary["stragglers_seen"] > 0
    states = torch.load(tmp_path / "model.pt")
    assert len(states) == 2
    for m, lr in enumerate(lrs):
        steps = len([j for j in range(16) if j % 2 == m])
        ref = full_batch_gd("logreg-digits", seed=0, rounds=steps, lr=lr)
        assert max_rel_diff(states[m], ref) < 1e-5, m
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    decoded = sorted(j["job"] for r in recs for j in r["jobs"])
    assert decoded == list(range(16))
    # every job decoded by its deadline (job t by the end of round t + T)
    for r in recs:
        for j in r["jobs"]:
            assert r["round"] <= j["job"] + scheme.delay
