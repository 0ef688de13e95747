"""Virtual-time simulation of token schedules (``mode: token``) on graphs of thousands of nodes.

One unit of virtual time is one hop of every token (tokens move concurrently, one hop each per tick), so
``hops`` is both the virtual duration and the number of hops per token. The simulator drives the same
Walker / SASRRW objects as the runtime, so visit counts and iterate errors here are what a real run with
the same seed and config would produce (without injected delays).

``make_logreg_problem`` builds the workload used by dcoord's SRRW bench: L2-regularised binary logistic
regression with label-skewed shards. The ICLR 2024 SA-SRRW paper runs L2-regularised binary
classification on a standard (LIBSVM-style) dataset spread over the nodes of a graph; scikit-learn bundles
no such dataset, so the default here is its bundled ``digits`` (0-4 vs 5-9), standardised and projected
on its leading principal components, or a synthetic Gaussian task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from dcoord.walk.config import (
    TokenConfig,
    build_optimizers,
    build_walkers,
    graph_from_config,
    token_rngs,
)
from dcoord.walk.sa import log_spaced_hops


class Problem(Protocol):
    """What the simulator needs from an optimisation problem over the nodes."""

    n_nodes: int
    optimum: np.ndarray

    def grad(self, node: int, theta: np.ndarray) -> np.ndarray: ...

    def loss(self, theta: np.ndarray) -> float: ...


@dataclass
class LogRegProblem:
    """F(theta) = (1/N) sum_i F_i(theta), F_i = mean logistic loss of shard i + (reg/2) ||theta||^2."""

    features: list[np.ndarray]  # per node: (m_i, dim), last column is the bias feature 1
    labels: list[np.ndarray]  # per node: (m_i,) in {-1, +1}
    reg: float
    optimum: np.ndarray = field(init=False)
    optimum_loss: float = field(init=False)

    def __post_init__(self) -> None:
        self.optimum = self._solve()
        self.optimum_loss = self.loss(self.optimum)

    @property
    def n_nodes(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features[0].shape[1])

    @property
    def theta0(self) -> np.ndarray:
        return np.zeros(self.dim)

    def grad(self, node: int, theta: np.ndarray) -> np.ndarray:
        """Gradient of node ``node``'s local objective F_node at theta (its whole shard)."""
        x, y = self.features[node], self.labels[node]
        s = -y * expit(-y * (x @ theta))
        return x.T @ s / y.shape[0] + self.reg * theta

    def local_loss(self, node: int, theta: np.ndarray) -> float:
        x, y = self.features[node], self.labels[node]
        return float(-np.mean(log_expit(y * (x @ theta))) + 0.5 * self.reg * theta @ theta)

    def loss(self, theta: np.ndarray) -> float:
        """The global objective (plain average over nodes)."""
        return float(np.mean([self.local_loss(i, theta) for i in range(self.n_nodes)]))

    def _pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.concatenate(self.features)
        y = np.concatenate(self.labels)
        w = np.concatenate([np.full(len(lab), 1.0 / (len(lab) * self.n_nodes)) for lab in self.labels])
        return x, y, w

    def _solve(self) -> np.ndarray:
        """The optimum to ~1e-12 gradient norm: scipy trust-region Newton, then Newton polishing."""
        x, y, w = self._pooled()
        reg = self.reg

        def fun(t: np.ndarray) -> float:
            return float(-(w @ log_expit(y * (x @ t))) + 0.5 * reg * t @ t)

        def jac(t: np.ndarray) -> np.ndarray:
            return x.T @ (w * -y * expit(-y * (x @ t))) + reg * t

        def hess(t: np.ndarray) -> np.ndarray:
            p = expit(x @ t)
            return (x * (w * p * (1 - p))[:, None]).T @ x + reg * np.eye(x.shape[1])

        res = minimize(
            fun, np.zeros(x.shape[1]), jac=jac, hess=hess, method="trust-exact", options={"gtol": 1e-12}
        )
        t = res.x
        for _ in range(5):
            g = jac(t)
            if np.linalg.norm(g) < 1e-13:
                break
            t = t - np.linalg.solve(hess(t), g)
        gnorm = float(np.linalg.norm(jac(t)))
        if not gnorm < 1e-9:  # pragma: no cover - strongly convex, Newton converges
            raise RuntimeError(f"logistic optimum not found to precision (|grad| = {gnorm:.2e})")
        return t


def _digits_data(features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float64)
    y = np.where(data.target >= 5, 1.0, -1.0)  # 0-4 vs 5-9
    x = x[:, x.std(axis=0) > 0]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    if features and features < x.shape[1]:
        # PCA via SVD: keeps the problem well conditioned and a gradient cheap
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:features].T
        x /= x.std(axis=0)
    return x, y


