"""Resuming a run: what a coordinator checkpoint holds, putting it back, and the CLI/signal glue.

A checkpoint is taken between rounds (or, on a signal or failure in the middle of a round, as of the
last round that closed): the models and optimizers, the model versions still needed by pending jobs
(sequential codes) and the messages already delivered for them, the scheme's state (straggler history,
token walks), DIFF2's running estimate, counters, RNG states, and how long metrics.jsonl was then.
Resuming cuts metrics.jsonl back to that length, so no round is counted twice or skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from dcoord.coding.base import ResultRef
from dcoord.errors import DcoordError
from dcoord.runtime import checkpoint as ckpt
from dcoord.runtime.rundir import RunDir, RunDirError

if TYPE_CHECKING:
    from dcoord.config import JobConfig
    from dcoord.runtime.coordinator import Coordinator

#: config fields that may change between a run and its resumption (they do not change the math)
OPERATIONAL = ("name", "device", "runtime.round_timeout_s", "runtime.worker_wait_s", "runtime.heartbeat_s",
               "runtime.checkpoint_every", "runtime.keep_checkpoints", "runtime.progress",
               "runtime.stream_chunk_bytes", "runtime.emulate_part_s", "runtime.restart_workers")


class Stopped(DcoordError):
    """SIGINT/SIGTERM: the run checkpointed and stopped its workers; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# -- capture / restore --------------------------------------------------------------------------------
def capture(coord: Coordinator) -> tuple[dict, int] | None:
    """The coordinator's state as of the last closed round, or None while a round is being applied."""
    if coord.phase == "closing":
        return None
    mid = coord.phase == "collect"
    done = coord.round - 1 if mid else coord.round
    scheme_state = coord.scheme_snapshot if mid else coord.scheme.state_dict()
    stored = {job: [(ref.round, ref.worker, ref.slot, arr) for ref, arr in msgs.items() if ref.round <= done]
              for job, msgs in coord.stored.items()}
    state = {
        "version": 1, "job_id": coord.job_id, "round": done, "config": coord.cfg.to_yaml(),
        "models": [m.state_dict() for m in coord.models],
        "optimizers": [o.state_dict() for o in coord.optimizers],
        "steps": list(coord.steps),
        "job_params": {j: [v, p] for j, (v, p) in coord.job_params.items()},
        "stored": {j: v for j, v in stored.items() if v},
        "part_losses": {j: dict(v) for j, v in coord.part_losses.items()},
        "scheme": scheme_state,
        "privacy": coord.privacy.state_dict() if coord.privacy is not None else None,
        "counters": {"rejected": dict(coord.rejected), "dropped_late": coord.dropped_late,
                     "stragglers_seen": coord.stragglers_seen, "max_residual": coord.max_residual,
                     "last_loss": coord.last_loss, "elapsed_s": time.monotonic() - coord.started},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "metrics_offset": coord.rundir.round_offset,
    }
    return state, done


