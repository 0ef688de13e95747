"""The ``token:`` block of a job config, and the builders that turn it into walkers and optimisers.

Example (embedded by the job config, with ``mode: token``, ``workers: 64``, ``simulate: {hops: 20000}``)::

    token: {chain: srrw, base: mhrw, alpha: 5, tokens: 1,
            graph: {kind: watts-strogatz, k: 4, p: 0.1, seed: 1}}

Defaults for the step sizes come from the SA-SRRW paper's recommended regime beta_n = o(gamma_n)
(see dcoord.walk.sa): gamma_exponent a = 0.8 < beta_exponent b = 0.9.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from dcoord.configbase import MAX_WORKERS, ConfigModel, Seed
from dcoord.walk.chains import MarkovWalker, NBRWalker, SRRWWalker, Walker, base_chain
from dcoord.walk.graphs import Graph, build_graph
from dcoord.walk.sa import DEFAULT_BETA_EXPONENT, DEFAULT_GAMMA_EXPONENT, SASRRW, GradFn, regime

GraphKind = Literal[
    "ring", "torus", "complete", "random-regular", "erdos-renyi", "watts-strogatz", "edge-list"
]

# which optional fields each kind needs / accepts (anything else is a probable typo and is refused)
_NEEDS: dict[str, tuple[str, ...]] = {
    "ring": (),
    "torus": (),
    "complete": (),
    "random-regular": ("d",),
    "erdos-renyi": ("p",),
    "watts-strogatz": (),  # k and p default to 4 and 0.1
    "edge-list": ("path",),
}
_ACCEPTS: dict[str, tuple[str, ...]] = {  # seed is accepted everywhere so templates can always set it
    "ring": ("seed",),
    "torus": ("rows", "cols", "seed"),
    "complete": ("seed",),
    "random-regular": ("d", "seed"),
    "erdos-renyi": ("p", "seed"),
    "watts-strogatz": ("k", "p", "seed"),
    "edge-list": ("path", "relabel", "seed"),
}


class GraphConfig(ConfigModel):
    """The worker graph the tokens walk on. ``seed: null`` means 'use the job seed'."""

    kind: GraphKind = Field(default="watts-strogatz", description="graph family (edge-list: from path)")
    k: int | None = Field(
        default=None, ge=2, le=MAX_WORKERS, description="watts-strogatz: neighbours in the ring lattice (even)"
    )
    p: float | None = Field(
        default=None, ge=0.0, le=1.0, description="erdos-renyi edge / ws rewiring probability"
    )
    d: int | None = Field(default=None, ge=1, le=MAX_WORKERS, description="random-regular: degree")
    seed: Seed | None = Field(default=None, description="graph seed; null = the job seed")
    path: str | None = Field(default=None, description="edge-list: file with 'u v' per line, '#' comments")
    rows: int | None = Field(
        default=None, ge=1, le=MAX_WORKERS, description="torus: rows (default: most square factorisation)"
    )
    cols: int | None = Field(default=None, ge=1, le=MAX_WORKERS, description="torus: columns")
    relabel: bool = Field(default=False, description="edge-list: map the ids that occur onto 0..n-1")

    @field_validator("kind", mode="before")
    @classmethod
    def _dashes(cls, v: Any) -> Any:
        return v.replace("_", "-").lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> GraphConfig:
        given = {f for f in self.model_fields_set if f not in ("kind",)}
        if self.kind == "watts-strogatz":  # the small-world defaults used in dcoord's examples
            if self.k is None:
                self.k = 4
            if self.p is None:
                self.p = 0.1
        missing = [f for f in _NEEDS[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"token.graph: kind {self.kind} needs {', '.join(missing)}")
        # a field set to its null/false default is not a stray (e.g. a model_dump() round trip)
        stray = [f for f in sorted(given - set(_ACCEPTS[self.kind])) if getattr(self, f) not in (None, False)]
        if stray:
            verb = "does" if len(stray) == 1 else "do"
            raise ValueError(
                f"token.graph: {', '.join(stray)} {verb} not apply to kind {self.kind} "
                f"(it takes {', '.join(_ACCEPTS[self.kind]) or 'no parameters'})"
            )
        if self.kind == "watts-strogatz" and self.k is not None and self.k % 2:
            raise ValueError(f"token.graph: watts-strogatz needs an even k, got k={self.k}")
        if self.kind == "erdos-renyi" and self.p == 0.0:
            raise ValueError("token.graph: erdos-renyi needs p > 0")
        return self


class TokenConfig(ConfigModel):
    """Token schedule: which chain moves the token(s), over which graph, with which step sizes."""

    chain: Literal["srw", "mhrw", "nbrw", "srrw"] = Field(
        default="srrw", description="the walk: simple, Metropolis-Hastings, non-backtracking or self-repellent"
    )
    base: Literal["srw", "mhrw"] = Field(default="mhrw", description="srrw's base chain (must be reversible)")
    alpha: float = Field(default=5.0, ge=0.0, le=10_000.0,
                         description="srrw repellence strength (0..10000); 0 is the base chain")
    tokens: int = Field(default=1, ge=1, le=MAX_WORKERS, description="tokens walking concurrently, each with its own model")
    graph: GraphConfig = Field(default_factory=GraphConfig)
    gamma_exponent: float = Field(
        default=DEFAULT_GAMMA_EXPONENT, description="a in (0.5, 1]: gamma_n=(n+1)^-a for srrw's x"
    )
    beta_exponent: float = Field(
        default=DEFAULT_BETA_EXPONENT, description="b in (0.5, 1]: beta_n=lr_scale*(n+1)^-b for theta"
    )
    lr: float | None = Field(default=None, gt=0.0, description="constant step size (replaces beta_n)")
    lr_scale: float = Field(default=1.0, gt=0.0, description="multiplier on beta_n")
    importance_weighting: Literal["auto", "on", "off"] = Field(
        default="auto", description="weight node i's gradient by (1/N)/mu_i; auto = when mu is not uniform"
    )
    x0: Literal["uniform", "target"] = Field(default="uniform", description="srrw's initial visit measure")
    start: int | Literal["random"] = Field(default="random", description="start node(s); random = distinct")

    @field_validator("gamma_exponent", "beta_exponent")
    @classmethod
    def _analysed_exponent(cls, v: float, info: Any) -> float:
        """a and b must lie where SA-SRRW is analysed (spec and paper): (0.5, 1], i.e. the steps sum to
        infinity (the iterates keep moving) while their squares sum to a finite value (the noise averages out)."""
        what = {
            "gamma_exponent": "a, the visit-measure step gamma_n = (n+1)^-a",
            "beta_exponent": "b, the model step beta_n = lr_scale * (n+1)^-b",
        }[info.field_name]
        if not (isinstance(v, int | float) and 0.5 < v <= 1.0):
            raise ValueError(
                f"token.{info.field_name} ({what}) must be in (0.5, 1], the range SA-SRRW is analysed for; "
                f"got {v}. Use e.g. 0.8 (a) and 0.9 (b): b > a is the paper's recommended regime"
            )
        return float(v)

    @model_validator(mode="after")
    def _alpha_only_for_srrw(self) -> TokenConfig:
        # the default counts as unset: a config passed on (the coordinator's public copy to its workers)
        # carries every default as if written
        default = type(self).model_fields["alpha"].default
        if self.chain != "srrw" and "alpha" in self.model_fields_set and self.alpha not in (0.0, default):
            raise ValueError(f"token.alpha applies only to chain: srrw (chain is {self.chain})")
        if isinstance(self.start, int) and self.start < 0:
            raise ValueError(f"token.start must be a node id >= 0 or 'random', got {self.start}")
        return self

    @property
    def regime(self) -> str:
        """The SA-SRRW timescale regime of (gamma_exponent, beta_exponent); see dcoord.walk.sa.regime."""
        return regime(self.gamma_exponent, self.beta_exponent)


def graph_from_config(cfg: GraphConfig, n: int, seed: int) -> Graph:
    """Build the graph for n workers; the graph's own seed wins over the job seed."""
    g = build_graph(
        cfg.kind,
        n,
        k=cfg.k,
        p=cfg.p,
        d=cfg.d,
        seed=cfg.seed if cfg.seed is not None else seed,
        path=cfg.path,
        rows=cfg.rows,
        cols=cfg.cols,
        relabel=cfg.relabel,
    )
    if g.n != n:
        raise ValueError(f"token.graph: the {cfg.kind} graph has {g.n} nodes but the job has {n} workers")
    return g


