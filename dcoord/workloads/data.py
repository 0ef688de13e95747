"""Where a worker's samples come from: tensors in memory, or a map-style Dataset read lazily by index.

A Dataset is read only at the indices a task names, through a DataLoader whose batch sampler is fed the
requested indices (so ``loader_workers`` processes can decode samples in parallel and stay alive between
rounds), with pinned host memory when the samples go to a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dcoord.errors import ConfigError
from dcoord.workloads.base import Workload, WorkloadError
from dcoord.workloads.registry import load


class _Requests:
    """A batch sampler whose batches are set by the caller before each pass over the loader."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class SampleSource:
    """``fetch(indices) -> (x, y)`` on the compute device; the tensor form indexes X and y directly."""

    def __init__(self, workload: Workload, device: torch.device, loader_workers: int = 0,
                 chunk: int = 256, cache: bool = False) -> None:
        self.device = device
        self.chunk = max(1, chunk)
        self.cache = cache  # full-batch runs: a part's samples are the same every job, keep them
        self._cached: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.dataset: Dataset | None = workload.dataset
        if self.dataset is None:
            assert workload.X is not None and workload.y is not None
            self.X, self.y = workload.X.to(device), workload.y.to(device)
            return
        self._requests = _Requests()
        self.loader = DataLoader(self.dataset, batch_sampler=self._requests, num_workers=loader_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=loader_workers > 0)

    def fetch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dataset is None:
            sel = torch.as_tensor(idx, device=self.device)
            return self.X[sel], self.y[sel]
        key = (len(idx), hash(np.asarray(idx).tobytes()))
        if self.cache and key in self._cached:
            return self._cached[key]
        flat = np.asarray(idx).tolist()
        self._requests.batches = [flat[i : i + self.chunk] for i in range(0, len(flat), self.chunk)]
        xs, ys = [], []
        for x, y in self.loader:
            xs.append(x.to(self.device, non_blocking=True))
            ys.append(torch.as_tensor(y).to(self.device, non_blocking=True))
        out = (torch.cat(xs), torch.cat(ys))
        if self.cache:
            self._cached[key] = out
        return out


def labels_of(workload: Workload) -> np.ndarray | None:
    """First label column of every sample, for label-skew parts: tensors, or a Dataset's ``targets``."""
    if workload.dataset is None:
        assert workload.y is not None
        return workload.y.reshape(len(workload.y), -1)[:, 0].cpu().numpy()
    targets = getattr(workload.dataset, "targets", None)
    if targets is None:
        raise WorkloadError("shards: label-skew needs the Dataset to expose .targets (one label per sample); "
                         "use shards: iid")
    return np.asarray(targets)


def load_checked(cfg) -> Workload:
    """The job's workload (``cfg``: a JobConfig), or a ConfigError with the one-line reason."""
    try:
        wl = load(cfg.workload, cfg.seed, cfg.workload_args)
        if cfg.shards == "label-skew":
            labels_of(wl)
    except WorkloadError as exc:
        raise ConfigError(str(exc)) from None
    return wl
