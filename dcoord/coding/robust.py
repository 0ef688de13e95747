"""Robust aggregators: APPROXIMATE Byzantine baselines for runs without the redundancy coding.byzantine needs.

They take n messages (one per worker, each an unbiased estimate of the mean gradient) and return one
estimate that a minority of wrong messages moves only so far. Unlike repetition (dcoord.coding.byzantine)
they never give the exact gradient, even when nobody lies, and small shifts within the honest spread
(ALIE-style) move them without being noticed. Pure numpy; for comparison (bench/byzantine.py).
"""

from __future__ import annotations

import numpy as np

from dcoord.errors import SchemeError

AGGREGATORS = ("mean", "median", "krum", "centered-clipping")


def median(msgs: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of the rows (O(n d))."""
    return np.median(msgs, axis=0)


def krum(msgs: np.ndarray, f: int) -> np.ndarray:
    """Krum (Blanchard et al. 2017): the row whose n - f - 2 nearest rows are closest (O(n^2 d));
    needs n >= 2f + 3."""
    n = msgs.shape[0]
    if n < 2 * f + 3:
        raise SchemeError(f"krum needs n >= 2f + 3 (got n={n}, f={f})")
    sq = np.einsum("ij,ij->i", msgs, msgs)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * msgs @ msgs.T, 0.0)
    np.fill_diagonal(d2, np.inf)
    k = n - f - 2
    scores = np.sort(d2, axis=1)[:, :k].sum(axis=1)
    return msgs[int(np.argmin(scores))].copy()


def centered_clipping(msgs: np.ndarray, center: np.ndarray, tau: float, iters: int = 3) -> np.ndarray:
    """Centered clipping (Karimireddy et al. 2021): from ``center`` (the last aggregate), add the mean of
    the rows' offsets clipped to norm ``tau`` (O(n d) per iteration)."""
    v = np.asarray(center, dtype=np.float64).copy()
    for _ in range(iters):
        diff = msgs - v
        norms = np.linalg.norm(diff, axis=1, keepdims=True)
        v = v + (diff * np.minimum(1.0, tau / np.maximum(norms, 1e-300))).mean(axis=0)
    return v


def aggregate(kind: str, msgs: np.ndarray, f: int = 1, center: np.ndarray | None = None,
              tau: float = 1.0) -> np.ndarray:
    """One of AGGREGATORS over the rows of ``msgs`` (n x d): the mean-gradient estimate."""
    if kind == "mean":
        return msgs.mean(axis=0)
    if kind == "median":
        return median(msgs)
    if kind == "krum":
        return krum(msgs, f)
    if kind == "centered-clipping":
        return centered_clipping(msgs, np.zeros(msgs.shape[1]) if center is None else center, tau)
    raise SchemeError(f"unknown aggregator {kind!r}; use one of {', '.join(AGGREGATORS)}")
