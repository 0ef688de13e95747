"""Token schedules: base Markov chains (SRW, MHRW), the non-backtracking walk and the SRRW.

The SRRW is the self-repellent random walk of Doshi, Hu & Eun (ICML 2023, arXiv 2305.05097): given a base
chain P reversible w.r.t. mu and the walk's visit measure x (all entries > 0), the next node from i is
drawn from

    K_ij[x] = P_ij (x_j / mu_j)^-alpha / sum_{k in N(i) u {i}} P_ik (x_k / mu_k)^-alpha

and, after moving to X_{n+1}, x_{n+1} = x_n + gamma_{n+1} (e_{X_{n+1}} - x_n) with gamma_n = (n+1)^-a.
Taken from the papers: the kernel, the update of x, that x_n -> mu a.s. for every alpha >= 0, that the
base must be reversible (hence NBRW is only a baseline), and the polynomial repellence (x/mu)^-alpha.
Chosen here: x_0 uniform by default (the papers only need x_0 > 0), gamma_n indexed so that a = 1 gives the
plain visit frequency counting x_0 as one pseudo-visit, and independent visit measures per token.

Cost model (what the runtime and the simulator rely on): one hop reads only the holder's row of P and
the entries of x at the holder's neighbourhood, O(d_i); x is kept as ``scale * y`` so the update touches
one entry of y (the (1 - gamma) shrink of every entry lives in the scalar ``scale``), O(1) amortised.
The normalisation divides by the row's smallest x_j/mu_j before raising to -alpha, so large alpha and
long runs neither overflow nor underflow to an all-zero row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Literal

import numpy as np
from scipy.sparse import csr_matrix, issparse
from scipy.sparse.csgraph import breadth_first_order, connected_components

from dcoord.errors import WalkError
from dcoord.walk.graphs import Graph

_SELF_LOOP_EPS = 1e-12  # self-loop mass below this is rounding noise (e.g. MHRW on a regular graph)
_RESCALE_BELOW = 1e-150  # renormalise y when the global scale of x gets this small
_PY_ROW_MAX = 32  # rows up to this length are weighted in plain Python (measured crossover with numpy)

AlphaSchedule = float | Callable[[int], float]
StepSchedule = Callable[[int], float]


class ChainError(WalkError):
    """An invalid chain specification (not stochastic, not reversible, off the graph, ...)."""


# --------------------------------------------------------------------------------------------------------
# Base chains
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BaseChain:
    """A reversible Markov chain on a graph, stored row by row in CSR form.

    Row i lists the candidate next nodes ``row_nodes[row_ptr[i]:row_ptr[i+1]]`` (node i itself first when
    the chain has self-loop mass there, then the neighbours in ascending order) with their probabilities
    ``row_p`` and within-row cumulative sums ``row_cum`` (so sampling the base chain is O(log d_i)).
    """

    graph: Graph
    name: str
    row_ptr: np.ndarray
    row_nodes: np.ndarray
    row_p: np.ndarray
    mu: np.ndarray
    row_cum: np.ndarray = field(init=False, repr=False)
    # the same rows as Python tuples (nodes, P, cumulative P): indexing these is ~10x cheaper than numpy
    # for the handful of entries a hop reads, and it is what step() uses for short rows
    py_rows: list[tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        cum = np.empty_like(self.row_p)
        rows = []
        ptr = self.row_ptr.tolist()
        nodes, probs = self.row_nodes.tolist(), self.row_p.tolist()
        for i in range(self.graph.n):  # once per chain; not on the hot path
            a, b = ptr[i], ptr[i + 1]
            np.cumsum(self.row_p[a:b], out=cum[a:b])
            rows.append((tuple(nodes[a:b]), tuple(probs[a:b]), tuple(cum[a:b].tolist())))
        object.__setattr__(self, "row_cum", cum)
        object.__setattr__(self, "py_rows", rows)
        for arr in (self.row_ptr, self.row_nodes, self.row_p, self.mu, self.row_cum):
            arr.setflags(write=False)

    @property
    def n(self) -> int:
        return self.graph.n

    @property
    def uniform_target(self) -> bool:
        """True when mu is uniform, i.e. the chain minimises the plain average of the node objectives."""
        return bool(np.allclose(self.mu, 1.0 / self.n, rtol=1e-12, atol=0.0))

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(candidate nodes, P_i.) for node i; read-only views."""
        a, b = self.row_ptr[i], self.row_ptr[i + 1]
        return self.row_nodes[a:b], self.row_p[a:b]

    def self_loop(self, i: int) -> float:
        """P_ii (0 when the row has no self entry)."""
        a, b = self.row_ptr[i], self.row_ptr[i + 1]
        return float(self.row_p[a]) if b > a and self.row_nodes[a] == i else 0.0

    def dense(self) -> np.ndarray:
        """The full n x n transition matrix; for tests on small graphs."""
        p = np.zeros((self.n, self.n))
        src = np.repeat(np.arange(self.n), np.diff(self.row_ptr))
        p[src, self.row_nodes] = self.row_p
        return p


