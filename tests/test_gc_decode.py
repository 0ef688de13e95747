"""Plain gradient codes decode the exact full gradient from any allowed survivor set."""

import itertools

import numpy as np
import pytest
import torch

from dcoord.coding.base import DecodeError, SchemeError
from dcoord.coding.gc import (
    GCCyclic,
    GCFractional,
    IgnoreStragglers,
    Uncoded,
    banded_decoding,
    cyclic_encoding_matrix,
    solve_decoding,
)


def _messages(scheme, grads):
    """What each worker sends in round 0: sum of coeffs * part gradients."""
    return {w: sum(c * grads[j] for j, c in zip(t[0].parts, t[0].coeffs)) for w, t in scheme.tasks(0).items()}


def _decoded(scheme, grads, arrived):
    msgs = _messages(scheme, grads)
    assert scheme.accepts(0, frozenset(arrived))
    assert scheme.close_round(0, frozenset(arrived)) == [0]
    return sum(c * msgs[ref.worker] for ref, c in scheme.decode(0).items())


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_tandon_n3_example():
    B = np.array([[0.5, 1, 0], [0, 1, -1], [0.5, 0, 1]])
    for rows, want in [((0, 1), (2, -1)), ((0, 2), (1, 1)), ((1, 2), (1, 2))]:
        np.testing.assert_allclose(solve_decoding(B, rows), want, atol=1e-12)


@pytest.mark.parametrize("n,s", [(n, s) for n in (2, 3, 4, 5, 6, 7, 8) for s in range(n)])
def test_cyclic_every_survivor_set_small(n, s):
    rng = np.random.default_rng(n * 100 + s)
    grads = rng.standard_normal((n, 7))
    want = grads.sum(axis=0)
    for F in itertools.combinations(range(n), n - s):
        g = GCCyclic(n, s)
        assert _rel(_decoded(g, grads, F), want) < 1e-9, (n, s, F)


@pytest.mark.parametrize("n,s", [(12, 3), (16, 5), (20, 2), (24, 7), (32, 4), (32, 8)])
def test_cyclic_random_survivor_sets_large(n, s):
    rng = np.random.default_rng(n + s)
    grads = rng.standard_normal((n, 33))
    want = grads.sum(axis=0)
    for _ in range(25):
        F = rng.choice(n, size=n - s, replace=False)
        g = GCCyclic(n, s)
        assert _rel(_decoded(g, grads, F), want) < 1e-9, (n, s, sorted(F))


@pytest.mark.parametrize("n,s", [(7, 2), (64, 2), (130, 3), (251, 4)])
def test_banded_decoding_equals_the_dense_solve(n, s):
    """The structured O(n s^2) solve gives the dense least-squares coefficients (unique: B_F has full rank)."""
    rng = np.random.default_rng(n)
    for B in (GCCyclic(n, s).B, cyclic_encoding_matrix(n, s, seed=1)):
        for _ in range(3):
            rows = tuple(sorted(rng.choice(n, size=n - s, replace=False).tolist()))
            a, residual = banded_decoding(B, rows, s, with_residual=True)
            want = solve_decoding(B, rows)
            assert residual <= 1e-9
            np.testing.assert_allclose(a, want, rtol=0, atol=1e-8 * max(1.0, np.abs(want).max()))


def test_banded_decoding_keeps_the_residual_check():
    g = GCCyclic(8, 2)
    with pytest.raises(DecodeError, match="residual"):
        banded_decoding(g.B, (0, 1, 2), 2)


@pytest.mark.parametrize("n,s", [(n, s) for n in (2, 4, 6, 8, 12, 16, 24, 32) for s in range(n) if n % (s + 1) == 0])
def test_fractional_repetition_any_survivors(n, s):
    rng = np.random.default_rng(n * 7 + s)
    grads = rng.standard_normal((n, 5))
    want = grads.sum(axis=0)
    sets = list(itertools.combinations(range(n), n - s)) if n <= 8 else [
        rng.choice(n, size=n - s, replace=False) for _ in range(40)]
    for F in sets:
        g = GCFractional(n, s)
        assert _rel(_decoded(g, grads, F), want) < 1e-9


