"""SA-SRRW, the token config and the virtual-time token simulator."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dcoord.sim.token import make_logreg_problem, simulate_tokens
from dcoord.walk import (
    SASRRW,
    GraphConfig,
    MarkovWalker,
    NBRWalker,
    SRRWWalker,
    TokenConfig,
    build_optimizers,
    build_walkers,
    from_edges,
    log_spaced_hops,
    mhrw,
    regime,
    srw,
    watts_strogatz,
)

EXAMPLE = {
    "chain": "srrw",
    "base": "mhrw",
    "alpha": 5,
    "tokens": 1,
    "graph": {"kind": "watts-strogatz", "k": 4, "p": 0.1, "seed": 1},
}


# ------------------------------------------------------------------------------------------------ problem
def test_logreg_problem_optimum_and_skew():
    prob = make_logreg_problem(20, seed=0, heterogeneity=0.8)
    full = np.mean([prob.grad(i, prob.optimum) for i in range(prob.n_nodes)], axis=0)
    assert np.linalg.norm(full) < 1e-9
    assert prob.loss(prob.optimum) < prob.loss(prob.optimum + 0.01)
    # the first half of the nodes prefer class +1 with share (1 + 0.8) / 2 = 0.9
    share = [np.mean(prob.labels[i] > 0) for i in range(20)]
    assert min(share[:10]) >= 0.85 and max(share[10:]) <= 0.15
    # local optima differ from the global one: the shards really are heterogeneous
    assert np.linalg.norm(prob.grad(0, prob.optimum)) > 0.05
    syn = make_logreg_problem(8, seed=1, heterogeneity=0.0, dataset="synthetic", features=5)
    assert syn.dim == 6
    with pytest.raises(ValueError):
        make_logreg_problem(8, seed=1, heterogeneity=1.5)


# ------------------------------------------------------------------------------------------------ SA-SRRW
def _sq(o: SASRRW, opt: np.ndarray) -> float:
    d = o.theta - opt
    return float(d @ d)


@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_sa_srrw_converges_on_logistic(alpha):
    g = watts_strogatz(30, 4, 0.1, seed=1)
    prob = make_logreg_problem(30, seed=0, heterogeneity=0.8)
    start = _sq_start = float(prob.optimum @ prob.optimum)
    w = SRRWWalker(mhrw(g), alpha, gamma_exponent=0.8, start=0)
    o = SASRRW(w, prob.grad, prob.theta0, beta_exponent=0.9, lr_scale=5.0)
    res = o.run(15_000, np.random.default_rng(alpha == 0), record_at=[100, 15_000], optimum=prob.optimum)
    assert res["record_hops"] == [100, 15_000]
    assert res["sq_error"][-1] < 0.02 * start, (res["sq_error"], _sq_start)
    assert res["sq_error"][-1] < res["sq_error"][0]


def test_importance_weighting_targets_the_plain_average():
    # a star glued to a ring: SRW visits the hub far more than 1/N; without weights SA minimises the
    # degree-weighted objective, with (1/N)/mu_i weights it finds the plain-average optimum
    n = 16
    edges = [(0, i) for i in range(1, 8)] + [(i, i + 1) for i in range(7, n - 1)] + [(n - 1, 1)]
    g = from_edges(n, edges)
    prob = make_logreg_problem(n, seed=3, heterogeneity=1.0, layout="alternate")
    errs = {}
    for iw in (None, False):
        w = MarkovWalker(srw(g), start=0)
        o = SASRRW(w, prob.grad, prob.theta0, beta_exponent=0.9, lr_scale=2.0, importance_weighting=iw)
        assert (o.weights is not None) == (iw is None)  # auto: on, because SRW's target is not uniform
        o.run(20_000, np.random.default_rng(0))
        errs[iw] = _sq(o, prob.optimum)
    assert errs[None] < 0.2 * errs[False], errs
    assert SASRRW(MarkovWalker(mhrw(g)), prob.grad, prob.theta0).weights is None  # uniform target


def test_constant_step_and_regimes():
    g = watts_strogatz(20, 4, 0.1, seed=2)
    prob = make_logreg_problem(20, seed=0)
    o = SASRRW(NBRWalker(g), prob.grad, prob.theta0, lr=0.05)
    assert o.beta(1) == o.beta(10_000) == 0.05
    o.run(5000, np.random.default_rng(0))
    assert _sq(o, prob.optimum) < 0.1 * float(prob.optimum @ prob.optimum)
    assert regime(0.8, 0.9) == "beta=o(gamma)"
    assert regime(0.8, 0.8) == "beta=gamma"
    assert regime(0.9, 0.8) == "gamma=o(beta)"
    with pytest.raises(ValueError):
        SASRRW(NBRWalker(g), prob.grad, prob.theta0, beta_exponent=0.4)
    hops = log_spaced_hops(1000, 20)
    assert hops[0] == 1 and hops[-1] == 1000 and np.all(np.diff(hops) > 0)


def test_divergence_is_reported():
    g = watts_strogatz(20, 4, 0.1, seed=2)

    def grad(node: int, theta: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return -2.0 * theta  # gradient ascent on ||theta||^2: blows up

    o = SASRRW(MarkovWalker(mhrw(g)), grad, np.ones(2), lr=10.0)
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(FloatingPointError, match="diverged"):
        o.run(2000, np.random.default_rng(0), record_at=[2000])


# ------------------------------------------------------------------------------------------------ config
def test_token_config_example_and_defaults():
    cfg = TokenConfig.model_validate(EXAMPLE)
    assert cfg.graph.kind == "watts-strogatz" and cfg.graph.seed == 1
    assert (cfg.gamma_exponent, cfg.beta_exponent) == (0.8, 0.9) and cfg.regime == "beta=o(gamma)"
    d = TokenConfig()
    assert d.chain == "srrw" and d.base == "mhrw" and d.graph.k == 4 and d.graph.p == 0.1
    assert TokenConfig.model_validate(d.model_dump()) == d


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"chian": "srrw"}, "Extra inputs"),
        ({"alpha": -1}, "greater than or equal"),
        ({"tokens": 0}, "greater than or equal"),
        ({"chain": "mhrw", "alpha": 3}, "alpha applies only to chain: srrw"),
        ({"base": "nbrw"}, "srw"),
        ({"graph": {"kind": "erdos-renyi"}}, "needs p"),
        ({"graph": {"kind": "random-regular"}}, "needs d"),
        ({"graph": {"kind": "edge-list"}}, "needs path"),
        ({"graph": {"kind": "ring", "p": 0.2}}, "p does not apply to kind ring"),
        ({"graph": {"kind": "watts-strogatz", "k": 3}}, "even k"),
        ({"graph": {"kind": "hypercube"}}, "kind"),
        ({"gamma_exponent": 0.5}, r"token.gamma_exponent \(a, the visit-measure step .*must be in \(0.5, 1\]"),
        ({"gamma_exponent": 1.2}, r"gamma_exponent .*must be in \(0.5, 1\].*got 1.2"),
        ({"beta_exponent": 0.3}, r"token.beta_exponent \(b, the model step .*must be in \(0.5, 1\].*got 0.3"),
        ({"beta_exponent": 1.01}, r"beta_exponent .*must be in \(0.5, 1\]"),
        ({"lr": 0}, "greater than 0"),
    ],
)
def test_token_config_errors(bad, match):
    with pytest.raises(ValidationError, match=match):
        TokenConfig.model_validate(bad)


def test_graph_config_accepts_underscores():
    assert GraphConfig.model_validate({"kind": "random_regular", "d": 3}).kind == "random-regular"


def test_build_walkers():
    cfg = TokenConfig.model_validate({**EXAMPLE, "tokens": 3})
    ws = build_walkers(cfg, 64, seed=7)
    assert len(ws) == 3 and all(isinstance(w, SRRWWalker) for w in ws)
    assert len({w.position for w in ws}) == 3  # distinct random starts
    assert [w.position for w in build_walkers(cfg, 64, seed=7)] == [w.position for w in ws]
    assert all(w.graph.n == 64 and w.alpha == 5.0 for w in ws)
    nb = build_walkers(TokenConfig(chain="nbrw", start=5), 32, seed=0)
    assert isinstance(nb[0], NBRWalker) and nb[0].position == 5
    with pytest.raises(ValueError, match="rows\\*cols = 3\\*4 = 12 but n=64"):
        build_walkers(TokenConfig(graph={"kind": "torus", "rows": 3, "cols": 4}), 64, seed=0)
    opts = build_optimizers(cfg, ws, lambda i, t: t, np.zeros(2))
    assert len(opts) == 3 and all(o.weights is None for o in opts)


# ------------------------------------------------------------------------------------------------ simulator
def test_simulate_tokens_visits_and_determinism():
    cfg = TokenConfig.model_validate({**EXAMPLE, "tokens": 2})
    a = simulate_tokens(cfg, 2000, hops=3000, seed=3)
    b = simulate_tokens(cfg, 2000, hops=3000, seed=3)
    assert a["visit_counts"] == b["visit_counts"]
    assert len(a["visit_counts"]) == 2000 and sum(a["visit_counts"]) == 2 * 3001
    assert a["entries_examined_per_hop"] <= 5.0  # WS k=4 mean degree 4, plus MHRW self-loops
    assert simulate_tokens(cfg, 2000, hops=3000, seed=4)["visit_counts"] != a["visit_counts"]


def test_simulate_tokens_with_problem():
    n = 40
    prob = make_logreg_problem(n, seed=0, heterogeneity=0.8)
    cfg = TokenConfig.model_validate({**EXAMPLE, "lr_scale": 5.0})
    out = simulate_tokens(cfg, n, hops=8000, seed=1, problem=prob, record_points=20)
    err = out["sq_error"]
    assert len(err) == len(out["record_hops"]) and out["record_hops"][-1] == 8000
    assert err[-1] < 0.05 * err[0]
    assert out["final_loss"] >= out["optimum_loss"] - 1e-12
    assert out["final_loss"] - out["optimum_loss"] < 0.01
    assert out["tv_distance"] < 0.1
    with pytest.raises(ValueError, match="problem has 40 nodes"):
        simulate_tokens(cfg, 50, hops=10, seed=0, problem=prob)


@pytest.mark.parametrize("chain, cls", [("srw", MarkovWalker), ("mhrw", MarkovWalker), ("nbrw", NBRWalker)])
def test_build_walkers_other_chains_share_rows(chain, cls):
    ws = build_walkers(TokenConfig(chain=chain, tokens=2), 30, seed=1)
    assert all(isinstance(w, cls) for w in ws)
    if cls is MarkovWalker:
        assert ws[0].chain is ws[1].chain and ws[0].chain.name == chain


@pytest.mark.parametrize("a,b", [(0.51, 1.0), (1.0, 1.0), (0.8, 0.9), (0.9, 0.8)])
def test_token_config_accepts_the_analysed_range(a, b):
    cfg = TokenConfig(gamma_exponent=a, beta_exponent=b)
    assert (cfg.gamma_exponent, cfg.beta_exponent) == (a, b)


def test_token_exponent_error_is_one_line_through_the_job_loader():
    from dcoord.config import ConfigError, load_config

    data = {"name": "t", "mode": "token", "workers": 8, "token": {"gamma_exponent": 0.5}}
    with pytest.raises(ConfigError) as e:
        load_config(None, data=data)
    msg = str(e.value)
    assert "token.gamma_exponent" in msg and "(0.5, 1]" in msg and "\n" not in msg
