"""Graphs, base chains, NBRW and the SRRW kernel (dcoord.walk.graphs / dcoord.walk.chains)."""

from __future__ import annotations

import sys
from array import array

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcoord.walk.chains as chains_mod
from dcoord.walk import (
    ChainError,
    GraphError,
    MarkovWalker,
    NBRWalker,
    SRRWWalker,
    build_graph,
    complete,
    erdos_renyi,
    from_edge_list,
    from_edges,
    kernel_matrix,
    make_walker,
    mhrw,
    random_regular,
    reversible_chain,
    ring,
    srw,
    torus,
    watts_strogatz,
)


# ------------------------------------------------------------------------------------------------ helpers
def dense_srrw_kernel(
    P: np.ndarray, mu: np.ndarray, x: np.ndarray, alpha: float, adj: np.ndarray
) -> np.ndarray:
    """The spec's formula, written independently of the implementation: dense, over N(i) u {i}."""
    support = (adj + np.eye(adj.shape[0])) > 0
    w = np.where(support, P * (x / mu)[None, :] ** (-alpha), 0.0)
    return w / w.sum(axis=1, keepdims=True)


def irregular_graph():
    # ER graph with varied degrees so that MHRW has self-loop mass at some nodes but not others
    return erdos_renyi(10, 0.4, seed=3)


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


# ------------------------------------------------------------------------------------------------ graphs
@pytest.mark.parametrize(
    "g, degrees",
    [
        (ring(7), {2}),
        (torus(rows=4, cols=5), {4}),
        (torus(12), {4}),
        (complete(6), {5}),
        (random_regular(20, 3, seed=2), {3}),
    ],
)
def test_builders_degrees_and_csr_invariants(g, degrees):
    assert set(g.degree.tolist()) == degrees
    a = g.adjacency()
    assert (a == a.T).all(), "undirected"
    assert np.trace(a) == 0, "no self-loops"
    assert a.sum() == 2 * g.num_edges == g.indices.shape[0]
    for i in range(g.n):
        nb = g.neighbors(i)
        assert (np.diff(nb) > 0).all(), "neighbours sorted, no duplicates"
    assert g.is_connected()
    assert len(g.edges()) == g.num_edges


def test_torus_shape_and_neighbours():
    g = torus(rows=3, cols=4)
    assert g.n == 12
    # node (1, 1) = 5: left 4, right 6, up 1, down 9
    assert g.neighbors(5).tolist() == [1, 4, 6, 9]
    assert torus(12).n == 12
    with pytest.raises(GraphError, match="rows\\*cols"):
        torus(10, rows=3, cols=4)


def test_random_families_are_seeded_and_connected():
    a, b = watts_strogatz(50, 4, 0.1, seed=1), watts_strogatz(50, 4, 0.1, seed=1)
    assert np.array_equal(a.indices, b.indices)
    c = watts_strogatz(50, 4, 0.1, seed=2)
    assert not np.array_equal(a.indices, c.indices)
    assert erdos_renyi(40, 0.3, seed=0).is_connected()


def test_disconnected_erdos_renyi_has_clear_error():
    with pytest.raises(GraphError) as e:
        erdos_renyi(60, 0.01, seed=1)
    msg = str(e.value)
    assert msg.startswith(
        "token.graph: the erdos-renyi graph with n=60, p=0.01 is not connected; raise p or change seed"
    )


def test_bad_parameters_are_named():
    with pytest.raises(GraphError, match="even k"):
        watts_strogatz(20, 3, 0.1)
    with pytest.raises(GraphError, match="n\\*d even"):
        random_regular(7, 3)
    with pytest.raises(GraphError, match="unknown kind"):
        build_graph("hypercube", 8)
    with pytest.raises(GraphError, match="needs p"):
        build_graph("erdos-renyi", 8)
    with pytest.raises(GraphError, match="self-loop"):
        from_edges(3, [(0, 1), (1, 1)])
    assert build_graph("watts_strogatz", 30, k=4, p=0.2, seed=0).n == 30