def _assemble(graph: Graph, name: str, p_nb: np.ndarray, p_self: np.ndarray, mu: np.ndarray) -> BaseChain:
    """Build the per-row layout [self (if any), neighbours...] from neighbour and self-loop probabilities."""
    n = graph.n
    has_self = p_self > _SELF_LOOP_EPS
    lengths = graph.degree + has_self.astype(np.int64)
    row_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_ptr[1:])
    row_nodes = np.empty(int(row_ptr[-1]), dtype=np.int64)
    row_p = np.empty(int(row_ptr[-1]), dtype=np.float64)
    # neighbour block of row i starts at row_ptr[i] + has_self[i]
    starts = row_ptr[:-1] + has_self
    offs = np.repeat(starts - graph.indptr[:-1], graph.degree) + np.arange(graph.indices.shape[0])
    row_nodes[offs] = graph.indices
    row_p[offs] = p_nb
    self_pos = row_ptr[:-1][has_self]
    row_nodes[self_pos] = np.flatnonzero(has_self)
    row_p[self_pos] = p_self[has_self]
    return BaseChain(graph=graph, name=name, row_ptr=row_ptr, row_nodes=row_nodes, row_p=row_p, mu=mu)


def srw(graph: Graph) -> BaseChain:
    """Simple random walk: P_ij = 1/d_i on neighbours; mu_i = d_i / 2|E| (reversible)."""
    deg = graph.degree.astype(np.float64)
    p_nb = np.repeat(1.0 / deg, graph.degree)
    mu = deg / deg.sum()
    return _assemble(graph, "srw", p_nb, np.zeros(graph.n), mu)


def mhrw(graph: Graph) -> BaseChain:
    """Metropolis-Hastings walk to the uniform target: P_ij = min(1/d_i, 1/d_j), P_ii = 1 - sum_j P_ij.

    Equivalent to 'propose a uniform neighbour j, accept with min(1, d_i/d_j)'; stored as explicit rows
    because the SRRW needs P_ii (the holder keeping the token) in its normalisation.
    """
    deg = graph.degree.astype(np.float64)
    src = np.repeat(np.arange(graph.n), graph.degree)
    p_nb = np.minimum(1.0 / deg[src], 1.0 / deg[graph.indices])
    row_sum = np.bincount(src, weights=p_nb, minlength=graph.n)
    p_self = np.clip(1.0 - row_sum, 0.0, 1.0)
    p_self[p_self <= _SELF_LOOP_EPS] = 0.0
    return _assemble(graph, "mhrw", p_nb, p_self, np.full(graph.n, 1.0 / graph.n))


