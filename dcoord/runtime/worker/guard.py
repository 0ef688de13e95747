"""What a worker checks before it trusts the job a coordinator hands it.

The job config arrives from the coordinator at Register, so a fake or compromised coordinator could ask
a worker to import and run any code, or to switch its privacy off. A worker therefore imports only the
modules its own side allows: built-in workloads, the ``package.module:function`` names of ``--allow-workload``
($DCOORD_ALLOW_WORKLOADS), and ``plugins`` whose module those patterns name -- checked on the raw config,
before validating it imports anything. When started with ``--max-epsilon`` it refuses a job whose privacy
is off, not trust: workers, or weaker than that bound against a compromised coordinator; with
``--min-noise-multiplier`` a job whose messages carry less noise than that floor.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Sequence
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


def own_job_allowances(cfg: JobConfig) -> list[str]:
    """What a worker started by the job's own process (``dcoord run``, a launcher's rank) allows: that job's
    workload and plugins, which the user named in the job file the process read itself."""
    return [cfg.workload, *(f"{p}:*" for p in cfg.plugins)]


def check_plugins(data: object, allowed: Sequence[str]) -> None:
    """The raw config's ``plugins`` (module names), each allowed when it is the module of one of ``allowed``
    (``mypkg.safe:*`` allows plugin ``mypkg.safe``); refused before anything is imported."""
    names = data.get("plugins") if isinstance(data, dict) else None
    if not names:
        return
    if isinstance(names, str) or not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DcoordError(f"the coordinator's job config has plugins: {ascii(names)[:200]}, not a list of module "
                          "names; this worker imports nothing from it")
    modules = [pat.split(":", 1)[0] for pat in allowed]
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,200}", name):
            raise DcoordError(f"the coordinator's job config names plugin {ascii(name)[:200]}, not a module name; "
                              "this worker imports nothing from it")
        if not any(fnmatch.fnmatchcase(name, m) for m in modules):
            raise DcoordError(
                f"the coordinator's job config asks this worker to import plugin module '{name}', which this "
                f"worker does not allow; if you trust it, start the worker with --allow-workload '{name}:*' "
                f"(or {ALLOW_ENV}={name}:*)"
            )


def message_multiplier(cfg: JobConfig) -> float:
    """The smallest noise multiplier (noise std / sensitivity) of any message this worker would send for the
    job: z (restarts) or z_diff (differences), divided by sqrt(J) with ``noise_split: aggregate``; 0 when the
    workers add no noise (no privacy, or trust: coordinator)."""
    p = cfg.privacy
    if p is None or p.trust != "workers":
        return 0.0
    from dcoord.privacy.accounting import noise_std_factors, resolve_noise

    z1, z2 = resolve_noise(p, cfg.rounds)
    part, _ = noise_std_factors(p.trust, p.noise_split, cfg.make_scheme().num_parts())
    return part * min(z1, z1 if z2 is None else z2)


def check_noise_floor(cfg: JobConfig, min_multiplier: float | None) -> None:
    """With ``min_multiplier`` (--min-noise-multiplier) refuse a job whose messages carry less noise."""
    if min_multiplier is None:
        return
    z = message_multiplier(cfg)
    if not z >= min_multiplier:
        raise DcoordError(f"the job's messages would carry noise multiplier {z:.4g}, below this worker's "
                          f"--min-noise-multiplier {min_multiplier:g}; refusing (ask for more noise)")


def check_privacy(cfg: JobConfig, workload, max_epsilon: float | None) -> None:
    """With ``max_epsilon`` the worker requires trust: workers privacy at most that epsilon against a
    coordinator that asks every replica with other parameters (what `dcoord privacy` reports). Past this
    check the worker's own budget (budget.py) still bounds what it actually releases."""
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


class BadAssignment(DcoordError):
    """An assignment this worker cannot answer as sent (malformed or incomplete): refused, not a crash."""


def check_assignment(a, cache: dict, *, num_parts: int, models: int, num_params: int,
                     needs_previous: Callable[[int], bool] | None = None) -> None:
    """Everything the round's compute takes from ``a`` (a wire Assignment) is there and in range: each
    task's model, job, parts and coefficients, its parameters in ``cache`` at the model's size, and, where
    ``needs_previous(job)`` (a DIFF2 difference round), the previous version's parameters too."""
    import math

    for t in a.tasks:
        what = f"round {a.round} task (job {t.job}, slot {t.slot})"
        if not 0 <= t.model < models:
            raise BadAssignment(f"{what} names model {t.model}; the job trains {models}")
        if t.job < 0:
            raise BadAssignment(f"{what}: job numbers start at 0")
        if len(t.parts) != len(t.coeffs):
            raise BadAssignment(f"{what} has {len(t.parts)} parts and {len(t.coeffs)} coefficients")
        bad = [p for p in t.parts if not 0 <= p < num_parts]
        if bad:
            raise BadAssignment(f"{what} names parts {bad}; the job has parts 0..{num_parts - 1}")
        if not all(math.isfinite(c) for c in t.coeffs):
            raise BadAssignment(f"{what} has a non-finite coefficient")
        versions = [t.model_version]
        if needs_previous is not None and needs_previous(t.job):
            versions.append(t.model_version - 1)
        for v in versions:
            params = cache.get((t.model, v))
            if params is None:
                kind = "the previous parameters x_(t-1) its difference round needs" if v != t.model_version \
                    else "its parameters"
                raise BadAssignment(f"{what} came without {kind} (model {t.model} version {v})")
            if params.size != num_params:
                raise BadAssignment(f"{what}: model {t.model} version {v} has {params.size} values; the model has "
                                    f"{num_params}")
