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


# -- Dataset workloads: partitions are fixed index sets, mini-batches are drawn inside each partition ------
PARTITION_SALT = 0x5EED_DA7A


def partition_indices(num_samples: int, fractions: np.ndarray, seed: int,
                      labels: np.ndarray | None = None) -> list[np.ndarray]:
    """The fixed index set of every part: a seeded shuffle of the dataset (sorted by ``labels`` for
    heterogeneous parts) cut by ``fractions``. A worker only ever reads samples of the parts it computes."""
    perm = np.random.default_rng([seed, PARTITION_SALT]).permutation(num_samples)
    if labels is not None:
        perm = perm[np.argsort(labels[perm], kind="stable")]
    return [np.sort(p) for p in split_parts(perm, fractions)]


def part_batch_sizes(batch_size: int | None, fractions: np.ndarray, parts: list[np.ndarray]) -> list[int]:
    """Samples each part contributes to a job: all of it (full batch), else ``batch_size`` cut by fractions."""
    if batch_size is None:
        return [len(p) for p in parts]
    bounds = np.rint(np.concatenate([[0.0], np.cumsum(fractions)]) * batch_size).astype(int)
    bounds[-1] = batch_size
    return [min(int(b), len(p)) for b, p in zip(np.diff(bounds), parts)]


def partition_batch(partition: np.ndarray, size: int, job: int, seed: int, part: int) -> np.ndarray:
    """Job ``job``'s samples of one partition: consecutive slices of per-epoch seeded shuffles, a pure
    function of (seed, part, job) so every replica of the part reads the same samples (exact decoding)."""
    if size >= len(partition):
        return partition
    if size <= 0:
        return partition[:0]
    per_epoch = len(partition) // size
    epoch, slot = divmod(job, per_epoch)
    perm = np.random.default_rng([seed, PARTITION_SALT, part, epoch]).permutation(len(partition))
    return np.sort(partition[perm[slot * size : (slot + 1) * size]])


def dataset_job_parts(partitions: list[np.ndarray], fractions: np.ndarray, batch_size: int | None, job: int,
                      seed: int) -> tuple[list[np.ndarray], int]:
    """Sample indices of every part of ``job`` and the job's batch size N (the sum over parts)."""
    sizes = part_batch_sizes(batch_size, fractions, partitions)
    parts = [partition_batch(p, s, job, seed, j) for j, (p, s) in enumerate(zip(partitions, sizes))]
    return parts, sum(len(p) for p in parts)
