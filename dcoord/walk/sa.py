"""SA-SRRW: token-driven stochastic approximation (Hu, Doshi & Eun, ICLR 2024, arXiv 2401.09665).

Per hop n, three coupled iterations:

    X_{n+1} ~ K_{X_n, .}[x_n]                              (the walker's step; SRRW or a base chain)
    x_{n+1} = x_n + gamma_{n+1} (e_{X_{n+1}} - x_n)         (inside the walker, gamma_n = (n+1)^-a)
    theta_{n+1} = theta_n - beta_{n+1} w_{X_{n+1}} grad F_{X_{n+1}}(theta_n),   beta_n = (n+1)^-b

Taken from the paper: the three iterations; a, b in (0.5, 1]; three regimes by timescale (beta = o(gamma),
beta = gamma, gamma = o(beta)); the paper recommends beta_n = o(gamma_n), i.e. b > a (x moves on the faster
timescale), the only regime where the asymptotic covariance of theta shrinks like O(1/alpha^2) - with
beta = gamma or gamma = o(beta) the gain is only O(1/alpha) (as summarised in the paper's public
OpenReview reviews, which is where this was read; the paper itself could not be retrieved here).
Chosen here, since no copy of the paper's simulation section gave its numbers: a = 0.8, b = 0.9 (inside
the recommended regime, clear of both ends of (0.5, 1]; believed, not verified, to match the paper), an
optional multiplier ``lr_scale`` on beta_n and a constant step ``lr`` (what practitioners use; the
theory then no longer applies). Importance weights w_i = (1/N)/mu_i make a non-uniform target (SRW,
NBRW) minimise the plain average (1/N) sum_i F_i; with a uniform target w_i = 1.

Pure numpy: the gradient is a callback ``grad(node, theta) -> ndarray``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dcoord.walk.chains import ChainError, StepSchedule, Walker, polynomial_steps

DEFAULT_GAMMA_EXPONENT = 0.8  # a: step size of the visit measure x (SRRW), gamma_n = (n+1)^-a
DEFAULT_BETA_EXPONENT = 0.9  # b: step size of theta, beta_n = (n+1)^-b; b > a is the recommended regime
PAPER_ALPHAS = (1.0, 5.0, 10.0, 20.0)  # the alphas dcoord's bench compares against the base chain

GradFn = Callable[[int, np.ndarray], np.ndarray]


def regime(gamma_exponent: float, beta_exponent: float) -> str:
    """Which of the paper's three timescale regimes (a, b) falls in; 'beta=o(gamma)' is recommended."""
    if beta_exponent > gamma_exponent:
        return "beta=o(gamma)"
    if beta_exponent == gamma_exponent:
        return "beta=gamma"
    return "gamma=o(beta)"


class SASRRW:
    """One token's optimiser: a walker picks the node, the node's gradient moves theta.

    ``importance_weighting``: None (auto: on exactly when the walker's target is not uniform), True or False.
    ``lr``: a constant step size replacing beta_n. ``lr_scale``: beta_n = lr_scale * (n+1)^-b.
    """

    def __init__(
        self,
        walker: Walker,
        grad: GradFn,
        theta0: np.ndarray | Sequence[float],
        *,
        beta_exponent: float = DEFAULT_BETA_EXPONENT,
        lr: float | None = None,
        lr_scale: float = 1.0,
        beta: StepSchedule | None = None,
        importance_weighting: bool | None = None,
    ) -> None:
        if lr is not None and not lr > 0:
            raise ChainError(f"token.lr must be > 0, got {lr}")
        if not lr_scale > 0:
            raise ChainError(f"token.lr_scale must be > 0, got {lr_scale}")
        if beta is not None:
            self.beta: StepSchedule = beta
        elif lr is not None:
            const = float(lr)
            self.beta = lambda n: const
        else:
            if not 0.5 < beta_exponent <= 1.0:
                raise ChainError(f"token.beta_exponent must be in (0.5, 1], got {beta_exponent}")
            self.beta = polynomial_steps(beta_exponent, lr_scale)
        self.walker = walker
        self.grad = grad
        self.theta = np.array(theta0, dtype=np.float64, copy=True)
        mu = walker.target
        n = mu.shape[0]
        uniform = bool(np.allclose(mu, 1.0 / n, rtol=1e-12, atol=0.0))
        use = (not uniform) if importance_weighting is None else bool(importance_weighting)
        self.weights: np.ndarray | None = (1.0 / n) / mu if use else None

    @property
    def hops(self) -> int:
        return self.walker.hops

    def step(self, rng: np.random.Generator) -> int:
        """One hop: move the token, then take the gradient step at the new holder with theta_n."""
        beta = float(self.beta(self.walker.hops + 1))
        node = self.walker.step(rng)
        g = np.asarray(self.grad(node, self.theta), dtype=np.float64)
        if self.weights is not None:
            g = g * self.weights[node]
        self.theta -= beta * g
        return node

    def run(
        self,
        hops: int,
        rng: np.random.Generator,
        *,
        record_at: Sequence[int] | np.ndarray | None = None,
        optimum: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Run ``hops`` steps; at the hop counts in ``record_at`` keep ||theta - optimum||^2 (if given).

        Raises FloatingPointError when theta stops being finite (step size too large for the problem).
        """
        rec = np.unique(np.asarray([] if record_at is None else record_at, dtype=np.int64))
        rec = rec[(rec >= 1) & (rec <= self.walker.hops + hops)]
        sq_err: list[float] = []
        rec_hops: list[int] = []
        ri = 0
        end = self.walker.hops + hops
        while self.walker.hops < end:
            self.step(rng)
            if ri < rec.shape[0] and self.walker.hops == rec[ri]:
                if not np.all(np.isfinite(self.theta)):
                    raise FloatingPointError(
                        f"token: theta diverged by hop {self.walker.hops}; lower lr / lr_scale or raise b"
                    )
                rec_hops.append(int(rec[ri]))
                if optimum is not None:
                    d = self.theta - optimum
                    sq_err.append(float(d @ d))
                ri += 1
        return {"theta": self.theta.copy(), "record_hops": rec_hops, "sq_error": sq_err}


def log_spaced_hops(hops: int, points: int = 60) -> np.ndarray:
    """Distinct, roughly log-spaced hop counts in [1, hops] (always including hops) for MSE curves."""
    if hops < 1:
        return np.zeros(0, dtype=np.int64)
    pts = np.unique(np.round(np.logspace(0, np.log10(hops), points)).astype(np.int64))
    return np.unique(np.append(pts[(pts >= 1) & (pts <= hops)], hops))
