"""What a worker computes for one task: the coded combination of its parts' gradients.

Each part gradient is g_j = (1/N) sum_{i in part j} grad l_i (N = the job's batch size), so the sum over
all parts is the gradient of the mean loss. Parts are computed in float32 with torch (like the reference),
combined in float64 on the compute device (cyclic-code coefficients amplify rounding), then rounded once
into the payload dtype (float64 by default; float32 and bfloat16 halve and quarter the bytes, see
``dcoord.coding.precision`` for what each code's decoding does to that rounding; bfloat16 is rounded on the
host from float64, directly, because torch's cast would round twice via float32). On a GPU the payloads of
one result reach the host in one pinned, asynchronous copy.

Data: tensor workloads cut each job's batch (``batch_indices``) into parts; Dataset workloads have fixed
partitions (index sets) and draw each job's mini-batch inside every partition, so a worker reads only the
samples of the parts it is assigned (see ``dcoord.workloads.batching``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from dcoord.runtime.tensors import round_payload
from dcoord.workloads import Workload, batch_indices, split_parts
from dcoord.workloads.batching import dataset_job_parts, partition_indices
from dcoord.workloads.data import SampleSource, labels_of

if TYPE_CHECKING:
    from dcoord.runtime.worker.private import WorkerPrivacy

_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class TaskComputer:
    """Holds the workload and a scratch model; computes part gradients for any (model version, job)."""

    def __init__(self, workload: Workload, fractions: np.ndarray, batch_size: int | None, seed: int,
                 models: int = 1, device: torch.device | str = "cpu", shards: str = "iid",
                 privacy: WorkerPrivacy | None = None, loader_workers: int = 0) -> None:
        self.wl = workload
        self.privacy = privacy  # private runs: parts send privatized messages instead of plain gradients
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.batch_size = batch_size
        self.seed = seed
        self.models = models  # job j is step j // models of model j % models
        self.shards = shards
        self.device = torch.device(device)
        self.model = workload.model.to(self.device)
        self.source = SampleSource(workload, self.device, loader_workers, cache=batch_size is None)
        self.partitions: list[np.ndarray] | None = None
        if workload.is_dataset:
            labels = labels_of(workload) if shards == "label-skew" else None
            self.partitions = partition_indices(workload.num_samples, self.fractions, seed, labels)
        else:
            self._labels = labels_of(workload)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self._pinned: torch.Tensor | None = None

    def job_parts(self, job: int) -> tuple[list[np.ndarray], int]:
        """Sample indices of every part of ``job`` and the job's batch size N."""
        if self.partitions is not None:
            return dataset_job_parts(self.partitions, self.fractions, self.batch_size, job // self.models,
                                     self.seed)
        idx = batch_indices(self.wl.num_samples, self.batch_size, job // self.models, self.seed)
        if self.shards == "label-skew":  # heterogeneous parts: each holds a narrow range of labels
            idx = idx[np.argsort(self._labels[idx], kind="stable")]
        return split_parts(idx, self.fractions), len(idx)

    def _part_grad(self, part_idx: np.ndarray, total: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1/N) * sum of per-sample gradients over the part (flat, on the device) and its scaled loss."""
        self.model.zero_grad(set_to_none=False)  # backward adds into the zeroed buffers: no fresh ones
        if len(part_idx) == 0:
            return torch.zeros(self.num_params, dtype=torch.float32, device=self.device), None
        x, y = self.source.fetch(part_idx)
        loss = self.wl.loss_fn(self.model(x), y) * (len(part_idx) / total)
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in self.model.parameters()])
        return g.detach(), loss.detach()

    def part_gradient(self, part_idx: np.ndarray, total: int) -> tuple[np.ndarray, float]:
        """(1/N) * sum of per-sample gradients over the part, and the part's (1/N)-scaled loss sum."""
        g, loss = self._part_grad(part_idx, total)
        return g.cpu().numpy(), 0.0 if loss is None else float(loss)

    def coded_device(self, job: int, parts: list[int], coeffs: list[float], dtype: str = "float64",
                     params: np.ndarray | None = None, prev: np.ndarray | None = None
                     ) -> tuple[torch.Tensor, dict[int, float]]:
        """The message sum_k coeffs[k] g_{parts[k]} on the compute device, plus part losses.

        Private runs: g_j is part j's privatized message (``params`` = x_t, ``prev`` = x_{t-1} for DIFF2
        differences) and no losses are returned (a loss is not privatized, so it never leaves the worker).
        """
        all_parts, total = self.job_parts(job)
        acc: torch.Tensor | None = None
        losses: dict[int, torch.Tensor | None] = {}
        for j, c in zip(parts, coeffs):
            if self.privacy is not None:
                if params is None:
                    raise ValueError("a private task needs the model parameters x_t")
                x, y = self.source.fetch(all_parts[j])
                keep = self.privacy.in_batch(job, all_parts[j])
                if not keep.all():  # Poisson sampling: the round's batch inside the (cached) whole part
                    sel = torch.from_numpy(np.flatnonzero(keep)).to(x.device)
                    x, y = x[sel], y[sel]
                term = c * self.privacy.part_message_tensor(self.model, self.wl.loss_fn, x, y, job=job, part=j,
                                                            params=params, prev=prev)
            else:
                g, loss = self._part_grad(all_parts[j], total)
                losses[j] = loss
                if len(parts) == 1 and c == 1.0:
                    acc = g  # one part, coefficient 1 (uncoded): the message is g itself, no float64 detour
                    break
                term = g.double()  # a fresh float64 copy (the cat in _part_grad is fresh too): scaled in place
                if c != 1.0:
                    term.mul_(c)  # the same rounding as c * term, without another 100 MB temporary
            if acc is None:
                acc = term  # 0 + c*g is c*g: no zero-filled accumulator
            else:
                acc += term
        if acc is None:  # no parts
            acc = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
        known = [(j, v) for j, v in losses.items() if v is not None]
        values = torch.stack([v for _, v in known]).tolist() if known else []  # one device sync
        out = {j: 0.0 for j, v in losses.items() if v is None}
        out.update({j: float(v) for (j, _), v in zip(known, values)})
        if dtype == "bfloat16":  # rounded once on the host (to_host), from float64 (or exact float32)
            return acc, out
        return acc.to(_TORCH_DTYPES[dtype]), out

    def to_host(self, payloads: list[torch.Tensor], dtype: str | None = None) -> list[np.ndarray]:
        """Host copies of one result's payloads. On a GPU: one pinned buffer, filled asynchronously, one
        synchronize. The buffer is reused across results: the caller must be done with the arrays before
        the next call (the worker is: gRPC packing copies into protobuf, and every data plane -- tcp's
        blocking sendall, MPI/torch's wait_sent -- has sent them before the next compute starts)."""
        if dtype == "bfloat16":  # float64 payloads from coded_device: round once, here
            return [round_payload(p.cpu().numpy(), dtype) for p in payloads]
        if self.device.type != "cuda":
            return [p.numpy() for p in payloads]
        total = sum(p.numel() * p.element_size() for p in payloads)
        if self._pinned is None or self._pinned.numel() < total:
            self._pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        out, off = [], 0
        for p in payloads:
            n = p.numel() * p.element_size()
            view = self._pinned[off : off + n].view(p.dtype)
            view.copy_(p, non_blocking=True)
            out.append(view)
            off += n
        torch.cuda.current_stream(self.device).synchronize()
        return [v.numpy() for v in out]

    def coded(self, job: int, parts: list[int], coeffs: list[float], dtype: str = "float64",
              params: np.ndarray | None = None, prev: np.ndarray | None = None
              ) -> tuple[np.ndarray, dict[int, float]]:
        """``coded_device`` copied to the host (a fresh array the caller may keep)."""
        t, losses = self.coded_device(job, parts, coeffs, dtype, params=params, prev=prev)
        return self.to_host([t], dtype)[0].copy(), losses
