"""Issue 16: gc-binary decodes as a plain sum for every (n, s); gc-cyclic's stable coefficients; payload dtypes."""

import itertools
import math

import numpy as np
import pytest

from dcoord.coding.gc import GCBinary, GCCyclic
from dcoord.coding.precision import Precision, measure, round_to
from dcoord.coding.registry import make_scheme
from dcoord.coding.stable import binary_groups, binary_load, cyclic_load
from dcoord.runtime.tensors import from_proto, round_payload
from dcoord.wire import to_proto


def _encode(scheme, grads):
    return {w: sum(c * grads[j] for j, c in zip(t[0].parts, t[0].coeffs)) for w, t in scheme.tasks(0).items()}


def _decode(scheme, msgs, arrived):
    assert scheme.accepts(0, frozenset(arrived))
    assert scheme.close_round(0, frozenset(arrived)) == [0]
    coeffs = scheme.decode(0)
    return coeffs, sum(c * msgs[ref.worker] for ref, c in coeffs.items())


def _check_binary(n, s, sets, rng):
    g = GCBinary(n, s)
    parts = g.num_parts()
    assert parts == n // (s + 1)
    grads = rng.standard_normal((parts, 5)).astype(np.float32)  # float32 "messages"
    msgs = _encode(g, grads)
    for t in g.tasks(0).values():  # 0/1 encoding: one part per worker
        assert t[0].coeffs == (1.0,) and len(t[0].parts) == 1
    for F in sets:
        coeffs, got = _decode(g, msgs, F)
        assert set(coeffs.values()) == {1.0}
        used = sorted(t.parts[0] for ref in coeffs for t in g.tasks(0)[ref.worker])
        assert used == list(range(parts)), (n, s, F)  # exactly one message per part: a plain sum
        np.testing.assert_array_equal(got, sum(grads[j] for j in range(parts)))


@pytest.mark.parametrize("n", range(1, 17))
@pytest.mark.slow
def test_gc_binary_every_survivor_set_small(n):
    rng = np.random.default_rng(n)
    for s in range(n):
        sets = [tuple(sorted(set(range(n)) - set(st))) for st in itertools.combinations(range(n), s)]
        _check_binary(n, s, sets, rng)


@pytest.mark.parametrize("n,s", [(17, 3), (33, 5), (50, 6), (64, 9), (100, 7), (129, 15), (255, 15), (256, 16),
                                 (256, 15), (250, 30)])
def test_gc_binary_random_survivor_sets_large(n, s):
    rng = np.random.default_rng(n * 1000 + s)
    sets = [tuple(sorted(set(range(n)) - set(rng.choice(n, s, replace=False).tolist()))) for _ in range(60)]
    _check_binary(n, s, sets, rng)


def test_gc_binary_accepts_exactly_when_every_group_has_a_survivor():
    g = GCBinary(7, 2)  # 7 = 2*3 + 1: groups of 4 and 3
    assert binary_groups(7, 2) == [(0, 1, 2, 3), (4, 5, 6)]
    assert g.accepts(0, frozenset({3, 4}))
    assert not g.accepts(0, frozenset({0, 1, 2, 3}))
    assert g.accepts_mask(0, np.array([0, 0, 0, 1, 0, 0, 1], dtype=bool))
    assert not g.accepts_mask(0, np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool))


