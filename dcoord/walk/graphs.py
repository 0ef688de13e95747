"""Worker graphs for token schedules, stored as a compact CSR adjacency.

A token only ever needs "who are the neighbours of the holder", so a graph is three numpy int arrays:
``indptr`` (n+1), ``indices`` (2|E|, each node's neighbours sorted ascending) and ``degree`` (n). The
hot path (choosing the next node) slices these arrays and never touches networkx; networkx is used only
to *build* the random families (Erdos-Renyi, Watts-Strogatz, random regular) so that seeds mean what
they mean elsewhere. Graphs are simple (no self-loops, no multi-edges), undirected and connected: a
walk on a disconnected graph would never sample part of the data, so builders refuse one with an error
that says which knob to turn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from dcoord.errors import WalkError

GRAPH_KINDS = ("ring", "torus", "complete", "random-regular", "erdos-renyi", "watts-strogatz", "edge-list")


class GraphError(WalkError):
    """An invalid or unusable graph; the message says which parameter to change."""


@dataclass(frozen=True, eq=False)
class Graph:
    """Undirected simple connected graph in CSR form (neighbours of node i: indices[indptr[i]:indptr[i+1]])."""

    indptr: np.ndarray
    indices: np.ndarray
    name: str = "graph"
    degree: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "degree", np.diff(indptr))
        for a in (indptr, indices, self.degree):
            a.setflags(write=False)

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.indptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        """Number of undirected edges |E|."""
        return int(self.indices.shape[0] // 2)

    def neighbors(self, i: int) -> np.ndarray:
        """Sorted neighbours of node i (a read-only view, O(1))."""
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def edges(self) -> np.ndarray:
        """All undirected edges as an (|E|, 2) array with u < v."""
        src = np.repeat(np.arange(self.n, dtype=np.int64), self.degree)
        keep = src < self.indices
        return np.stack([src[keep], self.indices[keep]], axis=1)

    def adjacency(self) -> np.ndarray:
        """Dense 0/1 adjacency matrix; for tests and small graphs only (O(n^2) memory)."""
        a = np.zeros((self.n, self.n), dtype=np.int64)
        src = np.repeat(np.arange(self.n, dtype=np.int64), self.degree)
        a[src, self.indices] = 1
        return a

    def is_connected(self) -> bool:
        """True when every node is reachable from every other."""
        return _components(self.n, self.indptr, self.indices) == 1


def _components(n: int, indptr: np.ndarray, indices: np.ndarray) -> int:
    mat = csr_matrix((np.ones(indices.shape[0], dtype=np.int8), indices, indptr), shape=(n, n))
    count, _ = connected_components(mat, directed=False)
    return int(count)


def from_edges(n: int, edges: Iterable[tuple[int, int]] | np.ndarray, name: str = "graph") -> Graph:
    """Build a Graph from undirected edges on nodes 0..n-1; duplicates and (v, u) repeats are merged.

    Self-loops are refused (a walk's self-loop mass comes from the chain, e.g. MHRW, not from the graph).
    Connectivity is NOT checked here; ``check_connected`` does that with a message naming the builder.
    """
    if n < 1:
        raise GraphError(f"token.graph: a {name} graph needs at least 1 node, got n={n}")
    e = np.asarray(list(edges) if not isinstance(edges, np.ndarray) else edges, dtype=np.int64)
    if e.size == 0:
        e = e.reshape(0, 2)
    if e.ndim != 2 or e.shape[1] != 2:
        raise GraphError(f"token.graph: edges for the {name} graph must be pairs, got shape {e.shape}")
    if e.size and (e.min() < 0 or e.max() >= n):
        raise GraphError(f"token.graph: the {name} graph has an edge outside nodes 0..{n - 1}")
    if np.any(e[:, 0] == e[:, 1]):
        u = int(e[e[:, 0] == e[:, 1]][0, 0])
        raise GraphError(f"token.graph: the {name} graph has a self-loop at node {u}")
    both = np.concatenate([e, e[:, ::-1]], axis=0)
    # unique directed pairs, sorted by (src, dst): that is exactly CSR order with sorted neighbours
    key = np.unique(both[:, 0] * n + both[:, 1])
    src, dst = np.divmod(key, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return Graph(indptr=indptr, indices=dst, name=name)


def check_connected(g: Graph, what: str, hint: str) -> Graph:
    """Return g, or raise GraphError('token.graph: the <what> is not connected; <hint> (<c> components)')."""
    if g.n >= 1 and not g.is_connected():
        comps = _components(g.n, g.indptr, g.indices)
        raise GraphError(f"token.graph: the {what} is not connected; {hint} ({comps} components)")
    if g.n >= 2 and int(g.degree.min()) == 0:  # pragma: no cover - implied by connectivity, kept as a guard
        raise GraphError(f"token.graph: the {what} has an isolated node; {hint}")
    return g


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise GraphError("token.graph: " + msg)


def ring(n: int) -> Graph:
    """Cycle 0-1-...-(n-1)-0: the slowest-mixing connected 2-regular graph (a stress test for walks)."""
    _need(n >= 3, f"a ring needs n >= 3 nodes, got n={n}")
    i = np.arange(n)
    return from_edges(n, np.stack([i, (i + 1) % n], axis=1), name=f"ring(n={n})")


def _torus_shape(n: int | None, rows: int | None, cols: int | None) -> tuple[int, int]:
    if rows is not None and cols is not None:
        if n is not None and rows * cols != n:
            raise GraphError(f"token.graph: torus rows*cols = {rows}*{cols} = {rows * cols} but n={n}")
        return rows, cols
    _need(n is not None, "a torus needs n, or rows and cols")
    assert n is not None
    if rows is not None or cols is not None:
        given = rows if rows is not None else cols
        assert given is not None
        _need(given >= 1 and n % given == 0, f"torus: n={n} is not divisible by {given}")
        other = n // given
        return (given, other) if rows is not None else (other, given)
    r = int(math.isqrt(n))
    while n % r:
        r -= 1
    return r, n // r


def torus(n: int | None = None, rows: int | None = None, cols: int | None = None) -> Graph:
    """2-D torus (grid with wrap-around). Without rows/cols the most square factorisation of n is used.

    Sides of length 1 or 2 collapse duplicate edges, so degrees can be below 4 there.
    """
    r, c = _torus_shape(n, rows, cols)
    _need(r >= 1 and c >= 1 and r * c >= 3, f"a torus needs at least 3 nodes, got {r}x{c}")
    _need(max(r, c) >= 3, f"a {r}x{c} torus is degenerate; use sides >= 3 (or kind: complete/ring)")
    idx = np.arange(r * c).reshape(r, c)
    right = np.stack([idx.ravel(), np.roll(idx, -1, axis=1).ravel()], axis=1)
    down = np.stack([idx.ravel(), np.roll(idx, -1, axis=0).ravel()], axis=1)
    e = np.concatenate([right, down])
    e = e[e[:, 0] != e[:, 1]]  # a side of length 1 wraps onto itself
    return from_edges(r * c, e, name=f"torus({r}x{c})")


def complete(n: int) -> Graph:
    """Complete graph K_n: every walk mixes in one step; degree n-1, so use only for small n."""
    _need(n >= 2, f"a complete graph needs n >= 2 nodes, got n={n}")
    iu, ju = np.triu_indices(n, k=1)
    return from_edges(n, np.stack([iu, ju], axis=1), name=f"complete(n={n})")


def random_regular(n: int, d: int, seed: int | None = 0) -> Graph:
    """Uniform random d-regular graph (networkx's pairing model); needs n*d even and d < n."""
    import networkx as nx

    _need(n >= 2, f"a random-regular graph needs n >= 2 nodes, got n={n}")
    _need(1 <= d < n, f"random-regular needs 1 <= d < n, got d={d}, n={n}")
    _need((n * d) % 2 == 0, f"random-regular needs n*d even, got n={n}, d={d}")
    g = nx.random_regular_graph(d, n, seed=seed)
    out = from_edges(n, np.asarray(list(g.edges()), dtype=np.int64), name=f"random-regular(n={n}, d={d})")
    return check_connected(
        out, f"random-regular graph with n={n}, d={d}, seed={seed}", "raise d or change seed"
    )


def erdos_renyi(n: int, p: float, seed: int | None = 0) -> Graph:
    """G(n, p): each edge present independently with probability p."""
    import networkx as nx

    _need(n >= 2, f"an erdos-renyi graph needs n >= 2 nodes, got n={n}")
    _need(0.0 < p <= 1.0, f"erdos-renyi needs 0 < p <= 1, got p={p}")
    g = nx.fast_gnp_random_graph(n, p, seed=seed)  # O(n + |E|), deterministic for a given seed
    out = from_edges(n, np.asarray(list(g.edges()), dtype=np.int64), name=f"erdos-renyi(n={n}, p={p})")
    return check_connected(out, f"erdos-renyi graph with n={n}, p={p}", "raise p or change seed")


def watts_strogatz(n: int, k: int, p: float, seed: int | None = 0) -> Graph:
    """Small-world graph: ring lattice with k nearest neighbours, each edge rewired with probability p."""
    import networkx as nx

    _need(k >= 2 and k % 2 == 0, f"watts-strogatz needs an even k >= 2, got k={k}")
    _need(n > k, f"watts-strogatz needs n > k, got n={n}, k={k}")
    _need(0.0 <= p <= 1.0, f"watts-strogatz needs 0 <= p <= 1, got p={p}")
    g = nx.watts_strogatz_graph(n, k, p, seed=seed)
    out = from_edges(
        n, np.asarray(list(g.edges()), dtype=np.int64), name=f"watts-strogatz(n={n}, k={k}, p={p})"
    )
    return check_connected(
        out, f"watts-strogatz graph with n={n}, k={k}, p={p}", "raise k, lower p or change seed"
    )


def parse_edge_list(text: str, source: str = "<string>") -> list[tuple[int, int]]:
    """Parse 'u v' lines ('#' starts a comment, blank lines skipped); errors name source and line."""
    edges: list[tuple[int, int]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise GraphError(
                f"token.graph: {source}, line {lineno}: expected two node ids 'u v', got {raw.strip()!r}"
            )
        try:
            u, v = int(parts[0]), int(parts[1])
        except ValueError:
            raise GraphError(
                f"token.graph: {source}, line {lineno}: node ids must be integers, got {raw.strip()!r}"
            ) from None
        if u < 0 or v < 0:
            raise GraphError(f"token.graph: {source}, line {lineno}: node ids must be >= 0, got {u} {v}")
        if u == v:
            raise GraphError(f"token.graph: {source}, line {lineno}: self-loop {u}-{v} is not allowed")
        edges.append((u, v))
    if not edges:
        raise GraphError(f"token.graph: {source} has no edges")
    return edges


def from_edge_list(path: str | os.PathLike[str], n: int | None = None, relabel: bool = False) -> Graph:
    """Read an edge-list file (two ints per line, '#' comments); the only file I/O in dcoord.walk.

    Node ids are 0-based and the graph has max(id)+1 nodes (or ``n``). With ``relabel`` the ids that occur
    are mapped in ascending order onto 0..k-1, which suits SNAP-style files whose ids have gaps.
    """
    src = os.fspath(path)
    try:
        with open(src, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise GraphError(f"token.graph: cannot read edge list {src}: {exc.strerror or exc}") from None
    edges = np.asarray(parse_edge_list(text, source=src), dtype=np.int64)
    if relabel:
        ids, inv = np.unique(edges, return_inverse=True)
        edges = inv.reshape(edges.shape)
        size = int(ids.shape[0])
        if n is not None and n != size:
            raise GraphError(f"token.graph: {src} has {size} distinct nodes but n={n} was asked for")
    else:
        size = int(edges.max()) + 1
        if n is not None and size != n:
            raise GraphError(
                f"token.graph: {src} has nodes 0..{size - 1} but n={n}: every worker 0..{n - 1} must appear "
                "in the edge list, and no other id"
            )
    g = from_edges(size, edges, name=f"edge-list({os.path.basename(src)})")
    return check_connected(
        g,
        f"edge-list graph from {src} (n={size})",
        "add edges to join the components (ids must be 0..n-1; relabel: true compacts gapped ids)",
    )


def build_graph(
    kind: str,
    n: int | None = None,
    *,
    k: int | None = None,
    p: float | None = None,
    d: int | None = None,
    seed: int | None = 0,
    path: str | None = None,
    rows: int | None = None,
    cols: int | None = None,
    relabel: bool = False,
) -> Graph:
    """Dispatch on ``kind`` (one of GRAPH_KINDS; '_' is accepted for '-'); n is the number of workers."""
    kind = kind.replace("_", "-").lower()

    def need_n() -> int:
        _need(n is not None, f"kind {kind} needs the number of nodes n")
        assert n is not None
        return n

    if kind == "ring":
        return ring(need_n())
    if kind == "torus":
        return torus(n, rows=rows, cols=cols)
    if kind == "complete":
        return complete(need_n())
    if kind == "random-regular":
        _need(d is not None, "kind random-regular needs d (the degree)")
        assert d is not None
        return random_regular(need_n(), d, seed=seed)
    if kind == "erdos-renyi":
        _need(p is not None, "kind erdos-renyi needs p (the edge probability)")
        assert p is not None
        return erdos_renyi(need_n(), p, seed=seed)
    if kind == "watts-strogatz":
        _need(k is not None and p is not None, "kind watts-strogatz needs k (even) and p (rewiring prob.)")
        assert k is not None and p is not None
        return watts_strogatz(need_n(), k, p, seed=seed)
    if kind == "edge-list":
        _need(path is not None, "kind edge-list needs path")
        assert path is not None
        return from_edge_list(path, n=n, relabel=relabel)
    raise GraphError(f"token.graph: unknown kind {kind!r}; choose one of {', '.join(GRAPH_KINDS)}")