def reversible_chain(
    graph: Graph, P: np.ndarray, mu: np.ndarray | None = None, *, name: str = "custom", tol: float = 1e-9
) -> BaseChain:
    """A user-given transition matrix P (dense or scipy sparse, n x n) as an SRRW base.

    P must be stochastic, supported on the graph's edges plus the diagonal, irreducible and reversible
    w.r.t. mu. Without ``mu`` it is recovered exactly from detailed balance along a BFS spanning tree
    (mu_j = mu_i P_ij / P_ji), then checked on every edge.
    """
    n = graph.n
    dense = P.toarray() if issparse(P) else np.asarray(P, dtype=np.float64)
    if dense.shape != (n, n):
        raise ChainError(f"token.chain: P must be {n}x{n} for this graph, got {dense.shape}")
    if not np.all(np.isfinite(dense)) or dense.min() < 0:
        raise ChainError("token.chain: P must have finite non-negative entries")
    if not np.allclose(dense.sum(axis=1), 1.0, atol=tol * 10):
        bad = int(np.argmax(np.abs(dense.sum(axis=1) - 1.0)))
        raise ChainError(f"token.chain: row {bad} of P sums to {dense[bad].sum():.6g}, not 1")
    off_graph = dense.copy()
    np.fill_diagonal(off_graph, 0.0)
    off_graph[graph.adjacency() == 1] = 0.0
    if np.any(off_graph > 0):
        i, j = np.argwhere(off_graph > 0)[0]
        raise ChainError(f"token.chain: P[{i},{j}] > 0 but ({i},{j}) is not an edge of the graph")
    support = (dense > 0).astype(np.int8)
    np.fill_diagonal(support, 0)
    if connected_components(csr_matrix(support), directed=True, connection="strong")[0] != 1:
        raise ChainError("token.chain: P is not irreducible on the graph")
    if mu is None:
        order, pred = breadth_first_order(csr_matrix(support), 0, directed=True, return_predecessors=True)
        w = np.zeros(n)
        w[0] = 1.0
        for j in order[1:]:
            i = pred[j]
            if dense[j, i] <= 0:
                raise ChainError(f"token.chain: P[{i},{j}] > 0 but P[{j},{i}] = 0, so P is not reversible")
            w[j] = w[i] * dense[i, j] / dense[j, i]
        mu_arr = w / w.sum()
    else:
        mu_arr = np.asarray(mu, dtype=np.float64)
        if mu_arr.shape != (n,) or mu_arr.min() <= 0:
            raise ChainError("token.chain: mu must be a positive vector of length n")
        mu_arr = mu_arr / mu_arr.sum()
    flow = mu_arr[:, None] * dense
    if not np.allclose(flow, flow.T, rtol=1e-7, atol=tol * flow.max()):
        i, j = np.unravel_index(int(np.argmax(np.abs(flow - flow.T))), flow.shape)
        raise ChainError(
            f"token.chain: P is not reversible w.r.t. mu (mu_{i} P_{i}{j} != mu_{j} P_{j}{i}); "
            "the SRRW needs a reversible base chain"
        )
    src = np.repeat(np.arange(n), graph.degree)
    p_nb = dense[src, graph.indices]
    p_self = np.diag(dense).copy()
    p_self[p_self <= _SELF_LOOP_EPS] = 0.0
    return _assemble(graph, name, p_nb, p_self, mu_arr)


def base_chain(name: str | BaseChain, graph: Graph) -> BaseChain:
    """'srw' | 'mhrw' | an already-built BaseChain (returned as is)."""
    if isinstance(name, BaseChain):
        return name
    if name == "srw":
        return srw(graph)
    if name == "mhrw":
        return mhrw(graph)
    raise ChainError(f"token.base: unknown base chain {name!r}; choose srw or mhrw (nbrw is not reversible)")


# --------------------------------------------------------------------------------------------------------
# Walkers
# --------------------------------------------------------------------------------------------------------
def _sample_cum(cum: tuple[float, ...] | list[float], u: float) -> int:
    """Inverse-CDF draw from unnormalised cumulative weights; zero-weight entries are never chosen."""
    k = bisect_right(cum, u * cum[-1])
    return k if k < len(cum) else len(cum) - 1