@pytest.mark.parametrize("n,s", [(n, s) for n in (2, 3, 5, 7, 8, 12, 31, 64, 256) for s in range(0, n, max(1, n // 7))])
def test_loads_match_the_formulas(n, s):
    b = make_scheme("gc-binary", n, s=s)
    assert b.load() == pytest.approx(1.0 / (n // (s + 1)))
    assert b.load() == pytest.approx(binary_load(n, s))
    # the load every worker really computes: its parts' fractions
    assert np.allclose(b.worker_loads(0), b.load())
    frac = b.part_fractions()
    for t in b.tasks(0).values():
        assert frac[list(t[0].parts)].sum() == pytest.approx(b.load())
    c = make_scheme("gc-cyclic", n, s=s)
    assert c.load() == pytest.approx(cyclic_load(n, s)) == pytest.approx((s + 1) / n)
    # stated relation: equal when (s+1) | n, else at most 1 + r / (l (s+1)) < 2 times gc-cyclic's
    r, l_ = n % (s + 1), n // (s + 1)
    assert b.load() / c.load() == pytest.approx(1 + r / (l_ * (s + 1)))
    assert b.load() / c.load() < 2


@pytest.mark.parametrize("n,s", [(n, s) for n in (3, 5, 6, 9, 10, 11, 12) for s in range(1, n)])
@pytest.mark.slow
def test_stable_cyclic_every_survivor_set(n, s):
    rng = np.random.default_rng(n * 31 + s)
    grads = rng.standard_normal((n, 4))
    want = grads.sum(axis=0)
    g = GCCyclic(n, s)
    msgs = _encode(g, grads)
    for t in g.tasks(0).values():
        assert len(t[0].parts) == s + 1  # cyclic support kept
    for F in itertools.combinations(range(n), n - s):
        _, got = _decode(g, msgs, F)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-9, (n, s, F)


def test_stable_cyclic_is_binary_window_when_s_plus_1_divides_n():
    g = GCCyclic(256, 15)
    assert all(t[0].coeffs == (1.0,) * 16 for t in g.tasks(0).values())
    g.close_round(0, frozenset(range(15, 256)))
    assert set(g.decode(0).values()) == {1.0}


def test_gc_cyclic_float32_within_1e5_at_256_15_and_better_than_tandon():
    p = measure("gc-cyclic", 256, 15, "float32", max_sets=64)
    assert p.worst_rel_error < 1e-5
    # (s+1) does not divide n: the stable code is no longer within 1e-5 at float32 (7.9e-5 on the measure's
    # gradients; an earlier 2.9e-6 came from gradients that depended on how many survivor sets were sampled),
    # but still an order of magnitude better than Tandon's
    stable = measure("gc-cyclic", 32, 4, "float32")
    tandon = measure("gc-cyclic", 32, 4, "float32", construction="tandon")
    assert 10 * stable.worst_rel_error < tandon.worst_rel_error and 1e-5 < tandon.worst_rel_error
    assert tandon.flagged
    assert "gc-binary" in tandon.warning()


@pytest.mark.parametrize("n,s", [(8, 2), (33, 5), (64, 9), (256, 16)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gc_binary_within_4x_of_uncoded(n, s, dtype):
    p = measure("gc-binary", n, s, dtype)
    assert p.amplification <= 4 and not p.flagged


def test_precision_tolerance_rule():
    eps32 = 2.0**-24
    ok = Precision("gc-cyclic", 8, 1, "float32", 160 * eps32, eps32, 1, True)
    bad = Precision("gc-cyclic", 8, 1, "float32", 175 * eps32, eps32, 1, True)
    assert not ok.flagged and bad.flagged
    assert "float64" in bad.warning() and "gc-binary" in bad.warning()
    bf = Precision("gc-binary", 8, 1, "bfloat16", 5 * 2.0**-8, 2.0**-8, 1, True)
    assert bf.flagged and "float32" in bf.warning()


def test_bfloat16_rounds_once_from_float64():
    x = np.array([1 + 2**-8 + 2**-30, 1 + 2**-8, -(3 + 2**-7 + 2**-40), 0.0, 1e-3])
    r = round_payload(x, "bfloat16")
    assert str(r.dtype) == "bfloat16"
    want = [1 + 2**-7, 1.0, -(3 + 2**-6), 0.0]  # nearest, ties to even, one rounding
    np.testing.assert_array_equal(r.astype(np.float64)[:4], want)
    np.testing.assert_array_equal(round_to(x, "bfloat16"), r.astype(np.float64))
    back = from_proto(to_proto(r))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, r.astype(np.float32))
    assert math.isclose(float(back[4]), 1e-3, rel_tol=2**-8)


@pytest.mark.parametrize(("transport", "launcher"), [("torch", "torchrun"), ("tcp", "none")])
def test_bfloat16_needs_grpc_transport(transport, launcher):
    """Which plane carries which dtype is the registry's business (each plane declares it): the choice, made
    before anything starts, refuses bfloat16 on a plane that carries float32/float64 only, and without a
    transport picks the gRPC one for bfloat16 payloads."""
    from dcoord.config import load_config
    from dcoord.errors import ConfigError
    from dcoord.runtime.transport.registry import choose_plane

    data = {"name": "x", "workers": 4,
            "coding": {"scheme": "gc-binary", "stragglers": 1, "payload_dtype": "bfloat16"}}
    with pytest.raises(ConfigError, match="bfloat16 payloads need transport: grpc"):
        choose_plane(load_config(None, data={**data, "transport": transport}), launcher)
    plane, reason = choose_plane(load_config(None, data=data), launcher)
    assert plane.name == "grpc" and "bfloat16" in reason


@pytest.mark.slow
def test_float32_gc_binary_run_equals_full_batch_gd(tmp_path):
    import torch
    from reference import full_batch_gd, max_rel_diff

    from dcoord.config import load_config
    from dcoord.runtime.local import run_local

    cfg = load_config(None, data={
        "name": "bin32", "workload": "logreg-digits", "seed": 0, "workers": 7, "rounds": 20, "batch_size": None,
        "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
        "inject": {"model": "fixed", "workers": [1, 4], "slowdown": 20}, "runtime": {"progress": False},
        "coding": {"scheme": "gc-binary", "stragglers": 2, "payload_dtype": "float32"}})  # 7 = 2*3 + 1
    summary = run_local(cfg, tmp_path, progress=False)
    assert summary["rounds_completed"] == 20
    ref = full_batch_gd("logreg-digits", seed=0, rounds=20, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-6