def test_fractional_repetition_finishes_before_n_minus_s():
    g = GCFractional(6, 2)  # groups {0,1,2}, {3,4,5}
    assert g.accepts(0, frozenset({0, 3}))
    assert not g.accepts(0, frozenset({0, 1, 2}))  # three arrivals, one group missing


def test_uncoded_needs_everyone_and_ignore_stragglers_rescales():
    grads = np.arange(12.0).reshape(4, 3)
    u = Uncoded(4)
    assert not u.accepts(0, frozenset({0, 1, 2}))
    np.testing.assert_allclose(_decoded(u, grads, {0, 1, 2, 3}), grads.sum(0))
    ig = IgnoreStragglers(4, 1)
    est = _decoded(ig, grads, {0, 1, 2})
    np.testing.assert_allclose(est, grads[:3].sum(0) * 4 / 3)


def test_bad_parameters_are_named():
    with pytest.raises(SchemeError, match="stragglers"):
        GCCyclic(4, 4)
    with pytest.raises(SchemeError, match="divide"):
        GCFractional(6, 3)


def test_cyclic_cache_hits_on_repeated_patterns():
    g = GCCyclic(16, 3)
    F = frozenset(range(3, 16))
    for _ in range(5):
        g.decoding_coefficients(F)
    info = g.cache_info()
    assert info.hits == 4 and info.misses == 1


def test_residual_check_refuses_undecodable_set():
    g = GCCyclic(6, 2)
    with pytest.raises(DecodeError, match="residual"):
        solve_decoding(g.B, (0, 1, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_combine_forms_every_product_in_float64(dtype):
    """The coordinator's decode: each coefficient times a (float32 or float64) message is formed in float64
    and summed in float64, block by block, into a new or a reused buffer. A float32 product (what NumPy does
    for a Python float beside a float32 array) would be off by ~1e-8 relative."""
    from dcoord.coding.combine import BLOCK, combine

    rng = np.random.default_rng(0)
    size = 2 * BLOCK + 37  # several blocks and a ragged tail
    msgs = {k: rng.standard_normal(size).astype(dtype) for k in range(3)}
    coeffs = {0: 1 / 3, 1: -2.718281828459045, 2: 1e-3 / 7}
    want = np.zeros(size)
    for k, c in coeffs.items():
        want += c * msgs[k].astype(np.float64)
    assert np.array_equal(combine(coeffs, msgs, size), want)
    buf = np.full(size, np.nan)
    assert combine(coeffs, msgs, size, out=buf) is buf and np.array_equal(buf, want)
    assert not combine({}, msgs, size, out=buf).any()
    # into float32 memory (the coordinator's model gradients): the float64 sum rounded once, bit for bit
    # what rounding the float64 result afterwards gives (a float32 accumulator would differ)
    buf32 = np.full(size, np.nan, dtype=np.float32)
    assert combine(coeffs, msgs, size, out=buf32) is buf32
    assert np.array_equal(buf32, want.astype(np.float32))
    assert np.array_equal(torch.from_numpy(buf32), torch.from_numpy(want).to(torch.float32))
    with pytest.raises(ValueError, match="float64 or float32"):
        combine(coeffs, msgs, size, out=np.empty(size, dtype=np.float16))
    with pytest.raises(ValueError, match="shape"):
        combine(coeffs, msgs, size, out=np.empty(size + 1))


@pytest.mark.parametrize("out_dtype", [np.float64, np.float32])
def test_combine_on_threads_gives_the_same_bits(out_dtype):
    """A large decode is cut into ranges combined on threads: every value must come out bit for bit as one
    thread computes it, for any number of threads and a size that is not a multiple of the block."""
    from dcoord.coding.combine import BLOCK, combine

    rng = np.random.default_rng(1)
    size = 5 * BLOCK + 123
    msgs = {k: rng.standard_normal(size).astype(np.float32) for k in range(4)}
    coeffs = {0: 1.0, 1: -0.7071067811865476, 2: 1.0, 3: 3.3333333333333335}
    one = combine(coeffs, msgs, size, out=np.empty(size, dtype=out_dtype), threads=1)
    for threads in (2, 3, 4, 64):
        got = combine(coeffs, msgs, size, out=np.full(size, np.nan, dtype=out_dtype), threads=threads)
        assert np.array_equal(got, one), threads
    assert np.array_equal(combine(coeffs, msgs, size, threads=4), combine(coeffs, msgs, size, threads=1))
