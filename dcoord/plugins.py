"""User modules that extend dcoord by registering schemes or workloads when imported (config ``plugins:``).

The job config travels to every worker, so every process imports the same plugins before it validates
the config; a plugin is an ordinary importable module (on PYTHONPATH or installed).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable


def import_plugins(names: Iterable[str]) -> None:
    """Import each module once; a ValueError naming ``plugins`` when one cannot be imported."""
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError("plugins: give a list of module names, e.g. [mypkg.schemes]")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"plugins: cannot import module {name!r} ({exc}); is it on PYTHONPATH?") from None
