"""What a worker checks before it trusts the job a coordinator hands it.

The job config arrives from the coordinator at Register, so a fake or compromised coordinator could ask
a worker to import and run any code, or to switch its privacy off. A worker therefore runs only built-in
workloads and the ``package.module:function`` names its own side allows (``--allow-workload``,
$DCOORD_ALLOW_WORKLOADS), and, when started with ``--max-epsilon``, refuses a job whose privacy is off,
not trust: workers, or weaker than that bound against a compromised coordinator.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dcoord.errors import DcoordError
from dcoord.runtime.security.auth import ALLOW_ENV

if TYPE_CHECKING:
    from dcoord.config import JobConfig


def allowed_from_env() -> list[str]:
    return [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]


def check_workload(name: str, allowed: Sequence[str]) -> None:
    """Built-ins always; a ``package.module:function`` only when one of ``allowed`` (shell patterns) matches."""
    from dcoord.workloads.builtin import BUILTINS

    if name in BUILTINS:
        return
    if any(fnmatch.fnmatchcase(name, pat) for pat in allowed):
        return
    raise DcoordError(
        f"the coordinator asked for workload {name!r}, which this worker does not allow; if you trust it, "
        f"start the worker with --allow-workload '{name}' (or {ALLOW_ENV}={name})"
    )


def check_privacy(cfg: JobConfig, workload, max_epsilon: float | None) -> None:
    """With ``max_epsilon`` the worker requires trust: workers privacy at most that epsilon against a
    coordinator that asks every replica with other parameters (what `dcoord privacy` reports)."""
    if max_epsilon is None:
        return
    p = cfg.privacy
    if p is None:
        raise DcoordError(f"this worker requires privacy (--max-epsilon {max_epsilon:g}) but the coordinator's job "
                          "has none; refusing to send raw gradients")
    if p.trust != "workers":
        raise DcoordError(f"this worker requires privacy.trust: workers (--max-epsilon {max_epsilon:g}); the job "
                          f"says trust: {p.trust}, which would send the coordinator un-noised sums")
    from dcoord.runtime.privacy_glue import compromised_epsilon

    eps = compromised_epsilon(cfg, workload)
    if not eps <= max_epsilon:
        raise DcoordError(f"the job's privacy gives epsilon {eps:.4g} against a compromised coordinator, more than "
                          f"this worker's --max-epsilon {max_epsilon:g}; refusing (ask for more noise)")
