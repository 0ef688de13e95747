"""docs/extending.md is true: a scheme registered from a test module runs in the simulator and
in a real ``dcoord run`` (subprocesses over loopback), with no edit inside dcoord."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dcoord.coding.registry import make_scheme, scheme_names
from dcoord.config import load_config
from dcoord.sim import SimulateConfig, make_delay_source, simulate
from dcoord.workloads import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def toy_registered():
    """Register toy-uncoded for this module's tests only: the registry is process-wide, and a scheme left in it
    would join every later test's default scheme set (the tuner's, the plots')."""
    import importlib

    from dcoord.coding import base

    before = dict(base._REGISTERED)
    sys.modules.pop("toy_scheme", None)
    importlib.import_module("toy_scheme")
    yield
    base._REGISTERED.clear()
    base._REGISTERED.update(before)
    sys.modules.pop("toy_scheme", None)


def test_registered_scheme_is_allowed_by_the_config_and_simulated():
    assert "toy-uncoded" in scheme_names()
    cfg = load_config(None, data={"workers": 5, "coding": {"scheme": "toy-uncoded"}, "plugins": ["toy_scheme"]})
    assert cfg.make_scheme().name == "toy-uncoded"
    sim = SimulateConfig(jobs=12)
    source = make_delay_source(5, sim, None, 3)
    toy = simulate(make_scheme("toy-uncoded", 5, jobs=12), source, sim)
    ref = simulate(make_scheme("uncoded", 5, jobs=12), source, sim)
    # same tasks, same waiting rule: the same virtual runtime as the built-in uncoded scheme
    assert toy.runtime_s == ref.runtime_s and toy.load == ref.load


@pytest.mark.slow
def test_registered_scheme_trains_in_dcoord_run(tmp_path):
    job = {"name": "toy", "plugins": ["toy_scheme"], "workload": "logreg-digits", "workers": 3, "rounds": 4,
           "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "toy-uncoded"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    p = subprocess.run([sys.executable, "-m", "dcoord", "run", str(path), "--out", str(tmp_path / "run"),
                        "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["scheme"] == "toy-uncoded" and summary["rounds_completed"] == 4
    # full-batch GD by hand, 4 steps: the run must land on the same loss (decoding is a plain sum)
    wl = load("logreg-digits", 0)
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.5)
    for _ in range(4):
        opt.zero_grad()
        wl.loss_fn(wl.model(wl.X), wl.y).backward()
        opt.step()
    with torch.no_grad():
        expected = float(wl.loss_fn(wl.model(wl.X), wl.y))
    np.testing.assert_allclose(summary["final_loss"], expected, rtol=1e-4)
