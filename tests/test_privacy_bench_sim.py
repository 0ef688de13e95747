"""bench/diff2_sim.py (the vectorised DIFF2/DP-GD sweep) computes what dcoord's privacy/ code computes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dcoord.privacy import GradientEstimator, PrivateGD, clipped_diff_sum, clipped_sum, flat_params
from dcoord.workloads import load
from dcoord.workloads.housing import housing_model

ROOT = Path(__file__).resolve().parents[1]


def _sim():
    spec = importlib.util.spec_from_file_location("diff2_sim", ROOT / "bench" / "diff2_sim.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["diff2_sim"] = mod
    spec.loader.exec_module(mod)
    return mod


def _data(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)


def test_housing_workload_has_the_papers_shape():
    wl = load("housing-mlp", 0)
    assert tuple(wl.X.shape) == (16_512, 8) and tuple(wl.X_test.shape) == (4_128, 8)
    assert wl.num_params() == 101
    assert torch.allclose(wl.X.mean(0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(wl.X.std(0), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("clip", [0.05, 0.5, 1e6])
def test_closed_form_clipped_sums_match_dcoord(clip):
    sim = _sim()
    X, y = _data()
    m0, m1 = housing_model(0).double(), housing_model(1).double()
    x0, x1 = flat_params(m0), flat_params(m1)
    xs = torch.stack([x1, x0])
    e, ea, dh, loss = sim.pieces(xs, X, y.reshape(-1))
    xx = (X * X).sum(1) + 1
    C = torch.full((2,), clip, dtype=torch.float64)
    got = sim.clipped_sum(e, ea, dh, X, xx, C)
    assert torch.allclose(got[0], clipped_sum(m0, F.mse_loss, X, y, clip, x1), atol=1e-10)
    assert torch.allclose(got[1], clipped_sum(m0, F.mse_loss, X, y, clip, x0), atol=1e-10)
    assert float(loss[1]) == pytest.approx(float(F.mse_loss(m0(X), y).detach()))
    diff = sim.clipped_sum(e[:, :1] - e[:, 1:], ea[:, :1] - ea[:, 1:], dh[:, :1] - dh[:, 1:], X, xx, C[:1])[0]
    assert torch.allclose(diff, clipped_diff_sum(m0, F.mse_loss, X, y, clip, x1, x0), atol=1e-10)
    if clip > 1e3:  # no clipping: the sum is N * the full gradient
        assert torch.allclose(sim.full_grad(e, ea, dh, X)[1] * X.shape[0], got[1], atol=1e-10)


def test_simulated_run_equals_dcoord_mechanism_step_by_step():
    """Noiseless DIFF2 (s1 = s2 = 0) with active clipping: the simulator's trajectory equals dcoord's
    PrivateGD + GradientEstimator driven by dcoord's clipped sums."""
    sim = _sim()
    X, y = _data(30, seed=3)
    model = housing_model(2).double()
    rounds, T, eta, C1, c2 = 9, 4, 0.3, 0.2, 3.0
    mech = PrivateGD(mechanism="diff2", clip=C1, noise_multiplier=0.0, n_samples=30, clip_diff=c2,
                     restart_every=T, noise_multiplier_diff=0.0, trust="workers")
    est = GradientEstimator(mech)
    x, prev = flat_params(model), None
    for t in range(rounds):
        spec = mech.round_spec(t, float((x - prev).norm()) if prev is not None else 0.0)
        if spec.kind == "restart":
            s = clipped_sum(model, F.mse_loss, X, y, spec.clip, x)
        else:
            s = clipped_diff_sum(model, F.mse_loss, X, y, spec.clip, x, prev)
        v = est.update(t, s / 30)
        prev, x = x, x - eta * v
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    batch = sim.Batch(one(eta), one(C1), one(c2), torch.tensor([T]), one(0.0), one(0.0))
    res = sim.simulate(batch, flat_params(model), X, y, X, y, rounds, seed=0, log_every=rounds)
    assert torch.allclose(res["x"][0], x, atol=1e-10)
    assert not bool(res["diverged"][0])


def test_noise_has_the_calibrated_std_and_divergence_is_reported():
    sim = _sim()
    X, y = _data(50, seed=4)
    x0 = flat_params(housing_model(0).double())
    B = 300
    f = lambda v: torch.full((B,), v, dtype=torch.float64)  # noqa: E731
    # one restart round with eta = 1: x_1 = x_0 - (clipped mean + noise), noise std = s1 * C1
    res = sim.simulate(sim.Batch(f(1.0), f(0.5), f(1.0), torch.ones(B, dtype=torch.long), f(0.2), f(0.0)),
                       x0, X, y, X, y, 1, seed=1, log_every=1)
    cm = clipped_sum(housing_model(0).double(), F.mse_loss, X, y, 0.5, x0) / 50
    noise = (x0 - res["x"]) - cm
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(noise.std()) == pytest.approx(0.2 * 0.5, rel=0.02)
    big = sim.Batch(f(1e4), f(100.0), f(1.0), torch.ones(B, dtype=torch.long), f(0.0), f(0.0))
    res = sim.simulate(big, x0, X, y, X, y, 60, seed=1, log_every=10, compact_every=10)
    assert bool(res["diverged"].all()) and torch.isinf(res["loss"]).all()


def test_housing_reads_a_local_copy_and_rejects_a_bad_one(tmp_path, monkeypatch):
    from dcoord.workloads.base import WorkloadError

    g = torch.Generator().manual_seed(0)
    arr = torch.randn(100, 9, generator=g, dtype=torch.float64).numpy()
    path = tmp_path / "housing.csv"
    path.write_text("a,b,c,d,e,f,g,h,target\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in arr))
    monkeypatch.setenv("DCOORD_CALIFORNIA_HOUSING", str(path))
    wl = load("housing-mlp", 0)
    assert tuple(wl.X.shape) == (80, 8) and tuple(wl.X_test.shape) == (20, 8) and "california-housing" in wl.name
    assert torch.allclose(wl.y.mean(), torch.zeros(()), atol=1e-5)  # standardised on the training split
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    monkeypatch.setenv("DCOORD_CALIFORNIA_HOUSING", str(bad))
    with pytest.raises(WorkloadError, match="expected 9 numeric columns"):
        load("housing-mlp", 0)
    monkeypatch.setenv("DCOORD_CALIFORNIA_HOUSING", str(tmp_path / "missing.csv"))
    with pytest.raises(WorkloadError, match="no such file"):
        load("housing-mlp", 0)


def test_poisson_weighted_clipped_sum_is_dcoords_sum_over_the_batch():
    """DP-SGD in the sweep: a 0/1 weight per sample and run gives dcoord's clipped sum over that batch."""
    sim = _sim()
    X, y = _data()
    m0 = housing_model(0).double()
    x0 = flat_params(m0)
    e, ea, dh, _ = sim.pieces(x0[None], X, y.reshape(-1))
    keep = torch.rand(X.shape[0], generator=torch.Generator().manual_seed(3)) < 0.3
    got = sim.clipped_sum(e, ea, dh, X, (X * X).sum(1) + 1, torch.tensor([0.5], dtype=torch.float64),
                          keep[:, None].double())[0]
    assert torch.allclose(got, clipped_sum(m0, F.mse_loss, X[keep], y[keep], 0.5, x0), atol=1e-10)
