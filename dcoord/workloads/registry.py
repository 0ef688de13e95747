"""Workload names -> Workload objects: registered names (built-ins, plugins, the Python API's objects)
or ``package.module:function``. Importing this module registers the built-ins."""

from __future__ import annotations

import importlib

from dcoord.workloads import builtin as _builtin  # noqa: F401  (registers the built-ins)
from dcoord.workloads.base import Workload, WorkloadError, register_workload, registered_workloads

__all__ = ["load", "register_workload", "workload_names"]


def workload_names() -> list[str]:
    """Every registered workload name, sorted."""
    return sorted(registered_workloads())


def load(name: str, seed: int = 0) -> Workload:
    """Build a workload by registered name or ``package.module:function`` (called as ``function(seed)``)."""
    factory = registered_workloads().get(name)
    if factory is not None:
        return factory(seed)
    if ":" not in name:
        raise WorkloadError(
            f"workload: unknown name {name!r}; use one of {workload_names()} or 'package.module:function'"
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
