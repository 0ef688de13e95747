"""Injected straggler models: validation, semantics, reproducibility and call-order independence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED
from pydantic import ValidationError

from dcoord.stragglers import (
    GilbertElliottStragglers,
    InjectConfig,
    TraceStragglers,
    load_trace_csv,
    make_straggler_model,
)

TRACES = SHARED / "traces"  # ../shared beside the repo, or DCOORD_SHARED

CONFIGS = {
    "none": {},
    "fixed": {"workers": [1, 3], "slowdown": 3.0},
    "bernoulli": {"p": 0.3, "slowdown": 4.0},
    "gilbert-elliott": {"p_good_to_bad": 0.1, "p_bad_to_good": 0.4, "slowdown": 5.0},
    "shifted-exponential": {"shift": 0.2, "rate": 2.0},
    "pareto": {"shape": 2.5, "scale": 0.1},
}


def model(name: str, n: int = 8, seed: int = 7, **extra):
    return make_straggler_model(InjectConfig(model=name, **{**CONFIGS.get(name, {}), **extra}), n, seed)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reproducible_and_order_independent(name):
    compute = np.linspace(0.5, 1.2, 8)
    rounds = list(range(0, 300, 7)) + [1000, 3, 64, 65, 128]
    seq = {r: model(name).extra_delay(r, compute) for r in sorted(rounds)}
    m = model(name)
    rng = np.random.default_rng(0)
    for r in rng.permutation(rounds).tolist():  # random order, one object
        assert np.array_equal(m.extra_delay(r, compute), seq[r])
    again = model(name)
    for r in reversed(sorted(rounds)):  # backwards, fresh object
        assert np.array_equal(again.extra_delay(r, compute), seq[r])
    assert np.allclose(m.times(7, compute), compute + seq[7])
    for r in rounds:
        assert np.all(seq[r] >= 0)


@pytest.mark.parametrize("name", ["bernoulli", "gilbert-elliott", "shifted-exponential", "pareto"])
def test_seed_matters_and_per_worker_value_does_not_depend_on_n_of_queries(name):
    compute = np.ones(8)
    a = np.array([model(name, seed=1).extra_delay(r, compute) for r in range(40)])
    b = np.array([model(name, seed=2).extra_delay(r, compute) for r in range(40)])
    assert not np.array_equal(a, b)
    # InjectConfig.seed overrides the job seed
    c = make_straggler_model(InjectConfig(model=name, seed=1, **CONFIGS[name]), 8, seed=99)
    assert np.array_equal(np.array([c.extra_delay(r, compute) for r in range(40)]), a)


def test_none_and_fixed():
    c = np.array([1.0, 2.0, 0.5, 4.0])
    assert np.array_equal(model("none", 4).extra_delay(3, c), np.zeros(4))
    f = model("fixed", 4)
    assert np.allclose(f.extra_delay(0, c), [0.0, 4.0, 0.0, 8.0])  # (3 - 1) * compute on workers 1 and 3
    assert np.allclose(f.times(9, c), [1.0, 6.0, 0.5, 12.0])


def test_bernoulli_frequency_and_extremes():
    c = np.ones(200)
    b = model("bernoulli", 200, p=0.25, slowdown=2.0)
    slow = np.array([b.extra_delay(r, c) > 0 for r in range(200)])
    assert abs(slow.mean() - 0.25) < 0.02
    assert set(np.unique(b.extra_delay(0, c))) <= {0.0, 1.0}
    assert not model("bernoulli", 50, p=0.0).extra_delay(4, np.ones(50)).any()
    assert np.allclose(model("bernoulli", 50, p=1.0, slowdown=3.0).extra_delay(4, np.ones(50)), 2.0)


def test_gilbert_elliott_is_bursty_with_the_stationary_fraction():
    ge = GilbertElliottStragglers(400, 0.05, 0.25, 2.0, seed=3)
    bad = np.array([ge.bad(r) for r in range(400)])
    assert abs(bad.mean() - 0.05 / 0.30) < 0.02
    stay = (bad[1:] & bad[:-1]).sum() / bad[:-1].sum()
    assert abs(stay - 0.75) < 0.03  # P(bad -> bad) = 1 - p_bad_to_good
    enter = (bad[1:] & ~bad[:-1]).sum() / (~bad[:-1]).sum()
    assert abs(enter - 0.05) < 0.01


def test_shifted_exponential_and_pareto_distributions():
    c = np.ones(1000)
    se = model("shifted-exponential", 1000, shift=0.3, rate=4.0)
    x = np.concatenate([se.extra_delay(r, c) for r in range(20)])
    assert x.min() >= 0.3 and abs(x.mean() - (0.3 + 0.25)) < 0.01
    pa = model("pareto", 1000, shape=3.0, scale=0.5)
    y = np.concatenate([pa.extra_delay(r, c) for r in range(20)])
    assert y.min() >= 0.0
    assert abs(np.median(y) - 0.5 * (2 ** (1 / 3) - 1)) < 0.01  # Lomax median


def test_trace_replay_scales_and_wraps(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("1,2,3\n4,5,6\n")
    t = make_straggler_model(InjectConfig(model="trace", path=p, scale=0.5), 2, 0)
    assert np.allclose(t.extra_delay(0, np.zeros(2)), [0.5, 1.0])
    assert np.allclose(t.extra_delay(3, np.zeros(2)), [2.0, 2.5])  # round 3 -> row 1
    assert np.allclose(t.times(2, np.ones(2)), [1.5, 2.0])
    with pytest.raises(ValueError, match="3 columns .* 4 workers"):
        make_straggler_model(InjectConfig(model="trace", path=p), 4, 0)


def test_real_trace_loads():
    f = TRACES / "sam-gc-cnn_profile_est-mbp__w256-n10-l0_000-b256-cno_forloop-London.csv"
    d = load_trace_csv(f)
    assert d.shape == (10, 256) and np.all(d > 0)
    t = TraceStragglers(256, d, scale=2.0)
    assert np.allclose(t.extra_delay(12, np.zeros(256)), 2.0 * d[2])


@pytest.mark.parametrize("text, words", [
    ("1,2\n3,x\n", ["row 2", "non-numeric", "'x'"]),
    ("1,2\n3,-4\n", ["row 2", ">= 0"]),
    ("1,2\n3\n", ["row 2", "1 columns, expected 2"]),
    ("1,nan\n", ["row 1", "finite"]),
    ("\n\n", ["no rows"]),
])
def test_bad_trace_files_name_file_and_row(tmp_path, text, words):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError) as exc:
        load_trace_csv(p)
    assert "bad.csv" in str(exc.value)
    for w in words:
        assert w in str(exc.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(ValueError, match="nope.csv not found"):
        make_straggler_model(InjectConfig(model="trace", path=tmp_path / "nope.csv"), 4, 0)


@pytest.mark.parametrize("cfg, words", [
    ({"model": "bernoulli", "p": 1.5}, ["inject.p must be in [0, 1]"]),
    ({"model": "bernoulli"}, ["inject.p is required", "bernoulli"]),
    ({"model": "gilbert-elliott", "p_good_to_bad": 0.1}, ["inject.p_bad_to_good is required"]),
    ({"model": "gilbert-elliott", "p_good_to_bad": -0.1, "p_bad_to_good": 0.5}, ["inject.p_good_to_bad"]),
    ({"model": "fixed", "slowdown": 0.5, "workers": [0]}, ["inject.slowdown must be", ">= 1"]),
    ({"model": "fixed"}, ["inject.workers is required"]),
    ({"model": "fixed", "workers": [-1]}, ["inject.workers must be worker ids >= 0"]),
    ({"model": "shifted-exponential", "rate": 0}, ["inject.rate must be > 0"]),
    ({"model": "shifted-exponential", "rate": 1, "shift": -1}, ["inject.shift"]),
    ({"model": "pareto", "shape": 2, "scale": -1}, ["inject.scale must be > 0"]),
    ({"model": "trace"}, ["inject.path is required"]),
    ({"model": "bernouli", "p": 0.1}, ["model"]),
    ({"model": "bernoulli", "p": 0.1, "prob": 0.2}, ["prob", "Extra inputs"]),
])
def test_inject_config_errors(cfg, words):
    with pytest.raises(ValidationError) as exc:
        InjectConfig(**cfg)
    for w in words:
        assert w in str(exc.value)


def test_fixed_worker_out_of_range():
    with pytest.raises(ValueError, match=r"inject.workers \[4\] out of range: there are 4 workers"):
        make_straggler_model(InjectConfig(model="fixed", workers=[0, 4], slowdown=2), 4, 0)
