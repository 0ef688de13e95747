"""privacy.neighbouring: add/remove (sensitivity C/N) vs replace-one (2C/N, the DIFF2 paper's), checked against
the sensitivity measured on data and against Google's dp-accounting as an independent accountant."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from dcoord.config import ConfigError, load_config
from dcoord.privacy import GradientEstimator, PrivacyConfig, PrivateGD, clipped_sum, plan
from dcoord.privacy.accounting import RDP_ORDERS, AccountingError, restart_count, sensitivity_factor

N, R, DELTA = 200, 60, 1e-5


def _dp_accounting_eps(history: list[tuple[float, int]], delta: float) -> float:
    """epsilon of Gaussian releases (multiplier = std / sensitivity, `steps` times each) by dp-accounting."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant(orders=list(RDP_ORDERS))
    acc.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), s) for z, s in history if s]
        )
    )
    return acc.get_epsilon(delta)


def test_default_is_add_remove_and_bad_value_is_one_clear_line():
    assert PrivacyConfig(epsilon=1.0, clip=1.0).neighbouring == "add-remove"
    with pytest.raises(ValidationError, match="neighbouring"):
        PrivacyConfig(epsilon=1.0, clip=1.0, neighbouring="swap")
    with pytest.raises(AccountingError, match="privacy.neighbouring must be"):
        sensitivity_factor("swap")
    data = {"name": "x", "workload": "linreg-synthetic", "rounds": 5,
            "privacy": {"epsilon": 1.0, "clip": 1.0, "neighbouring": "swap"}}
    with pytest.raises(ConfigError) as e:
        load_config(None, data=data)
    msg = str(e.value)
    assert "privacy.neighbouring" in msg and "replace-one" in msg and "\n" not in msg


def test_replace_one_sensitivity_is_twice_add_remove_on_data():
    """Measured: the clipped mean moves by <= C/N when a sample is removed, and by exactly 2C/N when one
    sample is replaced by one whose clipped gradient points the other way: the noise is scaled to that."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    X = torch.randn(N, 3, dtype=torch.float64)
    y = torch.randn(N, 1, dtype=torch.float64)
    C, loss = 0.5, nn.functional.mse_loss
    full = clipped_sum(model, loss, X, y, C) / N
    removed = clipped_sum(model, loss, X[1:], y[1:], C) / N  # N treated as public
    assert float((full - removed).norm()) <= C / N + 1e-12
    pred0 = model(X[:1]).detach()
    y_up, y_down = y.clone(), y.clone()
    y_up[0], y_down[0] = pred0 + 1e3, pred0 - 1e3  # residuals of opposite sign: opposite clipped gradients
    up = clipped_sum(model, loss, X, y_up, C) / N
    down = clipped_sum(model, loss, X, y_down, C) / N
    assert float((up - down).norm()) == pytest.approx(2 * C / N, rel=1e-9)
    assert float((up - full).norm()) <= 2 * C / N + 1e-12


@pytest.mark.parametrize("trust", ["coordinator", "workers"])
def test_replace_one_doubles_every_std_and_keeps_the_multiplier(trust):
    kw = dict(mechanism="diff2", epsilon=3.0, delta=DELTA, clip=2.0, clip_diff=10.0, restart_every=6, trust=trust)
    add = PrivateGD.from_config(PrivacyConfig(**kw), rounds=R, n_samples=N, num_partitions=10)
    rep = PrivateGD.from_config(PrivacyConfig(**kw, neighbouring="replace-one"), rounds=R, n_samples=N,
                                num_partitions=10)
    assert rep.noise_multiplier == add.noise_multiplier and rep.noise_multiplier_diff == add.noise_multiplier_diff
    for t in (0, 1, 6, 7):
        a, r = add.round_spec(t, 0.3), rep.round_spec(t, 0.3)
        assert r.clip == a.clip
        for f in ("partition_std", "aggregate_std", "coordinator_std"):
            assert getattr(r, f) == pytest.approx(2 * getattr(a, f))
    p_add, p_rep = (plan(PrivacyConfig(**kw, neighbouring=nb), R, N, 10) for nb in ("add-remove", "replace-one"))
    assert p_rep["epsilon"] == pytest.approx(p_add["epsilon"]) and p_rep["epsilon"] <= 3.0
    assert "2C/N" in p_rep["neighbouring"] and "C/N" in p_add["neighbouring"]
    assert p_rep["noise_std_aggregate"] == pytest.approx(2 * p_add["noise_std_aggregate"])
    assert p_rep["noise_std_diff_aggregate_per_C2"] == pytest.approx(2 * p_add["noise_std_diff_aggregate_per_C2"])


@pytest.mark.parametrize("mechanism,T", [("dp-gd", 1), ("diff2", 6), ("diff2", 20)])
@pytest.mark.parametrize("eps", [3.0, 5.0])
def test_replace_one_accounting_matches_dp_accounting(mechanism, T, eps):
    """The paper's setting (replace-one, one noise draw on the aggregate): the std the coordinator actually
    adds, divided by the replace-one sensitivity 2C/N (2 C2_t / N on differences), is fed to dp-accounting as
    the Gaussian multiplier of each round; the composition must cost the target epsilon."""
    cfg = PrivacyConfig(mechanism=mechanism, epsilon=eps, delta=DELTA, clip=3.0, trust="coordinator",
                        neighbouring="replace-one", restart_every=T if mechanism == "diff2" else None,
                        clip_diff=30.0 if mechanism == "diff2" else None)
    mech = PrivateGD.from_config(cfg, rounds=R, n_samples=N)
    steps = 0.05
    counts: dict[float, int] = {}
    for t in range(R):
        s = mech.round_spec(t, steps)
        assert s.partition_std == 0 and s.coordinator_std == s.aggregate_std > 0  # one draw, on the aggregate
        z_eff = s.coordinator_std / (2 * s.clip / N)
        counts[round(z_eff, 9)] = counts.get(round(z_eff, 9), 0) + 1
    n_restart = restart_count(R, T)
    assert sorted(counts.values()) == sorted(c for c in (n_restart, R - n_restart) if c)
    ref = _dp_accounting_eps(list(counts.items()), DELTA)
    assert ref == pytest.approx(eps, rel=0.01)
    # the same std judged as add/remove noise would be a different (smaller-epsilon) mechanism: the relation
    # matters, so a wrongly doubled or missing factor would fail the line above
    assert _dp_accounting_eps([(2 * z, c) for z, c in counts.items()], DELTA) < 0.7 * eps


def test_coordinator_adds_the_replace_one_noise_once():
    cfg = PrivacyConfig(mechanism="dp-gd", noise_multiplier=1.5, clip=1.0, trust="coordinator",
                        coordinator_seed=3, neighbouring="replace-one")
    mech = PrivateGD.from_config(cfg, rounds=5, n_samples=50, num_partitions=5)
    est = GradientEstimator(mech)
    d = 20_000
    v = est.update(0, torch.zeros(d, dtype=torch.float64), seed=3)
    assert float(v.std()) == pytest.approx(1.5 * 2 * 1.0 / 50, rel=0.03)
    assert math.isclose(mech.round_spec(0).coordinator_std, 1.5 * 2 / 50)