def polynomial_steps(exponent: float, scale: float = 1.0) -> StepSchedule:
    """gamma_n = scale * (n+1)^-exponent (the papers' step-size family; a = 1 is the plain average)."""
    if not 0.0 < exponent <= 1.0:
        raise ChainError(f"token: step-size exponent must be in (0, 1], got {exponent}")

    def step(n: int) -> float:
        return scale * (n + 1.0) ** -exponent

    return step


class Walker(ABC):
    """One token's schedule: where it is, where it has been, and how it picks the next holder.

    ``step(rng)`` moves the token and returns the new holder; ``kernel_row(i)`` exposes the current
    transition row (for tests and for the coordinator's logs); ``visit_counts[i]`` counts the start node
    and every arrival (a token kept by its holder counts as a visit, as in the chain's own time).
    ``entries_examined`` sums the row lengths step() looked at: the per-hop work, O(d_i).
    """

    name: str = "walker"

    def __init__(self, graph: Graph, start: int) -> None:
        if not 0 <= start < graph.n:
            raise ChainError(f"token: start node {start} is not in 0..{graph.n - 1}")
        self.graph = graph
        self.position = int(start)
        self.hops = 0
        self.visit_counts = np.zeros(graph.n, dtype=np.int64)
        self.visit_counts[start] = 1
        self.entries_examined = 0

    @property
    @abstractmethod
    def target(self) -> np.ndarray:
        """The stationary distribution the visit frequencies converge to."""

    @abstractmethod
    def step(self, rng: np.random.Generator) -> int:
        """Move the token one hop and return the new holder."""

    @abstractmethod
    def kernel_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(candidate next nodes, probabilities) from node i under the walker's current state."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n={self.graph.n}, at={self.position}, hops={self.hops})"

    def _arrive(self, j: int) -> int:
        self.position = j
        self.hops += 1
        self.visit_counts[j] += 1
        return j

    def walk(self, hops: int, rng: np.random.Generator) -> np.ndarray:
        """Take ``hops`` steps; return the visited nodes (without the current one)."""
        out = np.empty(hops, dtype=np.int64)
        for t in range(hops):
            out[t] = self.step(rng)
        return out

    def visit_frequency(self) -> np.ndarray:
        """visit_counts normalised to a probability vector."""
        return self.visit_counts / self.visit_counts.sum()

    def kernel_matrix(self) -> np.ndarray:
        """The full current kernel as a dense n x n matrix (rows from kernel_row); small graphs only."""
        return kernel_matrix(self)


def kernel_matrix(walker: Walker) -> np.ndarray:
    """Stack ``walker.kernel_row(i)`` for every node into a dense matrix (tests, small graphs)."""
    n = walker.graph.n
    k = np.zeros((n, n))
    for i in range(n):
        nodes, probs = walker.kernel_row(i)
        np.add.at(k[i], nodes, probs)
    return k


class MarkovWalker(Walker):
    """A token moved by a fixed base chain (srw, mhrw or a user-given reversible P)."""

    def __init__(self, chain: BaseChain, start: int = 0) -> None:
        super().__init__(chain.graph, start)
        self.chain = chain
        self.name = chain.name

    @property
    def target(self) -> np.ndarray:
        return self.chain.mu

    def step(self, rng: np.random.Generator) -> int:
        nodes, _, cum = self.chain.py_rows[self.position]
        self.entries_examined += len(nodes)
        return self._arrive(nodes[_sample_cum(cum, rng.random())])

    def kernel_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        nodes, p = self.chain.row(i)
        return nodes.copy(), p.copy()