def restore(coord: Coordinator, state: dict) -> None:
    """Put a checkpoint back into a freshly built coordinator of the same config."""
    if len(state["models"]) != len(coord.models):
        raise DcoordError(f"checkpoint has {len(state['models'])} models, the config {len(coord.models)}")
    coord.job_id = state["job_id"]
    for m, sd in zip(coord.models, state["models"]):
        m.load_state_dict(sd)
    for o, sd in zip(coord.optimizers, state["optimizers"]):
        o.load_state_dict(sd)
    coord.steps = [int(s) for s in state["steps"]]
    coord.round = int(state["round"])
    # parameters keep the dtype they were saved with (the model's): workers load them into the model as is
    coord.job_params = {int(j): (int(v), np.asarray(p)) for j, (v, p) in state["job_params"].items()}
    coord.stored = {int(j): {ResultRef(int(r), int(w), int(s)): np.asarray(a) for r, w, s, a in refs}
                    for j, refs in state["stored"].items()}
    coord.part_losses = {int(j): {int(p): float(x) for p, x in v.items()} for j, v in state["part_losses"].items()}
    if "elastic" in state["scheme"]:  # the run had re-planned its code over fewer workers
        from dcoord.coding.elastic import ElasticScheme

        coord.scheme = ElasticScheme.from_state(state["scheme"], coord.n)
    else:
        coord.scheme.load_state_dict(state["scheme"])
    if coord.privacy is not None:
        coord.privacy.load_state_dict(state["privacy"])
    c = state["counters"]
    coord.rejected = Counter({str(k): int(v) for k, v in c["rejected"].items()})
    coord.dropped_late, coord.stragglers_seen = int(c["dropped_late"]), int(c["stragglers_seen"])
    coord.max_residual, coord.last_loss = float(c["max_residual"]), float(c["last_loss"])
    coord.resumed_elapsed = float(c["elapsed_s"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(_tuples(state["rng"]["python"]))


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# -- config comparison ---------------------------------------------------------------------------------
def config_difference(saved_yaml: str, cfg: JobConfig) -> str | None:
    """The first field (dotted) whose value differs between the run's config and ``cfg``, with both values."""
    old = yaml.safe_load(saved_yaml) or {}
    new = yaml.safe_load(cfg.to_yaml()) or {}

    def walk(a, b, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                key = f"{prefix}{k}"
                if key in OPERATIONAL:
                    continue
                d = walk(a.get(k), b.get(k), key + ".")
                if d:
                    return d
            return None
        if a != b:
            return f"{prefix.rstrip('.')} (run: {a!r}, now: {b!r})"
        return None

    return walk(old, new, "")


# -- building a coordinator for a run directory ---------------------------------------------------------
def open_rundir(cfg: JobConfig, out: Path | None, mode: str = "new") -> RunDir:
    """The run directory for ``mode`` (new / resume / overwrite); a resumed run must have the same config."""
    rd = RunDir(out, mode, keep=cfg.runtime.keep_checkpoints)
    if mode == "resume" and out is not None:
        saved = rd.read_config()
        if saved is not None:
            diff = config_difference(saved, cfg)
            if diff:
                raise RunDirError(f"--resume {out}: the job config differs from the run's at {diff}; resume "
                                  "with the run's config (its config.yaml) or start a new run")
    return rd


def make_coordinator(cfg: JobConfig, out: Path | None, mode: str = "new") -> Coordinator:
    """A Coordinator writing to ``out``; with mode ``resume``, continued from the newest good checkpoint."""
    from dcoord.runtime.coordinator import Coordinator

    rd = open_rundir(cfg, out, mode)
    coord = Coordinator(cfg, rd)
    if mode == "resume" and out is not None:
        state, path = ckpt.load_latest(Path(out) / "checkpoints")
        diff = config_difference(state["config"], cfg)
        if diff:
            raise RunDirError(f"--resume {out}: the job config differs from the checkpoint's at {diff}")
        restore(coord, state)
        rd.open_metrics(int(state["metrics_offset"]))
        rd.log_event({"event": "resume", "from_round": coord.round + 1, "checkpoint": path.name,
                      "time": time.time()})
    else:
        rd.open_metrics()
    return coord


# -- CLI -------------------------------------------------------------------------------------------------
def add_resume_options(parser: argparse.ArgumentParser) -> None:
    """``--resume RUN_DIR`` and ``--overwrite`` (for run, coordinator and dcoord.launch)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest good checkpoint (same job config)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are deleted first)")


def out_and_mode(args: argparse.Namespace, cfg: JobConfig) -> tuple[Path, str]:
    """Where the run writes and how: --resume DIR wins; the default runs/NAME never leaves runs/."""
    resume = getattr(args, "resume", None)
    if resume:
        if args.out and Path(args.out).resolve() != Path(resume).resolve():
            raise RunDirError(f"--out {args.out} and --resume {resume} differ; give only --resume")
        return Path(resume), "resume"
    mode = "overwrite" if getattr(args, "overwrite", False) else "new"
    return (Path(args.out) if args.out else default_out(cfg.name)), mode


def default_out(name: str) -> Path:
    """runs/NAME with NAME reduced to one safe path component (``name: ../../x`` stays inside runs/)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "job"
    return Path("runs") / safe


def resume_hint(out: Path) -> str:
    """The command that continues this run: the same command line with ``--resume OUT``."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--out", "--resume"):
            skip = True
            continue
        if a == "--overwrite" or a.startswith(("--out=", "--resume=")):
            continue
        argv.append(a)
    prog = "python -m dcoord.launch" if "launch" in os.path.basename(sys.argv[0]) else "dcoord"
    return f"{prog} {shlex.join(argv)} --resume {shlex.quote(str(out))}"


# -- signals ---------------------------------------------------------------------------------------------
def stop_on_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task, stopped: list[int]) -> None:
    """SIGINT/SIGTERM cancel ``task`` (the run), which checkpoints and stops the workers on the way out."""
    def on_signal(sig: int) -> None:
        if not stopped:
            stopped.append(sig)
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


def stopped_error(coord: Coordinator, signum: int, out: Path | None) -> Stopped:
    name = signal.Signals(signum).name
    done = coord.rundir.last_checkpoint_round
    saved = (f"checkpoint after round {done + 1} in {out}/checkpoints" if done is not None and out
             else "no checkpoint written")
    how = f"; resume with: {resume_hint(out)}" if out and done is not None else ""
    closed = coord.round - 1 if coord.phase == "collect" else coord.round
    return Stopped(f"stopped by {name} after {closed + 1} of {coord.total_rounds} rounds; "
                   f"workers told to stop; {saved}{how}", signum)
