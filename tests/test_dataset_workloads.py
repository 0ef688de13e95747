"""Dataset-based workloads: fixed partitions, per-partition mini-batches, lazy reads, exact coded runs."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.dataset_workload import make
from reference import dataset_batch, max_rel_diff

from dcoord.config import load_config
from dcoord.errors import ConfigError
from dcoord.runtime.local import run_local
from dcoord.runtime.worker.compute import TaskComputer
from dcoord.workloads import load
from dcoord.workloads.base import WorkloadError
from dcoord.workloads.batching import dataset_job_parts, partition_indices
from dcoord.workloads.cifar import Cifar10

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_partitions_are_disjoint_and_batches_deterministic():
    fr = np.full(4, 0.25)
    parts = partition_indices(240, fr, seed=3)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(240))
    assert np.array_equal(np.concatenate(partition_indices(240, fr, seed=3)), allidx)
    a, n = dataset_job_parts(parts, fr, 64, job=5, seed=3)
    b, _ = dataset_job_parts(parts, fr, 64, job=5, seed=3)
    assert n == 64 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(set(x.tolist()) <= set(p.tolist()) for x, p in zip(a, parts))  # each inside its partition
    # one epoch of a partition: consecutive jobs read disjoint samples
    seen = [set(dataset_job_parts(parts, fr, 64, job=j, seed=3)[0][0].tolist()) for j in range(3)]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])
    full, n_full = dataset_job_parts(parts, fr, None, job=7, seed=3)
    assert n_full == 240 and all(np.array_equal(x, p) for x, p in zip(full, parts))


def test_a_worker_reads_only_its_partitions():
    """gc-cyclic, 4 workers, s=1: worker 0 computes parts {0, 1}; it never reads another part's sample."""
    cfg = load_config(None, data={"workload": "fixtures.dataset_workload:make", "workers": 4, "batch_size": 48,
                                  "coding": {"scheme": "gc-cyclic", "stragglers": 1}})
    scheme = cfg.make_scheme()
    wl = make(0)
    comp = TaskComputer(wl, scheme.part_fractions(), cfg.batch_size, cfg.seed)
    mine: set[int] = set()
    for r in range(6):
        for t in scheme.tasks(r)[0]:
            comp.coded(t.job, list(t.parts), list(t.coeffs))
            for j in t.parts:
                mine |= set(comp.partitions[j].tolist())
    assert wl.dataset.read and wl.dataset.read <= mine
    assert len(mine) < wl.num_samples


def _reference(cfg, rounds: int, lr: float) -> dict:
    """Plain single-process torch: SGD on the same mini-batch, picked by the documented rule (reference.py)."""
    wl = make(cfg.seed)
    model = wl.model
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    fr = cfg.make_scheme().part_fractions()
    for r in range(rounds):
        idx = dataset_batch(wl.num_samples, fr, cfg.batch_size, r, cfg.seed)
        xs, ys = zip(*(wl.dataset[int(i)] for i in idx))
        opt.zero_grad()
        wl.loss_fn(model(torch.stack(xs)), torch.tensor(ys)).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [48, None])
def test_dataset_workload_gc_cyclic_with_straggler_equals_plain_torch(tmp_path, monkeypatch, batch_size):
    reads = tmp_path / "reads"
    reads.mkdir()
    monkeypatch.setenv("DCOORD_TEST_READS_DIR", str(reads))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    rounds, lr = 12, 0.5
    cfg = load_config(None, data={
        "workload": "fixtures.dataset_workload:make", "workers": 4, "rounds": rounds, "batch_size": batch_size,
        "optimizer": {"name": "sgd", "lr": lr}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
        "inject": {"model": "fixed", "workers": [2], "slowdown": 20}, "runtime": {"progress": False}})
    pids = {}
    summary = run_local(cfg, tmp_path / "run", progress=False,
                        on_started=lambda c, procs, a: pids.update({p.pid: i for i, p in enumerate(procs)}))
    assert summary["rounds_completed"] == rounds
    model = torch.load(tmp_path / "run" / "model.pt")
    assert max_rel_diff(model, _reference(cfg, rounds, lr)) < 1e-5
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(2 in r["stragglers"] for r in recs)  # the slow worker was decoded around
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert set(recs[0]["coordinator_cpu_s"]) == {"receive", "decode", "step", "send", "control"}
    # each worker process read only samples of the parts it was assigned
    scheme = cfg.make_scheme()
    parts = partition_indices(240, scheme.part_fractions(), cfg.seed)
    seen_workers = set()
    for f in reads.glob("reads-*.txt"):
        pid = int(f.stem.split("-")[1])
        if pid not in pids:
            continue  # the coordinator's evaluation reads (its own fixed subset)
        w = pids[pid]
        seen_workers.add(w)
        allowed = set().union(*(set(parts[j].tolist()) for t in scheme.tasks(0)[w] for j in t.parts))
        read = {int(x) for x in f.read_text().split()}
        assert read <= allowed and len(allowed) < 240
    assert seen_workers == {0, 1, 2, 3}


def test_workload_args_are_validated():
    base = {"workload": "resnet18-cifar"}
    with pytest.raises(ConfigError, match=r"workload_args: resnet18-cifar takes no argument 'colour'"):
        load_config(None, data={**base, "workload_args": {"colour": 1}})
    with pytest.raises(ConfigError, match=r"workload_args.data: .* is not a directory"):
        load_config(None, data={**base, "workload_args": {"data": "/nonexistent/cifar"}})
    with pytest.raises(ConfigError, match=r"workload_args.width: give a positive integer"):
        load_config(None, data={**base, "workload_args": {"width": 0}})
    with pytest.raises(ConfigError, match=r"workload_args.d_model: 30 must be a multiple of heads"):
        load_config(None, data={"workload": "gpt-char", "workload_args": {"d_model": 30, "heads": 4}})
    with pytest.raises(WorkloadError, match=r"takes no argument 'bogus'"):
        load("fixtures.dataset_workload:make", 0, {"bogus": 1})
    assert load("fixtures.dataset_workload:make", 0, {"n": 50}).num_samples == 50
    with pytest.raises(WorkloadError, match=r"workload_args.width: give a positive integer"):
        load("resnet18-cifar", 0, {"width": 0})  # the registry's value check runs on load too


def _fake_cifar(root: Path, per_file: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_file, b"label_names": [b"c"] * 10}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, per_file).tolist()}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)


def test_cifar_pickle_reader_is_lazy(tmp_path):
    _fake_cifar(tmp_path / "cifar")
    ds = Cifar10(tmp_path / "cifar")
    assert len(ds) == 100 and not ds.files_read
    x, y = ds[45]  # in data_batch_3
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    assert ds.files_read == {2}
    wl = load("resnet18-cifar", 0, {"data": str(tmp_path / "cifar"), "width": 8})
    assert wl.num_samples == 100 and len(wl.test_dataset) == 20
    cfg = load_config(None, data={"workload": "resnet18-cifar", "workload_args": {"data": str(tmp_path / "cifar")}})
    assert cfg.workload_args["data"].endswith("cifar")
