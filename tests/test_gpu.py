"""GPU workers (`--device cuda`): same results as on the CPU, payloads through pinned host memory.

Skipped where torch sees no CUDA device; bench/gpu_check.sh runs this file on a GPU machine.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.dataset_workload import make
from reference import max_rel_diff

from dcoord.config import load_config
from dcoord.runtime.worker.compute import TaskComputer
from dcoord.workloads import load

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _pair(wl_fn, fractions, batch_size, **kw):
    cpu = TaskComputer(wl_fn(), fractions, batch_size, 0, device="cpu", **kw)
    gpu = TaskComputer(wl_fn(), fractions, batch_size, 0, device="cuda", **kw)
    return cpu, gpu


def test_gpu_coded_payload_matches_cpu():
    cpu, gpu = _pair(lambda: make(0), np.full(4, 0.25), 48)
    for job in range(3):
        a, la = cpu.coded(job, [0, 2], [1.5, -0.5])
        t, lb = gpu.coded_device(job, [0, 2], [1.5, -0.5])
        assert t.is_cuda
        (b,) = gpu.to_host([t])
        assert gpu._pinned is not None and gpu._pinned.is_pinned()
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        assert la.keys() == lb.keys()


def test_gpu_resnet_gradient_matches_cpu():
    torch.backends.cudnn.allow_tf32 = False
    args = {"width": 8, "samples": 64, "test_samples": 8}
    cpu, gpu = _pair(lambda: load("resnet18-cifar", 0, args), np.full(2, 0.5), None)
    a, _ = cpu.coded(0, [0, 1], [1.0, 1.0])
    b, _ = gpu.coded(0, [0, 1], [1.0, 1.0])
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-4


def test_gpu_private_part_message_matches_cpu():
    """Per-sample clipped gradients (DP) computed on the GPU equal the CPU's (noise off: trust coordinator)."""
    from dcoord.runtime.worker.private import WorkerPrivacy

    cfg = load_config(None, data={"workload": "fixtures.dataset_workload:make", "workers": 4,
                                  "coding": {"scheme": "gc-cyclic", "stragglers": 1},
                                  "privacy": {"mechanism": "dp-gd", "noise_multiplier": 1.0,
                                              "trust": "coordinator", "clip": 1.0}})
    wl = make(0)
    priv = WorkerPrivacy(cfg, wl, 4)
    fr = cfg.make_scheme().part_fractions()
    cpu = TaskComputer(make(0), fr, None, 0, device="cpu", privacy=priv)
    gpu = TaskComputer(make(0), fr, None, 0, device="cuda", privacy=priv)
    from dcoord.runtime.tensors import flat_params
    params = flat_params(cpu.model)
    a, _ = cpu.coded(0, [0, 1], [1.0, 1.0], params=params)
    b, _ = gpu.coded(0, [0, 1], [1.0, 1.0], params=params)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_gpu_workers_run_equals_plain_torch(tmp_path, monkeypatch):
    """`dcoord run` with workers on the GPU (device auto -> cuda) gives the CPU reference model."""
    from test_dataset_workloads import _reference

    from dcoord.runtime.local import run_local

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cfg = load_config(None, data={
        "workload": "fixtures.dataset_workload:make", "workers": 4, "rounds": 8, "batch_size": 48,
        "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
        "inject": {"model": "fixed", "workers": [2], "slowdown": 5}, "runtime": {"progress": False}})
    run_local(cfg, tmp_path, progress=False)
    assert "cuda" in (tmp_path / "workers" / "worker-0.log").read_text()
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), _reference(cfg, 8, 0.5)) < 1e-4
