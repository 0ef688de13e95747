"""SA-SRRW's step size and the token schedule's decode weights against updates written out here.

Pure numpy (no torch import): this file is the mutation-testing tier of dcoord/walk/sa.py and schedule.py.
theta_{n+1} = theta_n - beta_{n+1} w_{X_{n+1}} grad F_{X_{n+1}}(theta_n), beta_n = lr_scale (n+1)^-b, and the
token mode folds beta of hop r (0-based) = lr_scale (r+2)^-b into the decode coefficient of round r.
"""

from __future__ import annotations

import numpy as np
import pytest

from dcoord.walk import SASRRW, MarkovWalker, TokenConfig, build_walkers, srw, watts_strogatz
from dcoord.walk.schedule import TokenSchedule


def test_sa_srrw_steps_with_beta_of_the_next_hop():
    """theta_{n+1} = theta_n - lr_scale (n+2)^-b w_X grad F_X(theta_n): replayed on the visited nodes."""
    g = watts_strogatz(12, 4, 0.3, seed=2)
    assert len(set(g.degree.tolist())) > 1  # a non-uniform target: the importance weights matter
    targets = np.linspace(-1.0, 1.0, 12)[:, None] * np.ones((1, 3))

    def grad(i: int, theta: np.ndarray) -> np.ndarray:
        return theta - targets[i]

    opt = SASRRW(MarkovWalker(srw(g), start=0), grad, np.zeros(3), beta_exponent=0.7, lr_scale=0.5)
    rng = np.random.default_rng(5)
    nodes = [opt.step(rng) for _ in range(30)]
    theta = np.zeros(3)
    mu = g.degree / g.degree.sum()
    for n, i in enumerate(nodes):
        theta = theta - 0.5 * (n + 2.0) ** -0.7 * (1.0 / 12) / mu[i] * grad(i, theta)
    np.testing.assert_allclose(opt.theta, theta, rtol=1e-12)


def test_token_decode_coefficient_is_beta_of_the_round_times_the_weight():
    """The coordinator applies lr0 * coeff * g_part; coeff must make that beta_r w_i grad F_i."""
    tok = TokenConfig(chain="srw", lr_scale=0.7, beta_exponent=0.8,
                      graph={"kind": "watts-strogatz", "k": 2, "p": 0.5, "seed": 4})
    sched = TokenSchedule(tok, 6, 0, hops=8, lr0=2.0)
    sched.bind_data(600)
    degree = build_walkers(tok, 6, 0)[0].graph.degree
    assert len(set(degree.tolist())) > 1
    mu = degree / degree.sum()
    for r in range(8):
        holder = next(i for i, t in sched.tasks(r).items() if t)
        (job,) = sched.close_round(r, frozenset(range(6)))
        ((ref, coeff),) = sched.decode(job).items()
        assert ref.worker == holder
        # part gradient = (|shard| / N) grad F_i; beta_r = lr_scale (r + 2)^-b
        want = 0.7 * (r + 2.0) ** -0.8 * (1.0 / 6) / mu[holder] * 600 / 100 / 2.0
        assert coeff == pytest.approx(want, rel=1e-12)


def test_token_decode_with_two_tokens_and_a_constant_lr():
    """Two tokens: each job names its own holder and slot (tokens on one holder get slots 0, 1); a constant
    token.lr replaces beta_n; every job decodes once."""
    from dcoord.coding.base import DecodeError

    tok = TokenConfig(chain="srw", lr=0.3, tokens=2, graph={"kind": "watts-strogatz", "k": 4, "p": 0.5, "seed": 4})
    sched = TokenSchedule(tok, 6, 0, hops=40, lr0=0.5)
    with pytest.raises(DecodeError):
        sched.decode(0)  # before bind_data: no shard sizes to weight by
    sched.bind_data(601)  # shards of 100 and 101 samples
    sizes = np.diff(np.rint(np.linspace(0, 601, 7)).astype(int))
    degree = build_walkers(tok, 6, 0)[0].graph.degree
    w = (1.0 / 6) / (degree / degree.sum())
    shared = 0
    for r in range(40):
        sched.tasks(r)
        holders = list(sched.holders[r])
        jobs = sched.close_round(r, frozenset(range(6)))
        assert jobs == [2 * r, 2 * r + 1]
        for k, job in enumerate(jobs):
            ((ref, coeff),) = sched.decode(job).items()
            assert (ref.round, ref.worker, ref.slot) == (r, holders[k], holders[:k].count(holders[k]))
            assert coeff == pytest.approx(0.3 / 0.5 * w[holders[k]] * 601 / sizes[holders[k]], rel=1e-12)
            assert sched.model_of(job) == k
        shared += holders[0] == holders[1]
        with pytest.raises(DecodeError):
            sched.decode(jobs[0])  # decoded once: the round's holders are gone
    assert shared > 0  # some rounds had both tokens on one worker: the slots were exercised


def test_token_decode_once_with_more_tokens_than_small_ints():
    """300 tokens: the last token's job (299, past CPython's cached small ints) still closes the round."""
    from dcoord.coding.base import DecodeError

    tok = TokenConfig(chain="srw", lr=0.1, tokens=300, graph={"kind": "watts-strogatz", "k": 4, "p": 0.1, "seed": 1})
    sched = TokenSchedule(tok, 300, 0, hops=1, lr0=0.1)
    sched.bind_data(3000)
    sched.tasks(0)
    jobs = sched.close_round(0, frozenset(range(300)))
    assert len(jobs) == 300
    for job in jobs:
        sched.decode(job)
    with pytest.raises(DecodeError):
        sched.decode(jobs[-1])
