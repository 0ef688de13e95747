"""Deterministic batches and parts: every process derives the same sample indices from (seed, job)."""

from __future__ import annotations

import numpy as np


def batch_indices(num_samples: int, batch_size: int | None, job: int, seed: int) -> np.ndarray:
    """Sample indices of job ``job``'s batch: the whole dataset, or consecutive slices of per-epoch shuffles."""
    if batch_size is None or batch_size >= num_samples:
        return np.arange(num_samples)
    per_epoch = num_samples // batch_size
    epoch, slot = divmod(job, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
    return perm[slot * batch_size : (slot + 1) * batch_size]


def split_parts(indices: np.ndarray, fractions: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` into consecutive parts sized by ``fractions`` (rounded so sizes sum exactly)."""
    bounds = np.rint(np.concatenate([[0.0], np.cumsum(fractions)]) * len(indices)).astype(int)
    bounds[-1] = len(indices)
    return [indices[bounds[k] : bounds[k + 1]] for k in range(len(fractions))]