class NBRWalker(Walker):
    """Non-backtracking random walk: a uniform neighbour other than the one the token came from.

    It returns to the previous node only at a degree-1 node. Its node marginals converge to d_i / 2|E|
    (like the SRW) but it is not a Markov chain on nodes, so it is a baseline schedule, never an SRRW base.
    """

    name = "nbrw"

    def __init__(self, graph: Graph, start: int = 0) -> None:
        super().__init__(graph, start)
        self.previous = -1  # no previous node before the first hop
        ind, ptr = graph.indices.tolist(), graph.indptr.tolist()
        self._nb = [tuple(ind[ptr[i] : ptr[i + 1]]) for i in range(graph.n)]
        deg = graph.degree.astype(np.float64)
        self._mu = deg / deg.sum()

    @property
    def target(self) -> np.ndarray:
        return self._mu

    def step(self, rng: np.random.Generator) -> int:
        nb = self._nb[self.position]
        d = len(nb)
        self.entries_examined += d
        if d == 1:
            j = nb[0]
        elif self.previous < 0:
            j = nb[min(int(rng.random() * d), d - 1)]
        else:
            k = min(int(rng.random() * (d - 1)), d - 2)
            back = bisect_right(nb, self.previous) - 1  # index of the previous node (neighbours sorted)
            j = nb[k + (k >= back)]
        self.previous = self.position
        return self._arrive(j)

    def kernel_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row from i given the walker's previous node when i is the current holder (else: no history)."""
        nb = self.graph.neighbors(i).copy()
        d = nb.shape[0]
        if d > 1 and i == self.position and self.previous >= 0:
            probs = np.where(nb == self.previous, 0.0, 1.0 / (d - 1))
        else:
            probs = np.full(d, 1.0 / d)
        return nb, probs


