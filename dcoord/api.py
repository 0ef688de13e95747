"""The Python API: ``dcoord.train(job_config, workload=None, out=None) -> summary``.

The same job as the CLI, from a user's own script. Under torchrun or mpirun every rank calls ``train``
and it does the launch role split (rank 0 coordinates and returns the run summary; ranks >= 1 compute and
return ``{"role": "worker", "rank": r, "worker_id": r - 1, "rounds_computed": k}``). Without a launcher it
is ``dcoord run``: a coordinator here and local worker processes over loopback gRPC.

    # train.py, run as: torchrun --nproc-per-node 5 train.py
    import dcoord
    summary = dcoord.train("job.yaml", workload="mypkg.tasks:make_workload", out="runs/mine")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcoord.config import JobConfig
    from dcoord.workloads import Workload

log = logging.getLogger("dcoord.api")

#: prefix of the in-process registry name a Workload object is run under
OBJECT_PREFIX = "dcoord-api:"


def _as_config(job_config: str | Path | dict | JobConfig, workload: Workload | str | None,
               overrides: list[str] | None) -> JobConfig:
    from dcoord.config import JobConfig, load_config
    from dcoord.errors import ConfigError
    from dcoord.workloads import Workload

    extra = list(overrides or [])
    if workload is not None:
        if isinstance(workload, Workload):
            from dcoord.workloads import register_workload

            # every rank of a torchrun/mpirun job runs this same line, so each process (coordinator and
            # workers alike) resolves the name to its own copy of the object
            name = f"{OBJECT_PREFIX}{workload.name or 'workload'}"
            register_workload(name, lambda seed, _wl=workload: _wl, replace=True)
        elif isinstance(workload, str):
            name = workload
        else:
            raise ConfigError(f"workload: give a dcoord.workloads.Workload or 'package.module:function', "
                              f"not {type(workload).__name__}")
        extra.append(f"workload={name}")
    if isinstance(job_config, JobConfig):
        if not extra:
            return job_config
        # only what was set explicitly, so "transport left out" still means "pick by launcher"
        return load_config(None, extra, data=job_config.model_dump(mode="json", by_alias=True, exclude_unset=True))
    if isinstance(job_config, dict):
        return load_config(None, extra, data=job_config)
    if isinstance(job_config, (str, Path)):
        return load_config(job_config, extra)
    raise ConfigError(f"job_config: give a path, a dict or a JobConfig, not {type(job_config).__name__}")


def train(job_config: str | Path | dict | JobConfig, workload: Workload | str | None = None,
          out: str | Path | None = None, *, overrides: list[str] | None = None,
          progress: bool = False, resume: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train one job like ``dcoord run`` / ``python -m dcoord.launch`` and return its summary dict.

    ``job_config``: a YAML path, a dict of the same keys, or a JobConfig. ``workload``: optional
    Workload object or ``"package.module:function"`` (overrides the config's); an *object* needs
    torchrun/mpirun (every rank builds it), without a launcher give the string. ``out``: run directory
    (default ``runs/NAME``); rank 0 writes summary.json, metrics.jsonl and model.pt there.
    ``overrides``: ``key=value`` strings, as ``--set``. ``resume``: a run directory to continue;
    ``overwrite``: replace the run already in ``out``. Errors raise dcoord.errors.DcoordError subclasses
    (ConfigError for a bad config), with a one-line message that names these arguments.
    """
    from dcoord.runtime.store.rundir import NAMING

    token = NAMING.set("api")  # errors name this function's arguments (resume=...), not the CLI's flags
    try:
        return _train(job_config, workload, out, overrides, progress, resume, overwrite)
    finally:
        NAMING.reset(token)


def _train(job_config, workload, out, overrides, progress, resume, overwrite) -> dict[str, Any]:
    from dcoord.errors import ConfigError
    from dcoord.launch import detect_launcher, launch, resolve_config

    env = detect_launcher()
    given = _as_config(job_config, workload, overrides)
    cfg, notes = resolve_config(given, env)
    for note in notes:
        if env.rank == 0:
            log.warning("%s", note)
    from dcoord.runtime.coordinator.resume import default_out

    run_dir = Path(resume) if resume is not None else Path(out) if out is not None else default_out(cfg.name)
    mode = "resume" if resume is not None else "overwrite" if overwrite else "new"
    if env.launcher == "none":
        if cfg.workload.startswith(OBJECT_PREFIX):
            raise ConfigError(f"dcoord.train(workload=<Workload object>) needs a launcher: run this script "
                              f"under torchrun (torchrun --nproc-per-node {cfg.workers + 1} SCRIPT) or mpirun, "
                              "where every rank builds the object; without one, dcoord's worker processes need "
                              "workload='package.module:function'")
        from dcoord.runtime.local import run_local

        return run_local(cfg, run_dir, progress=progress, mode=mode)
    result = launch(cfg, env, run_dir, progress=progress, mode=mode, chosen_from=given)
    if not result.pop("_clean_exit", True):
        log.warning("a data-plane receiver is still waiting on a worker that is gone; the process group was "
                    "left as is (exit the process when done)")
    return result
