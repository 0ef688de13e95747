"""The Workload record and the table of registered workload names (resolved by workloads/registry.py)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from dcoord.errors import WorkloadError


@dataclass
class Workload:
    """Everything a worker and the coordinator need to train: same seed -> same model and data everywhere.

    Two data forms: tensors ``X``/``y`` held in memory (small tasks), or a map-style
    ``torch.utils.data.Dataset`` (``dataset``, optional ``test_dataset``) whose items are ``(x, y)`` pairs;
    then partitions are fixed index sets and each worker reads only the samples of the parts it computes.
    """

    model: torch.nn.Module
    X: torch.Tensor | None
    y: torch.Tensor | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean loss over a batch
    X_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    name: str = "workload"
    dataset: Dataset | None = None
    test_dataset: Dataset | None = None
    eval_samples: int = 1024  # Dataset form: the coordinator's final loss / accuracy use this many samples

    def __post_init__(self) -> None:
        if self.dataset is None and (self.X is None or self.y is None):
            raise WorkloadError(f"workload {self.name}: give tensors X and y, or a dataset")

    @classmethod
    def from_dataset(cls, model: torch.nn.Module, loss_fn: Callable, dataset: Dataset,
                     test_dataset: Dataset | None = None, name: str = "workload",
                     eval_samples: int = 1024) -> Workload:
        """A workload over a map-style Dataset of ``(x, y)`` pairs (read lazily, by index)."""
        return cls(model, None, None, loss_fn, name=name, dataset=dataset, test_dataset=test_dataset,
                   eval_samples=eval_samples)

    @property
    def is_dataset(self) -> bool:
        return self.dataset is not None

    @property
    def num_samples(self) -> int:
        if self.dataset is not None:
            return len(self.dataset)  # type: ignore[arg-type]
        assert self.X is not None
        return int(self.X.shape[0])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def accepted_args(func: Callable) -> set[str] | None:
    """Keyword arguments a workload function takes besides ``seed`` (None: it takes ``**kwargs``)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_args(name: str, func: Callable, args: dict[str, Any]) -> None:
    """Raise WorkloadError naming an argument ``func`` does not take, and the ones it does."""
    ok = accepted_args(func)
    if ok is None:
        return
    bad = sorted(set(args) - ok)
    if bad:
        allowed = ", ".join(sorted(ok)) or "none"
        raise WorkloadError(f"workload_args: {name} takes no argument {bad[0]!r} (it takes: {allowed})")


def positive_int32(v: Any) -> bool:
    """An integer a workload can size a model or a dataset with: 1..2^31-1 (not true/false, not null)."""
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31


#: a registered workload's value check of its ``workload_args`` (raises WorkloadError naming the field)
ArgCheck = Callable[[dict[str, Any]], None]

#: name -> function(seed, **workload_args) -> Workload; built-ins register in builtin.py, users with
#: register_workload
_REGISTERED: dict[str, Callable[..., Workload]] = {}
_ARG_CHECKS: dict[str, ArgCheck] = {}


def register_workload(name: str, factory: Callable[..., Workload], *, replace: bool = False,
                      check: ArgCheck | None = None) -> None:
    """Make ``name`` resolve to ``factory(seed, **workload_args)`` in this process (config ``workload: name``).

    ``check`` validates the values of ``workload_args`` up front (config validation and load); argument
    names are always checked against ``factory``'s signature. A registered name wins over the
    ``package.module:function`` reading of the same text."""
    if name in _REGISTERED and not replace:
        raise WorkloadError(f"workload: {name!r} is already registered")
    _REGISTERED[name] = factory
    if check is None:
        _ARG_CHECKS.pop(name, None)
    else:
        _ARG_CHECKS[name] = check


def registered_workloads() -> dict[str, Callable[..., Workload]]:
    """Registered names in this process (import dcoord.workloads.registry for the built-ins)."""
    return dict(_REGISTERED)


def registered_arg_check(name: str) -> ArgCheck | None:
    """The value check ``name`` was registered with, if any."""
    return _ARG_CHECKS.get(name)
