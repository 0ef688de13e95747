"""Numerically stable gradient-code constructions (pure math, no I/O).

Why: Tandon's random cyclic construction has encoding entries up to ~1e3 and decoding coefficients up to
~1e5 at n = 32, so float32 worker messages lose four digits when decoded. Two remedies live here.

gc-binary (``binary_groups``): fractional repetition generalised to every (n, s). Write
n = l (s+1) + r with l = floor(n / (s+1)) and 0 <= r <= s. Workers form l groups of floor(n/l) or
ceil(n/l) >= s+1 consecutive workers; the job is cut into l parts of equal size 1/l and every member of group g
computes part g alone (encoding entries 0/1). s stragglers cannot empty a group of >= s+1 members, so
one survivor per group, summed with coefficient 1, is the gradient (decoding entries 0/1): the decoded
value is a plain sum of l messages, as stable as the uncoded sum. Load 1/floor(n/(s+1)), against
gc-cyclic's (s+1)/n: equal when (s+1) | n, at most (1 + r/(l(s+1))) < 2 times larger otherwise. (For
s = 1 no code with 0/1 decoding does better: every data point on exactly two workers makes the
worker-pair graph bipartite with the decoding sets as colour classes, so some class of <= floor(n/2)
workers carries the whole job.)

gc-cyclic (``stable_cyclic_matrix``): cyclic support {i, ..., i+s}, coefficients chosen for conditioning.
- (s+1) | n: every row is the all-ones window. The s+1 residue classes of workers mod (s+1) each tile the
  parts, s stragglers leave one class intact, and decoding is that class with coefficient 1 (binary).
- otherwise: row i is the i-th cyclic shift of c(x) = prod_{f in Z} (x - w^f), w = exp(2 pi i / n), a
  minimum-weight codeword of the real cyclic code with spectral zeros Z (the construction of Raviv,
  Tamo, Tandon, Dimakis, "Gradient coding from cyclic MDS codes"). Z is an arithmetic progression of s
  frequencies with difference d coprime to n, so by the BCH bound the code is MDS and any n-s shifts span
  the all-ones vector (0 is not in Z). Z must be closed under negation for real coefficients: centred on
  n/2 when n is even and s odd, {d (2j+1)/2 mod n} when n is odd and s even. d sets the conditioning:
  d near n/(s+1) spreads the zeros evenly (c(x) then approaches the all-ones window); the d among a few
  candidates with the lowest sampled decode amplification is kept (deterministic).
- n and s of equal parity admit no such real progression: the zeros are the progression for s-1 plus one
  seeded random row orthogonal to the all-ones vector, and rows are the null vectors of that s x n spectral matrix on each support
  (Tandon's null-space construction with a structured instead of random H; decodable with probability
  one like Tandon's, checked by the residual test at decode).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["binary_groups", "binary_load", "cyclic_load", "stable_cyclic_matrix", "window_tiling",
           "amplification_proxy"]


def binary_groups(n: int, s: int) -> list[tuple[int, ...]]:
    """Worker groups of gc-binary: floor(n/(s+1)) groups of consecutive workers, sizes as equal as possible
    (each >= s+1)."""
    groups_n = n // (s + 1)
    size, extra = divmod(n, groups_n)
    out, w = [], 0
    for g in range(groups_n):
        k = size + (1 if g < extra else 0)
        out.append(tuple(range(w, w + k)))
        w += k
    return out


def binary_load(n: int, s: int) -> float:
    """gc-binary's normalized load: 1 / floor(n / (s+1))."""
    return 1.0 / (n // (s + 1))


def cyclic_load(n: int, s: int) -> float:
    """gc-cyclic's (and gc-fr's) normalized load: (s+1) / n."""
    return (s + 1) / n


def window_tiling(n: int, s: int, arrived: frozenset[int] | set[int]) -> list[int] | None:
    """For the all-ones cyclic window with (s+1) | n: an intact residue class mod s+1 among ``arrived``."""
    g = s + 1
    for c in range(g):
        cls = list(range(c, n, g))
        if all(w in arrived for w in cls):
            return cls
    return None


def _candidates(n: int, s: int, count: int = 5) -> list[int]:
    """Differences d coprime to n closest to n/(s+1) (evenly spread zeros), plus d = 1 (zeros clustered)."""
    target = n / (s + 1)
    ds = sorted((d for d in range(1, n) if math.gcd(d, n) == 1), key=lambda d: (abs(d - target), d))
    out = ds[:count]
    if 1 not in out:
        out.append(1)
    return out


def _zeros(n: int, s: int, d: int) -> list[int]:
    """A negation-closed progression of s frequencies with difference d, avoiding 0 (needs n, s of opposite
    parity)."""
    if s == 0:
        return []
    if n % 2 == 0 and s % 2 == 1:
        h = n // 2
        return [h] + [(h + sign * d * j) % n for j in range(1, (s - 1) // 2 + 1) for sign in (1, -1)]
    if n % 2 == 1 and s % 2 == 0:
        inv2 = pow(2, -1, n)
        out = []
        for j in range(s // 2):
            f = d * (2 * j + 1) * inv2 % n
            out += [f, (-f) % n]
        return out
    raise ValueError("a real progression of s zeros needs n and s of opposite parity")


def _poly_matrix(n: int, s: int, zeros: list[int]) -> np.ndarray:
    """Cyclic shifts of c(x) = prod (x - w^f) (real because ``zeros`` is negation-closed)."""
    w = np.exp(2j * np.pi * np.arange(n) / n)
    c = np.array([1.0 + 0j])
    for f in zeros:
        c = np.convolve(c, np.array([-w[f % n], 1.0]))
    c = c.real / c.real[0]  # c[0] = prod(-w^f) is real and nonzero; row i has B[i, i] = 1
    B = np.zeros((n, n))
    for i in range(n):
        B[i, (i + np.arange(s + 1)) % n] = c
    return B


def _spectral_rows(n: int, zeros: list[int]) -> list[np.ndarray]:
    k = np.arange(n)
    rows, seen = [], set()
    for f in zeros:
        if f in seen:
            continue
        seen.update({f, (-f) % n})
        if 2 * f == n:
            rows.append(np.cos(np.pi * k))
        else:
            rows += [np.cos(2 * np.pi * f * k / n), np.sin(2 * np.pi * f * k / n)]
    return rows


def _nullspace_matrix(n: int, s: int, H: np.ndarray) -> np.ndarray:
    """Tandon's construction with a given H (s x n, H 1 = 0): row i is the null vector of H on its support."""
    B = np.zeros((n, n))
    for i in range(n):
        S = (i + np.arange(s + 1)) % n
        B[i, S[0]] = 1.0
        B[i, S[1:]] = np.linalg.solve(H[:, S[1:]], -H[:, S[0]])
    return B


def _same_parity_matrix(n: int, s: int, d: int) -> np.ndarray:
    rows = _spectral_rows(n, _zeros(n, s - 1, d)) if s > 1 else []
    # one more real row, seeded Gaussian (generic, like all of Tandon's H) and orthogonal to the all-ones
    # vector; the s-1 spectral rows keep most of the conditioning of the progression
    extra = np.random.default_rng(d).standard_normal(n)
    rows.append(extra - extra.mean())
    return _nullspace_matrix(n, s, np.array(rows))


def amplification_proxy(B: np.ndarray, s: int, sets: int = 8, seed: int = 0) -> float:
    """Sampled worst sqrt(sum a_i^2 ||b_i||^2 / n) over straggler sets (windows and random sets).

    For independent part gradients this is the decode error relative to the uncoded sum's; used to rank
    constructions, not reported (the driver measures real amplification).
    """
    n = B.shape[0]
    rng = np.random.default_rng(seed)
    strag = [np.arange(o, o + s) % n for o in range(0, n, max(1, n // (sets // 2 or 1)))][: sets // 2]
    strag += [rng.choice(n, s, replace=False) for _ in range(sets - len(strag))]
    norms = np.sum(B * B, axis=1)
    worst = 0.0
    for st in strag:
        F = np.setdiff1d(np.arange(n), st)
        BF = B[F]
        try:  # normal equations: a rough ranking is enough, and they are ~50x cheaper than an SVD solve
            a = np.linalg.solve(BF @ BF.T, BF.sum(axis=1))
        except np.linalg.LinAlgError:
            return math.inf
        if not np.all(np.isfinite(a)) or np.max(np.abs(BF.T @ a - 1.0)) > 1e-4:
            return math.inf
        worst = max(worst, float(np.sqrt(np.sum(a * a * norms[F]) / n)))
    return worst


@lru_cache(maxsize=64)
def _stable_cyclic_cached(n: int, s: int) -> np.ndarray:
    if s == 0:
        return np.eye(n)
    if n % (s + 1) == 0:
        B = np.zeros((n, n))
        for i in range(n):
            B[i, (i + np.arange(s + 1)) % n] = 1.0
        return B
    build = _poly_matrix if (n + s) % 2 == 1 else None
    best, best_amp = None, math.inf
    for d in _candidates(n, s):
        try:
            B = build(n, s, _zeros(n, s, d)) if build else _same_parity_matrix(n, s, d)
        except np.linalg.LinAlgError:
            continue
        if not np.all(np.isfinite(B)):
            continue
        amp = amplification_proxy(B, s)
        if amp < best_amp:
            best, best_amp = B, amp
    if best is None:  # not met in tests; Tandon's random construction (gc.cyclic_encoding_matrix, seed 0)
        Ht = np.random.default_rng(0).standard_normal((s, n - 1))  # as a last resort; built here, since
        best = _nullspace_matrix(n, s, np.hstack([Ht, -Ht.sum(axis=1, keepdims=True)]))  # gc imports us
    return best


def stable_cyclic_matrix(n: int, s: int) -> np.ndarray:
    """The best-conditioned cyclic-support encoding matrix we build (see the module doc); a fresh copy."""
    if n < 1 or not 0 <= s < n:
        raise ValueError(f"need 0 <= s < n (got n={n}, s={s})")
    return _stable_cyclic_cached(n, s).copy()