def token_rngs(seed: int, tokens: int) -> list[np.random.Generator]:
    """Independent, reproducible generators: one for the start nodes (index 0), then one per token."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(tokens + 1)]


def start_nodes(cfg: TokenConfig, n: int, seed: int) -> list[int]:
    """Start node of each token: distinct random nodes (while tokens <= n), or the configured node."""
    if isinstance(cfg.start, int):
        if cfg.start >= n:
            raise ValueError(f"token.start={cfg.start} is not a node of a graph with {n} nodes")
        return [cfg.start] * cfg.tokens
    rng = token_rngs(seed, cfg.tokens)[0]
    if cfg.tokens <= n:
        return [int(v) for v in rng.choice(n, size=cfg.tokens, replace=False)]
    return [int(v) for v in rng.integers(0, n, size=cfg.tokens)]


def build_walkers(cfg: TokenConfig, n: int, seed: int, graph: Graph | None = None) -> list[Walker]:
    """One walker per token over the configured graph (the chain's rows are built once and shared).

    Each SRRW token keeps its own visit measure x: tokens repel from their own history, not each other's.
    """
    g = graph if graph is not None else graph_from_config(cfg.graph, n, seed)
    starts = start_nodes(cfg, g.n, seed)
    if cfg.chain == "nbrw":
        return [NBRWalker(g, s) for s in starts]
    if cfg.chain in ("srw", "mhrw"):
        chain = base_chain(cfg.chain, g)
        return [MarkovWalker(chain, s) for s in starts]
    chain = base_chain(cfg.base, g)
    return [
        SRRWWalker(chain, cfg.alpha, gamma_exponent=cfg.gamma_exponent, x0=cfg.x0, start=s) for s in starts
    ]


def build_optimizers(
    cfg: TokenConfig, walkers: Sequence[Walker], grad: GradFn, theta0: np.ndarray
) -> list[SASRRW]:
    """An SA-SRRW optimiser per walker, with the config's step sizes and importance weighting."""
    iw = {"auto": None, "on": True, "off": False}[cfg.importance_weighting]
    return [
        SASRRW(
            w,
            grad,
            theta0,
            beta_exponent=cfg.beta_exponent,
            lr=cfg.lr,
            lr_scale=cfg.lr_scale,
            importance_weighting=iw,
        )
        for w in walkers
    ]
