"""The Workload record and the table of registered workload names (resolved by workloads/registry.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dcoord.errors import WorkloadError


@dataclass
class Workload:
    """Everything a worker and the coordinator need to train: same seed -> same model and data everywhere."""

    model: torch.nn.Module
    X: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean loss over a batch
    X_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    name: str = "workload"

    @property
    def num_samples(self) -> int:
        return int(self.X.shape[0])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


#: name -> function(seed) -> Workload; built-ins register in builtin.py, users with register_workload
_REGISTERED: dict[str, Callable[[int], Workload]] = {}


def register_workload(name: str, factory: Callable[[int], Workload], *, replace: bool = False) -> None:
    """Make ``name`` resolve to ``factory(seed)`` in this process (config ``workload: name``).

    A registered name wins over the ``package.module:function`` reading of the same text."""
    if name in _REGISTERED and not replace:
        raise WorkloadError(f"workload: {name!r} is already registered")
    _REGISTERED[name] = factory


def registered_workloads() -> dict[str, Callable[[int], Workload]]:
    """Registered names in this process (import dcoord.workloads.registry for the built-ins)."""
    return dict(_REGISTERED)
