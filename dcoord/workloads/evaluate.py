"""The coordinator's view of a model's quality: training loss and test accuracy.

Tensor workloads use all their samples (as before); Dataset workloads use a fixed, seeded subset of
``eval_samples`` samples, so the coordinator never has to read a whole (possibly large) dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dcoord.workloads.base import Workload


def _subset_batches(ds: Dataset, limit: int, batch: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(ds)  # type: ignore[arg-type]
    idx = np.random.default_rng(0).permutation(n)[: min(limit, n)]
    yield from DataLoader(Subset(ds, np.sort(idx).tolist()), batch_size=batch)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_loss(wl: Workload, model: torch.nn.Module) -> float:
    """Mean training loss (Dataset form: over the ``eval_samples`` subset)."""
    with torch.no_grad():
        if wl.dataset is None:
            return float(wl.loss_fn(model(wl.X), wl.y))
        dev, total, count = _device_of(model), 0.0, 0
        for x, y in _subset_batches(wl.dataset, wl.eval_samples):
            total += float(wl.loss_fn(model(x.to(dev)), y.to(dev))) * len(y)
            count += len(y)
        return total / max(count, 1)


def test_accuracy(wl: Workload, model: torch.nn.Module) -> float | None:
    """Fraction of test labels predicted (argmax over the last dim); None without a labelled test set."""
    with torch.no_grad():
        if wl.dataset is None:
            if wl.X_test is None or wl.y_test is None or wl.y_test.dtype != torch.long:
                return None
            return float((model(wl.X_test).argmax(1) == wl.y_test).float().mean())
        if wl.test_dataset is None:
            return None
        dev, hits, count = _device_of(model), 0.0, 0
        for x, y in _subset_batches(wl.test_dataset, wl.eval_samples):
            if y.dtype != torch.long:
                return None
            hits += float((model(x.to(dev)).argmax(-1) == y.to(dev)).sum())
            count += y.numel()
        return hits / max(count, 1)