class SRRWWalker(Walker):
    """Self-repellent random walk SRRW(alpha) over a reversible base chain.

    ``alpha`` may be a float or a function of the hop count n (the ICML 2023 paper shows a growing alpha
    mixing fast early and reaching low variance later). ``gamma`` defaults to (n+1)^-gamma_exponent.
    With alpha == 0 the step uses exactly the base chain's row and sampling code, so the trajectory is
    bit-for-bit that of ``MarkovWalker`` under the same rng.

    State: ``z = x / mu`` up to a global factor, in one flat float64 buffer (``array('d')`` for cheap
    scalar reads, viewed as numpy for long rows), so a hop reads d_i + 1 entries and writes one.
    """

    def __init__(
        self,
        chain: BaseChain,
        alpha: AlphaSchedule = 1.0,
        *,
        gamma_exponent: float = 1.0,
        gamma: StepSchedule | None = None,
        x0: Literal["uniform", "target"] | np.ndarray = "uniform",
        start: int = 0,
    ) -> None:
        super().__init__(chain.graph, start)
        if not callable(alpha) and not (float(alpha) >= 0.0 and np.isfinite(alpha)):
            raise ChainError(f"token.alpha must be a finite number >= 0, got {alpha}")
        self.chain = chain
        self.alpha = alpha if callable(alpha) else float(alpha)
        self.gamma = gamma if gamma is not None else polynomial_steps(gamma_exponent)
        self.name = f"srrw({chain.name})"
        n = chain.n
        if isinstance(x0, str):
            if x0 == "uniform":
                y = np.full(n, 1.0 / n)
            elif x0 == "target":
                y = chain.mu.astype(np.float64).copy()
            else:
                raise ChainError(f"token: x0 must be 'uniform', 'target' or a positive vector, got {x0!r}")
        else:
            y = np.asarray(x0, dtype=np.float64).copy()
            if y.shape != (n,) or not np.all(y > 0) or not np.all(np.isfinite(y)):
                raise ChainError("token: x0 must be a strictly positive vector of length n")
            y /= y.sum()
        self._inv_mu = (1.0 / chain.mu).tolist()
        self._z = array("d", (y / chain.mu).tolist())  # x_j / mu_j = scale * z_j
        self._zn = np.frombuffer(self._z, dtype=np.float64)  # numpy view of the same memory
        self._scale = 1.0
        self._ptr = chain.row_ptr.tolist()

    @property
    def target(self) -> np.ndarray:
        return self.chain.mu

    @property
    def x(self) -> np.ndarray:
        """The current visit measure x_n (a fresh O(n) copy; never used on the hot path)."""
        x = self._scale * self._zn * self.chain.mu
        return x / x.sum()

    def current_alpha(self) -> float:
        """alpha at the current hop (evaluates the schedule when alpha is a function)."""
        return float(self.alpha(self.hops)) if callable(self.alpha) else self.alpha

    def _weights(self, i: int, alpha: float) -> tuple[tuple[int, ...], list[float] | np.ndarray]:
        """Unnormalised K_i.: P_ij (z_j / min_k z_k)^-alpha over the row of i (dividing by the row minimum
        keeps every factor in (0, 1], so no overflow and at least one weight is exactly P_ij)."""
        nodes, probs, _ = self.chain.py_rows[i]
        if len(nodes) <= _PY_ROW_MAX:
            z = self._z
            zs = [z[j] for j in nodes]
            inv = 1.0 / min(zs)
            return nodes, [p * (v * inv) ** -alpha for p, v in zip(probs, zs, strict=True)]
        a, b = self._ptr[i], self._ptr[i + 1]
        r = self._zn[self.chain.row_nodes[a:b]]
        return nodes, self.chain.row_p[a:b] * (r * (1.0 / r.min())) ** -alpha

    def step(self, rng: np.random.Generator) -> int:
        i = self.position
        alpha = self.alpha if not callable(self.alpha) else float(self.alpha(self.hops))
        if alpha == 0.0:
            nodes, _, cum = self.chain.py_rows[i]
            k = _sample_cum(cum, rng.random())
        else:
            nodes, w = self._weights(i, alpha)
            cw = list(accumulate(w)) if isinstance(w, list) else np.cumsum(w).tolist()
            k = _sample_cum(cw, rng.random())
        self.entries_examined += len(nodes)
        j = nodes[k]
        # x_{n+1} = (1 - g) x_n + g e_j, with x/mu = scale * z: shrink the scale, bump one entry of z
        g = float(self.gamma(self.hops + 1))
        if not 0.0 < g < 1.0:
            raise ChainError(f"token: gamma_{self.hops + 1} = {g} must be in (0, 1)")
        self._scale *= 1.0 - g
        self._z[j] += g * self._inv_mu[j] / self._scale
        if self._scale < _RESCALE_BELOW:  # rare: fold the scale back into z (O(n) once per ~1e150 shrink)
            self._zn *= self._scale
            self._scale = 1.0
        return self._arrive(j)

    def kernel_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        alpha = self.current_alpha()
        nodes, probs, _ = self.chain.py_rows[i]
        if alpha == 0.0:
            return np.array(nodes, dtype=np.int64), np.array(probs)
        _, w = self._weights(i, alpha)
        wa = np.asarray(w, dtype=np.float64)
        return np.array(nodes, dtype=np.int64), wa / wa.sum()


ChainKind = Literal["srw", "mhrw", "nbrw", "srrw"]


def make_walker(
    chain: ChainKind,
    graph: Graph,
    *,
    base: str | BaseChain = "mhrw",
    alpha: AlphaSchedule = 0.0,
    gamma_exponent: float = 1.0,
    x0: Literal["uniform", "target"] | np.ndarray = "uniform",
    start: int = 0,
) -> Walker:
    """Build one walker of the given kind (``base``/``alpha``/``gamma_exponent``/``x0`` apply to srrw)."""
    if chain == "srw":
        return MarkovWalker(srw(graph), start)
    if chain == "mhrw":
        return MarkovWalker(mhrw(graph), start)
    if chain == "nbrw":
        return NBRWalker(graph, start)
    if chain == "srrw":
        return SRRWWalker(base_chain(base, graph), alpha, gamma_exponent=gamma_exponent, x0=x0, start=start)
    raise ChainError(f"token.chain: unknown chain {chain!r}; choose srw, mhrw, nbrw or srrw")
