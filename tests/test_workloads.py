"""Workloads resolve by name or module:function, deterministically; batches and parts are deterministic."""

import numpy as np
import pytest
import torch

from dcoord.workloads import batch_indices, load, split_parts
from dcoord.workloads.base import WorkloadError


@pytest.mark.parametrize("name", ["linreg-synthetic", "logreg-digits", "mlp-digits"])
def test_builtins_are_deterministic_in_the_seed(name):
    a, b, c = load(name, 3), load(name, 3), load(name, 4)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    pa = torch.cat([p.reshape(-1) for p in a.model.parameters()])
    pb = torch.cat([p.reshape(-1) for p in b.model.parameters()])
    pc = torch.cat([p.reshape(-1) for p in c.model.parameters()])
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    loss = a.loss_fn(a.model(a.X), a.y)
    assert torch.isfinite(loss)


def test_user_workload_by_module_function():
    wl = load("fixtures.user_workload:make", 0)
    assert wl.name == "user" and wl.num_samples == 64


@pytest.mark.parametrize("name,pattern", [
    ("nope", "unknown name"),
    ("no_such_module_xyz:make", "cannot import"),
    ("fixtures.user_workload:missing", "has no function"),
    ("fixtures.user_workload:not_a_workload", "must return"),
])
def test_bad_workload_names(name, pattern):
    with pytest.raises(WorkloadError, match=pattern):
        load(name, 0)


def test_batches_and_parts_are_deterministic_and_cover_the_batch():
    full = batch_indices(100, None, 7, seed=1)
    assert np.array_equal(full, np.arange(100))
    b1, b2 = batch_indices(100, 30, 4, seed=1), batch_indices(100, 30, 4, seed=1)
    assert np.array_equal(b1, b2) and len(b1) == 30 and len(set(b1.tolist())) == 30
    # consecutive batches of one epoch are disjoint
    epoch = np.concatenate([batch_indices(100, 30, j, seed=1) for j in range(3)])
    assert len(set(epoch.tolist())) == 90
    fr = np.array([0.5, 0.25, 0.125, 0.125])
    parts = split_parts(b1, fr)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == 30 and np.all(np.abs(sizes - fr * 30) <= 1)
    assert np.array_equal(np.concatenate(parts), b1)
