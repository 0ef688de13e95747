"""A workload whose parameter count is set freely, for the network bench: a model of ``params`` float32
parameters (10 MB = 2,500,000) on a few tiny samples, so a round's cost is its transfer plus the emulated
compute (``runtime.emulate_part_s``), not real arithmetic. Every parameter gets a dense gradient.

Loaded as ``netcluster_workload:wide`` with bench/ on PYTHONPATH (workers allow it with --allow-workload).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcoord.workloads import Workload

FEATURES = 8


class Wide(torch.nn.Module):
    """y = mean over columns of x @ W, W of shape (FEATURES, params / FEATURES)."""

    def __init__(self, params: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(FEATURES, max(params // FEATURES, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w).mean(dim=1, keepdim=True)


def wide(seed: int, params: int = 2_500_000, samples: int = 32) -> Workload:
    """``params`` parameters (rounded down to a multiple of 8), ``samples`` training samples."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    X = torch.randn(samples, FEATURES, generator=gen)
    y = torch.randn(samples, 1, generator=gen)
    torch.manual_seed(seed)
    return Workload(Wide(params), X, y, F.mse_loss, name="netcluster-wide")
