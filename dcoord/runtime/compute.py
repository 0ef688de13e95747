"""What a worker computes for one task: the coded combination of its parts' gradients.

Each part gradient is g_j = (1/N) sum_{i in part j} grad l_i (N = the job's batch size), so the sum over
all parts is the gradient of the mean loss. Parts are computed in float32 with torch (like the reference),
combined in float64 and rounded once into the payload dtype (float64 by default; float32 and bfloat16 halve
and quarter the bytes, see ``dcoord.coding.precision`` for what each code's decoding does to that rounding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from dcoord.runtime.tensors import round_payload
from dcoord.workloads import Workload, batch_indices, split_parts

if TYPE_CHECKING:
    from dcoord.runtime.private import WorkerPrivacy


class TaskComputer:
    """Holds the workload and a scratch model; computes part gradients for any (model version, job)."""

    def __init__(self, workload: Workload, fractions: np.ndarray, batch_size: int | None, seed: int,
                 models: int = 1, device: torch.device | str = "cpu", shards: str = "iid",
                 privacy: WorkerPrivacy | None = None) -> None:
        self.wl = workload
        self.privacy = privacy  # private runs: parts send privatized messages instead of plain gradients
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.batch_size = batch_size
        self.seed = seed
        self.models = models  # job j is step j // models of model j % models
        self.shards = shards
        self._labels = workload.y.reshape(len(workload.y), -1)[:, 0].cpu().numpy()
        self.device = torch.device(device)
        self.model = workload.model.to(self.device)
        self.X = workload.X.to(self.device)
        self.y = workload.y.to(self.device)
        self.num_params = sum(p.numel() for p in self.model.parameters())

    def job_parts(self, job: int) -> tuple[list[np.ndarray], int]:
        """Sample indices of every part of ``job`` and the job's batch size N."""
        idx = batch_indices(self.wl.num_samples, self.batch_size, job // self.models, self.seed)
        if self.shards == "label-skew":  # heterogeneous parts: each holds a narrow range of labels
            idx = idx[np.argsort(self._labels[idx], kind="stable")]
        return split_parts(idx, self.fractions), len(idx)

    def part_gradient(self, part_idx: np.ndarray, total: int) -> tuple[np.ndarray, float]:
        """(1/N) * sum of per-sample gradients over the part, and the part's (1/N)-scaled loss sum."""
        self.model.zero_grad(set_to_none=True)
        if len(part_idx) == 0:
            return np.zeros(self.num_params, dtype=np.float32), 0.0
        sel = torch.as_tensor(part_idx, device=self.device)
        out = self.model(self.X[sel])
        loss = self.wl.loss_fn(out, self.y[sel]) * (len(part_idx) / total)
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in self.model.parameters()])
        return g.detach().cpu().numpy(), float(loss.detach())

    def coded(self, job: int, parts: list[int], coeffs: list[float], dtype: str = "float64",
              params: np.ndarray | None = None, prev: np.ndarray | None = None
              ) -> tuple[np.ndarray, dict[int, float]]:
        """The message sum_k coeffs[k] g_{parts[k]} for the model currently loaded, plus part losses.

        Private runs: g_j is part j's privatized message (``params`` = x_t, ``prev`` = x_{t-1} for DIFF2
        differences) and no losses are returned (a loss is not privatized, so it never leaves the worker).
        """
        all_parts, total = self.job_parts(job)
        acc = np.zeros(self.num_params, dtype=np.float64)
        losses = {}
        for j, c in zip(parts, coeffs):
            if self.privacy is not None:
                if params is None:
                    raise ValueError("a private task needs the model parameters x_t")
                sel = torch.as_tensor(all_parts[j], device=self.device)
                acc += c * self.privacy.part_message(self.model, self.wl.loss_fn, self.X[sel], self.y[sel],
                                                     job=job, part=j, params=params, prev=prev)
                continue
            g, loss = self.part_gradient(all_parts[j], total)
            acc += c * g.astype(np.float64)
            losses[j] = loss
        return round_payload(acc, dtype), losses
