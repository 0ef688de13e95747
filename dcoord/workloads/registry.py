"""Workload names -> Workload objects: registered names (built-ins, plugins, the Python API's objects)
or ``package.module:function``. Importing this module registers the built-ins."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from dcoord.workloads import builtin as _builtin  # noqa: F401  (registers the built-ins)
from dcoord.workloads.base import (
    Workload,
    WorkloadError,
    check_args,
    register_workload,
    registered_arg_check,
    registered_workloads,
)

__all__ = ["check_workload_args", "load", "register_workload", "workload_names"]


def workload_names() -> list[str]:
    """Every registered workload name, sorted."""
    return sorted(registered_workloads())


def check_workload_args(name: str, args: dict[str, Any]) -> None:
    """WorkloadError ("workload_args...: ...") for an argument a registered workload does not take or a bad
    value, so a config fails at validation, not on the workers. 'package.module:function' workloads are
    checked when they are loaded."""
    factory = registered_workloads().get(name)
    if factory is None:
        return
    check_args(name, factory, args)
    check = registered_arg_check(name)
    if check is not None:
        check(args)


def _resolve(name: str) -> Callable[..., Workload]:
    factory = registered_workloads().get(name)
    if factory is not None:
        return factory
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
    return func


def load(name: str, seed: int = 0, args: dict[str, Any] | None = None) -> Workload:
    """Build a workload by registered name or ``package.module:function``.

    Called as ``function(seed, **args)`` (``args`` = the config's ``workload_args``)."""
    args = dict(args or {})
    func = _resolve(name)
    if args:
        check_args(name, func, args)
    check = registered_arg_check(name)
    if check is not None:
        check(args)
    wl = func(seed, **args)
    if not isinstance(wl, Workload):
        raise WorkloadError(f"workload: {name} must return dcoord.workloads.Workload, got {type(wl).__name__}")
    return wl
