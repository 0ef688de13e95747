"""The Workload record and the loader that resolves a name to one."""

from __future__ import annotations

import importlib
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


def load(name: str, seed: int = 0) -> Workload:
    """Build a workload by built-in name or ``package.module:function`` (called as ``function(seed)``)."""
    from dcoord.workloads.builtin import BUILTINS

    if name in BUILTINS:
        return BUILTINS[name](seed)
    if ":" not in name:
        raise WorkloadError(
            f"workload: unknown name {name!r}; use one of {sorted(BUILTINS)} or 'package.module:function'"
        )
    module_name, func_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkloadError(f"workload: cannot import module {module_name!r} ({exc})") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise WorkloadError(f"workload: {module_name!r} has no function {func_name!r}")
    wl = func(seed)
    if not isinstance(wl, Workload):
        raise WorkloadError(f"workload: {name} must return dcoord.workloads.Workload, got {type(wl).__name__}")
    return wl