def _synthetic_data(features: int, seed: int, samples: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = features or 10
    w = rng.normal(size=d) / np.sqrt(d)
    x = rng.normal(size=(samples, d))
    y = np.where(rng.random(samples) < expit(3.0 * x @ w), 1.0, -1.0)
    return x, y


def make_logreg_problem(
    n_nodes: int,
    seed: int,
    heterogeneity: float = 0.8,
    *,
    dataset: Literal["digits", "synthetic"] = "digits",
    samples_per_node: int | None = None,
    features: int = 16,
    reg: float = 0.05,
    layout: Literal["blocks", "alternate"] = "blocks",
) -> LogRegProblem:
    """Label-skewed shards of a binary task over ``n_nodes`` nodes.

    Node i prefers class +1 (first half of the nodes, ``layout='blocks'``, so that on ring-like graphs
    whole regions of the graph are skewed the same way and a slowly mixing walk pays for it) or -1, and
    draws a fraction (1 + heterogeneity)/2 of its samples from its preferred class: 0 gives iid shards,
    1 gives single-class shards. Samples are dealt without replacement while the class pools last.
    """
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be >= 1, got {n_nodes}")
    if not 0.0 <= heterogeneity <= 1.0:
        raise ValueError(f"heterogeneity must be in [0, 1], got {heterogeneity}")
    if dataset == "digits":
        x, y = _digits_data(features, seed)
    elif dataset == "synthetic":
        x, y = _synthetic_data(features, seed)
    else:
        raise ValueError(f"dataset must be 'digits' or 'synthetic', got {dataset!r}")
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    rng = np.random.default_rng(seed)
    m = samples_per_node if samples_per_node is not None else max(4, min(64, x.shape[0] // n_nodes))
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in (1.0, -1.0)}
    cursor = {1.0: 0, -1.0: 0}

    def take(c: float, k: int) -> np.ndarray:
        out = []
        for _ in range(k):
            if cursor[c] == pools[c].shape[0]:
                pools[c] = rng.permutation(pools[c])
                cursor[c] = 0
            out.append(pools[c][cursor[c]])
            cursor[c] += 1
        return np.asarray(out, dtype=np.int64)

    feats, labs = [], []
    for i in range(n_nodes):
        pref = 1.0 if (i < n_nodes / 2 if layout == "blocks" else i % 2 == 0) else -1.0
        k_pref = int(round(m * (1.0 + heterogeneity) / 2.0))
        idx = np.concatenate([take(pref, k_pref), take(-pref, m - k_pref)])
        feats.append(x[idx])
        labs.append(y[idx])
    return LogRegProblem(features=feats, labels=labs, reg=reg)


def simulate_tokens(
    cfg: TokenConfig,
    n: int,
    hops: int,
    seed: int,
    problem: Problem | None = None,
    *,
    record_points: int = 60,
) -> dict[str, Any]:
    """Run ``cfg.tokens`` tokens for ``hops`` ticks of virtual time on n nodes.

    Returns visit_counts (per node, summed over tokens), the target distribution, the total-variation
    distance of the visit frequencies to it, per-hop work, and - with a problem - the squared error of the
    iterates vs hops: ``sq_error`` (mean over tokens of ||theta_k - theta*||^2) and ``sq_error_of_mean``
    (of the tokens' average model), at the log-spaced hops ``record_hops``.
    """
    if hops < 0:
        raise ValueError(f"hops must be >= 0, got {hops}")
    graph = graph_from_config(cfg.graph, n, seed)
    walkers = build_walkers(cfg, n, seed, graph=graph)
    rngs = token_rngs(seed, cfg.tokens)[1:]
    out: dict[str, Any] = {
        "n": n,
        "hops": hops,
        "tokens": cfg.tokens,
        "chain": cfg.chain,
        "base": cfg.base if cfg.chain == "srrw" else None,
        "alpha": cfg.alpha if cfg.chain == "srrw" else 0.0,
        "graph": graph.name,
        "edges": graph.num_edges,
        "start_nodes": [w.position for w in walkers],
    }
    if problem is None:
        for _ in range(hops):
            for w, r in zip(walkers, rngs, strict=True):
                w.step(r)
    else:
        if problem.n_nodes != n:
            raise ValueError(f"the problem has {problem.n_nodes} nodes but the simulation has n={n}")
        theta0 = getattr(problem, "theta0", np.zeros_like(problem.optimum))
        opts = build_optimizers(cfg, walkers, problem.grad, theta0)
        record = log_spaced_hops(hops, record_points)
        sq, sq_mean = [], []
        ri = 0
        for t in range(1, hops + 1):
            for o, r in zip(opts, rngs, strict=True):
                o.step(r)
            if ri < record.shape[0] and t == record[ri]:
                thetas = np.stack([o.theta for o in opts])
                if not np.all(np.isfinite(thetas)):
                    raise FloatingPointError(f"token: theta diverged by hop {t}; lower token.lr / lr_scale")
                d = thetas - problem.optimum
                sq.append(float(np.mean(np.sum(d * d, axis=1))))
                dm = thetas.mean(axis=0) - problem.optimum
                sq_mean.append(float(dm @ dm))
                ri += 1
        final = np.mean([o.theta for o in opts], axis=0)
        out.update(
            record_hops=[int(h) for h in record],
            sq_error=sq,
            sq_error_of_mean=sq_mean,
            final_theta=final.tolist(),
            final_loss=float(problem.loss(final)),
            optimum_loss=float(problem.loss(problem.optimum)),
        )
    counts = np.sum([w.visit_counts for w in walkers], axis=0)
    target = walkers[0].target
    out["visit_counts"] = [int(c) for c in counts]
    out["target"] = [float(v) for v in target]
    out["tv_distance"] = float(0.5 * np.abs(counts / counts.sum() - target).sum())
    total_hops = sum(w.hops for w in walkers)
    out["entries_examined_per_hop"] = float(sum(w.entries_examined for w in walkers) / max(total_hops, 1))
    return out
