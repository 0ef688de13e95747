"""Optimizers, mini-batches and the token step size against independent plain-torch references.

The references (tests/reference.py) share only data, model and loss with dcoord: batch selection, the
SGD-with-momentum / weight-decay and Adam updates and the token mode's beta_n * w_i weighting are written
out there from the documented rules. The fast tests pin each piece on its own; the slow ones compare a real
coded run with a slowed worker (worker processes over gRPC) with the reference after several rounds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import _Reference, dataset_batch, max_rel_diff, tensor_batch, token_sgd, train

from dcoord.config import load_config
from dcoord.runtime.coordinator.coordinator import make_optimizer
from dcoord.runtime.local import run_local
from dcoord.walk import build_walkers
from dcoord.workloads import batch_indices
from dcoord.workloads.batching import dataset_job_parts, partition_indices

OPTIMIZERS = {
    "sgd-momentum-wd": {"name": "sgd", "lr": 0.3, "momentum": 0.9, "weight_decay": 0.01},
    "adam-wd": {"name": "adam", "lr": 0.02, "weight_decay": 0.01},
}


# -- fast: each piece against its reference -----------------------------------------------------------------
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_coordinator_optimizer_steps_like_the_reference(opt):
    """Five steps of the coordinator's optimizer on fixed gradients equal the textbook update."""
    cfg = load_config(None, data={"workload": "logreg-digits", "optimizer": OPTIMIZERS[opt]})
    o = cfg.optimizer
    gen = torch.Generator().manual_seed(0)
    ours, ref = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ref.load_state_dict(ours.state_dict())
    step = make_optimizer(cfg, ours, 0)
    check = _Reference(list(ref.parameters()), o.name, o.lr, o.momentum, o.weight_decay)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in ours.parameters()]
        for p, q, g in zip(ours.parameters(), ref.parameters(), grads):
            p.grad, q.grad = g.clone(), g.clone()
        step.step()
        check.step()
    assert max_rel_diff(ours.state_dict(), ref.state_dict()) < 1e-6


@pytest.mark.parametrize("batch_size", [None, 100, 256])
def test_tensor_batches_follow_the_documented_rule(batch_size):
    for step in (0, 1, 6, 7, 20):
        assert np.array_equal(batch_indices(1797, batch_size, step, 3), tensor_batch(1797, batch_size, step, 3))


@pytest.mark.parametrize("batch_size", [None, 48])
def test_dataset_batches_follow_the_documented_rule(batch_size):
    fr = np.array([0.25, 0.25, 0.3, 0.2])
    parts = partition_indices(240, fr, seed=3)
    for step in (0, 1, 4, 5, 11):
        got = np.concatenate(dataset_job_parts(parts, fr, batch_size, step, seed=3)[0])
        assert np.array_equal(np.sort(got), np.sort(dataset_batch(240, fr, batch_size, step, seed=3)))


# -- slow: a real coded run with a slowed worker against the reference --------------------------------------
def _run(tmp_path, **over) -> tuple[dict, list[dict]]:
    data = {"name": "ref", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": 10,
            "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "inject": {"model": "fixed", "workers": [2], "slowdown": 20}, "runtime": {"progress": False}, **over}
    summary = run_local(load_config(None, data=data), tmp_path, progress=False)
    assert summary["rounds_completed"] == data["rounds"]
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return torch.load(tmp_path / "model.pt"), [r for r in recs if "event" not in r]


@pytest.mark.slow
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_coded_minibatch_run_equals_the_reference_optimizer(tmp_path, opt):
    model, recs = _run(tmp_path, batch_size=256, optimizer=OPTIMIZERS[opt])
    o = OPTIMIZERS[opt]
    ref = train("logreg-digits", 0, 10, o["lr"], name=o["name"], momentum=o.get("momentum", 0.0),
                weight_decay=o["weight_decay"], batch_size=256)
    assert max_rel_diff(model, ref) < 1e-5
    assert any(2 in r["stragglers"] for r in recs)  # the code decoded without the slowed worker


@pytest.mark.slow
def test_token_run_with_step_schedule_equals_the_reference(tmp_path):
    """SRRW with alpha 0 over SRW (the base chain: a non-uniform target, so importance weights are on), the
    beta_n schedule instead of a constant lr."""
    token = {"chain": "srrw", "base": "srw", "alpha": 0.0, "lr_scale": 2.0, "beta_exponent": 0.7, "tokens": 1,
             "graph": {"kind": "watts-strogatz", "k": 2, "p": 0.5, "seed": 4}}
    model, recs = _run(tmp_path, mode="token", workers=6, rounds=12, shards="label-skew", coding={},
                       optimizer={"name": "sgd", "lr": 1.0}, token=token,
                       inject={"model": "fixed", "workers": [3], "slowdown": 20})
    holders = [r["holders"][0] for r in recs]
    assert len(holders) == 12 and 3 in holders  # the walk reached the slowed worker and waited for it
    degree = build_walkers(load_config(None, data={"mode": "token", "workers": 6, "token": token}).token,
                           6, 0)[0].graph.degree
    ref = token_sgd("logreg-digits", 0, holders, 6, degree, lr_scale=2.0, beta_exponent=0.7)
    assert max_rel_diff(model, ref) < 1e-5