def test_edge_list_file(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("# a triangle plus a tail\n0 1\n1 2  # trailing comment\n\n2 0\n1 0\n2,3\n")
    g = from_edge_list(f)
    assert g.n == 4 and g.num_edges == 4  # duplicate (1, 0) merged
    assert g.neighbors(2).tolist() == [0, 1, 3]
    assert build_graph("edge-list", path=str(f)).num_edges == 4


def test_edge_list_errors_name_file_and_line(tmp_path):
    f = tmp_path / "loop.txt"
    f.write_text("0 1\n# comment\n2 2\n")
    with pytest.raises(GraphError) as e:
        from_edge_list(f)
    assert str(f) in str(e.value) and "line 3" in str(e.value) and "self-loop" in str(e.value)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\n1 x\n")
    with pytest.raises(GraphError, match="line 2: node ids must be integers"):
        from_edge_list(bad)
    three = tmp_path / "three.txt"
    three.write_text("0 1 2\n")
    with pytest.raises(GraphError, match="line 1: expected two node ids"):
        from_edge_list(three)
    split = tmp_path / "split.txt"
    split.write_text("0 1\n2 3\n")
    with pytest.raises(GraphError, match="is not connected"):
        from_edge_list(split)
    with pytest.raises(GraphError, match="cannot read"):
        from_edge_list(tmp_path / "missing.txt")


def test_edge_list_relabel(tmp_path):
    f = tmp_path / "snap.txt"
    f.write_text("10 20\n20 35\n35 10\n")
    with pytest.raises(GraphError, match="not connected"):
        from_edge_list(f)  # ids 0..9 etc. would be isolated
    g = from_edge_list(f, relabel=True)
    assert g.n == 3 and g.num_edges == 3


# ------------------------------------------------------------------------------------------------ base chains
def test_base_chain_rows():
    g = irregular_graph()
    a = g.adjacency()
    d = g.degree.astype(float)
    P = srw(g).dense()
    assert np.allclose(P, a / d[:, None])
    M = mhrw(g).dense()
    expected = np.where(a > 0, np.minimum(1 / d[:, None], 1 / d[None, :]), 0.0)
    expected[np.diag_indices(g.n)] = 1 - expected.sum(axis=1)
    assert np.allclose(M, expected)
    assert mhrw(g).uniform_target and not srw(g).uniform_target
    assert any(mhrw(g).self_loop(i) > 0 for i in range(g.n)), "test graph should exercise self-loops"
    for ch in (srw(g), mhrw(g)):
        Pd = ch.dense()
        assert np.allclose(Pd.sum(axis=1), 1)
        flow = ch.mu[:, None] * Pd
        assert np.allclose(flow, flow.T), "reversible"


def test_regular_graph_mhrw_has_no_self_loops():
    ch = mhrw(random_regular(12, 4, seed=0))
    assert all(ch.self_loop(i) == 0.0 for i in range(12))
    assert np.array_equal(np.diff(ch.row_ptr), np.full(12, 4))


def test_reversible_chain_user_P():
    g = irregular_graph()
    a = g.adjacency().astype(float)
    lazy = 0.5 * np.eye(g.n) + 0.5 * a / a.sum(axis=1, keepdims=True)
    ch = reversible_chain(g, lazy)
    assert np.allclose(ch.mu, g.degree / g.degree.sum())  # recovered from detailed balance
    assert np.allclose(ch.dense(), lazy)
    nonrev = lazy.copy()
    i, j = np.argwhere(a > 0)[0]
    nonrev[i, j] += 0.05
    nonrev[i, i] -= 0.05
    with pytest.raises(ChainError, match="not reversible"):
        reversible_chain(g, nonrev)
    off = lazy.copy()
    u, v = np.argwhere((a == 0) & ~np.eye(g.n, dtype=bool))[0]
    off[u, v] += 0.1
    off[u, u] -= 0.1
    with pytest.raises(ChainError, match="not an edge"):
        reversible_chain(g, off)
    with pytest.raises(ChainError, match="sums to"):
        reversible_chain(g, lazy * 0.9)


# ------------------------------------------------------------------------------------------------ SRRW kernel
@pytest.mark.parametrize("base", ["srw", "mhrw", "lazy"])
def test_srrw_kernel_matches_formula_entrywise(base):
    g = irregular_graph()
    if base == "lazy":
        a = g.adjacency().astype(float)
        chain = reversible_chain(g, 0.3 * np.eye(g.n) + 0.7 * a / a.sum(axis=1, keepdims=True))
    else:
        chain = srw(g) if base == "srw" else mhrw(g)
    w = SRRWWalker(chain, alpha=3.0, gamma_exponent=0.8, start=0)
    w.walk(300, np.random.default_rng(5))
    x = w.x
    assert x.std() > 0.005, "visit measure should be far from uniform for a meaningful check"
    expected = dense_srrw_kernel(chain.dense(), chain.mu, x, 3.0, g.adjacency())
    got = kernel_matrix(w)
    assert np.allclose(got, expected, rtol=1e-10, atol=1e-14)
    for i in range(g.n):
        nodes, probs = w.kernel_row(i)
        assert np.isclose(probs.sum(), 1.0)
        assert set(nodes.tolist()) <= set(g.neighbors(i).tolist()) | {i}


def test_srrw_kernel_long_rows_numpy_path():
    # degree 59 > the pure-Python row limit: the numpy path must give the same formula
    g = complete(60)
    assert g.degree[0] > chains_mod._PY_ROW_MAX
    x0 = np.random.default_rng(0).uniform(0.2, 3.0, size=60)
    for chain in (srw(g), mhrw(g)):
        w = SRRWWalker(chain, alpha=7.5, x0=x0)
        expected = dense_srrw_kernel(chain.dense(), chain.mu, x0 / x0.sum(), 7.5, g.adjacency())
        assert np.allclose(kernel_matrix(w), expected, rtol=1e-10, atol=1e-14)
        w.walk(50, np.random.default_rng(1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    alpha=st.floats(0.0, 40.0),
    base=st.sampled_from(["srw", "mhrw"]),
    spread=st.floats(0.0, 6.0),
)
def test_srrw_kernel_property(seed, alpha, base, spread):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    g = from_edges(
        n, [(i, (i + 1) % n) for i in range(n)] + [tuple(rng.choice(n, 2, replace=False)) for _ in range(n)]
    )
    chain = srw(g) if base == "srw" else mhrw(g)
    x0 = np.exp(spread * rng.standard_normal(n))  # x/mu ratios spanning many orders of magnitude
    w = SRRWWalker(chain, alpha=alpha, x0=x0)
    got = kernel_matrix(w)
    assert np.all(np.isfinite(got)) and np.allclose(got.sum(axis=1), 1.0)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        expected = dense_srrw_kernel(chain.dense(), chain.mu, x0 / x0.sum(), alpha, g.adjacency())
    if np.all(np.isfinite(expected)):  # the naive formula overflows for extreme alpha*spread; ours must not
        assert np.allclose(got, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("base", ["srw", "mhrw"])
def test_alpha_zero_is_exactly_the_base_chain(base):
    g = irregular_graph()
    chain = srw(g) if base == "srw" else mhrw(g)
    w0 = SRRWWalker(chain, alpha=0.0, gamma_exponent=0.8, start=2)
    w0.walk(100, np.random.default_rng(9))  # x far from uniform: must not matter at alpha = 0
    for i in range(g.n):
        nodes, probs = w0.kernel_row(i)
        bn, bp = chain.row(i)
        assert np.array_equal(nodes, bn) and np.array_equal(probs, bp)  # bit-for-bit
    a = SRRWWalker(chain, alpha=0.0, start=4).walk(3000, np.random.default_rng(11))
    b = MarkovWalker(chain, start=4).walk(3000, np.random.default_rng(11))
    assert np.array_equal(a, b)


def test_visit_measure_update_matches_recursion_including_rescale(monkeypatch):
    # force the O(n) renormalisation of the scale to happen often, then compare with the plain recursion
    monkeypatch.setattr(chains_mod, "_RESCALE_BELOW", 0.3)
    g = irregular_graph()
    w = SRRWWalker(mhrw(g), alpha=2.0, gamma_exponent=0.7, start=1)
    traj = w.walk(2000, np.random.default_rng(4))
    x = np.full(g.n, 1.0 / g.n)
    for n, j in enumerate(traj):
        gam = (n + 2.0) ** -0.7
        x = x + gam * (np.eye(g.n)[j] - x)
    assert np.allclose(w.x, x, rtol=1e-9)
    assert w.hops == 2000 and w.visit_counts.sum() == 2001


def test_plain_frequency_with_a_equal_one():
    g = irregular_graph()
    w = SRRWWalker(mhrw(g), alpha=4.0, gamma_exponent=1.0, start=0)
    w.walk(500, np.random.default_rng(0))
    # x_n = (x_0 + sum of arrivals) / (n + 1), x_0 uniform counted as one pseudo-visit
    expected = (np.full(g.n, 1.0 / g.n) + w.visit_counts - np.eye(g.n)[0]) / 501
    assert np.allclose(w.x, expected)


def test_time_varying_alpha():
    g = irregular_graph()
    w = SRRWWalker(mhrw(g), alpha=lambda n: 0.0 if n < 10 else 5.0, start=0)
    assert w.current_alpha() == 0.0
    w.walk(20, np.random.default_rng(0))
    assert w.current_alpha() == 5.0


def test_invalid_srrw_arguments():
    g = irregular_graph()
    with pytest.raises(ChainError):
        SRRWWalker(mhrw(g), alpha=-1.0)
    with pytest.raises(ChainError):
        SRRWWalker(mhrw(g), alpha=1.0, x0=np.zeros(g.n))
    with pytest.raises(ChainError):
        SRRWWalker(mhrw(g), alpha=1.0, gamma_exponent=1.5)
    with pytest.raises(ChainError):
        MarkovWalker(mhrw(g), start=g.n)
    with pytest.raises(ChainError, match="nbrw is not reversible"):
        make_walker("srrw", g, base="nbrw")


# ------------------------------------------------------------------------------------------------ convergence
def test_visit_frequencies_converge_to_targets():
    g = erdos_renyi(25, 0.2, seed=7)
    assert g.degree.max() >= 2 * g.degree.min(), "degrees must differ for SRW vs MHRW targets to differ"
    uniform = np.full(g.n, 1 / g.n)
    degree = g.degree / g.degree.sum()
    assert tv(uniform, degree) > 0.08
    cases = [
        (make_walker("mhrw", g), uniform),
        (make_walker("srw", g), degree),
        (make_walker("nbrw", g), degree),
        (make_walker("srrw", g, base="mhrw", alpha=5.0), uniform),
        (make_walker("srrw", g, base="srw", alpha=5.0), degree),
    ]
    for i, (w, target) in enumerate(cases):
        w.walk(40_000, np.random.default_rng(100 + i))
        assert np.allclose(w.target, target)
        assert tv(w.visit_frequency(), target) < 0.03, w.name


def test_srrw_reduces_sampling_variance():
    # ICML 2023 claim: the SRRW's asymptotic sampling variance is smaller than the base chain's and falls
    # with alpha. Small-world graph (as in the papers' social graphs), slowly mixing block test function.
    g = watts_strogatz(40, 4, 0.1, seed=1)
    f = (np.arange(g.n) < g.n // 2).astype(float)
    truth = f.mean()

    def mse(alpha: float) -> float:
        errs = []
        for s in range(24):
            rng = np.random.default_rng(s)
            w = SRRWWalker(mhrw(g), alpha, gamma_exponent=1.0, start=int(rng.integers(g.n)))
            w.walk(3000, rng)
            errs.append((w.visit_frequency() @ f - truth) ** 2)
        return float(np.mean(errs))

    base, srrw5 = mse(0.0), mse(5.0)
    assert srrw5 < 0.4 * base, (base, srrw5)  # measured ~0.06x; margin for seeds


# ------------------------------------------------------------------------------------------------ NBRW
def test_nbrw_never_backtracks_except_at_leaves():
    # a ring with two pendant paths: degree-1 nodes force the only allowed backtrack
    edges = [(i, (i + 1) % 8) for i in range(8)] + [(0, 8), (8, 9), (4, 10)]
    g = from_edges(11, edges)
    w = NBRWalker(g, start=9)
    prev, cur = -1, 9
    backtracks_at_leaves = 0
    for nxt in w.walk(5000, np.random.default_rng(3)).tolist():
        if prev >= 0 and nxt == prev:
            assert g.degree[cur] == 1, f"backtracked at node {cur} of degree {g.degree[cur]}"
            backtracks_at_leaves += 1
        prev, cur = cur, nxt
    assert backtracks_at_leaves > 50
    nodes, probs = w.kernel_row(w.position)
    assert np.isclose(probs.sum(), 1.0)
    if g.degree[w.position] > 1:
        assert probs[nodes.tolist().index(w.previous)] == 0.0


# ------------------------------------------------------------------------------------------------ cost per hop
class _Recorder:
    """Stands in for the walker's flat visit-measure buffer and counts element reads and writes."""

    def __init__(self, arr: array) -> None:
        self.arr = arr
        self.touched = 0

    def __getitem__(self, idx):
        self.touched += int(np.size(idx))
        return self.arr[idx]

    def __setitem__(self, idx, value):
        self.touched += int(np.size(idx))
        self.arr[idx] = value


@pytest.mark.parametrize("base", ["srw", "mhrw"])
def test_per_hop_work_does_not_grow_with_n(base):
    touched_per_hop = {}
    for n in (50, 5000):
        g = random_regular(n, 4, seed=1)
        chain = srw(g) if base == "srw" else mhrw(g)
        w = SRRWWalker(chain, alpha=5.0, start=0)
        rec = _Recorder(w._z)
        w._z = rec
        hops = 400
        w.walk(hops, np.random.default_rng(0))
        # every hop reads the d_i = 4 entries of its row and updates one entry (read + write)
        assert w.entries_examined == 4 * hops
        touched_per_hop[n] = rec.touched / hops
    assert touched_per_hop[50] == touched_per_hop[5000] == 4 + 2


def test_hot_path_never_calls_networkx(monkeypatch):
    g = watts_strogatz(30, 4, 0.2, seed=0)  # built with networkx ...
    walkers = [make_walker(c, g, alpha=3.0) for c in ("srw", "mhrw", "nbrw", "srrw")]
    monkeypatch.setitem(sys.modules, "networkx", None)  # ... after which any import of it fails
    rng = np.random.default_rng(0)
    for w in walkers:
        w.walk(200, rng)
        w.kernel_row(w.position)


def test_edge_list_node_count_must_match(tmp_path):
    f = tmp_path / "tri.txt"
    f.write_text("0 1\n1 2\n2 0\n")
    assert from_edge_list(f, n=3).n == 3
    with pytest.raises(GraphError, match="every worker 0..4 must appear"):
        from_edge_list(f, n=5)
