"""Resuming a run: opening its run directory, continuing from the newest good checkpoint, signals and CLI glue.

A checkpoint (Coordinator.checkpoint_state) is taken between rounds (or, on a signal or failure in the
middle of a round, as of the last round that closed): the models and optimizers, the model versions still
needed by pending jobs (sequential codes) and the messages already delivered for them, the scheme's state
(straggler history, token walks), DIFF2's running estimate, counters, RNG states, and how long
metrics.jsonl was then. Resuming cuts metrics.jsonl back to that length, so no round is counted twice or
skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dcoord.errors import DcoordError
from dcoord.runtime.store import checkpoint as ckpt
from dcoord.runtime.store.rundir import NAMING, RunDir, RunDirError, is_run, option

if TYPE_CHECKING:
    from dcoord.config import JobConfig
    from dcoord.runtime.coordinator.coordinator import Coordinator

#: config fields that may change between a run and its resumption (they do not change the math)
OPERATIONAL = ("name", "device", "runtime.round_timeout_s", "runtime.worker_wait_s", "runtime.heartbeat_s",
               "runtime.checkpoint_every", "runtime.keep_checkpoints", "runtime.progress",
               "runtime.stream_chunk_bytes", "runtime.emulate_part_s", "runtime.emulate_job_s",
               "runtime.data_port", "runtime.loader_workers", "runtime.restart_workers", "transport")


class Stopped(DcoordError):
    """SIGINT/SIGTERM: the run checkpointed and stopped its workers; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# -- config comparison ---------------------------------------------------------------------------------
def config_difference(saved_yaml: str, cfg: JobConfig) -> str | None:
    """The first field (dotted) whose value differs between the run's config and ``cfg``, with both values.

    Secret fields are not compared: config.yaml never holds them (runtime/coordinator/sessions.py), and the checkpoint
    carries the state they seeded (the coordinator's noise seed). ``rounds`` is not compared here either:
    raising it extends the run where that keeps its meaning (rounds_change says)."""
    from dcoord.runtime.coordinator.sessions import SECRET_FIELDS

    old = yaml.safe_load(saved_yaml) or {}
    new = yaml.safe_load(cfg.to_yaml()) or {}
    if isinstance(old, dict) and isinstance(new, dict):
        old, new = {k: v for k, v in old.items() if k != "rounds"}, {k: v for k, v in new.items() if k != "rounds"}

    def walk(a, b, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                key = f"{prefix}{k}"
                if key in OPERATIONAL or key in SECRET_FIELDS:
                    continue
                d = walk(a.get(k), b.get(k), key + ".")
                if d:
                    return d
            return None
        if a != b:
            return f"{prefix.rstrip('.')} (run: {a!r}, now: {b!r})"
        return None

    return walk(old, new, "")


def saved_rounds(saved_yaml: str) -> int | None:
    data = yaml.safe_load(saved_yaml) or {}
    return data.get("rounds") if isinstance(data, dict) else None


def rounds_change(saved_yaml: str, cfg: JobConfig, out: Path) -> str | None:
    """Why ``cfg.rounds`` may not replace the run's ``rounds`` (None: same, or a run that may be extended).

    More rounds continue the same run, as if it had been asked for that many from the start, except where
    the total shapes what was already done: a privacy budget calibrated to the rounds, a sequential code
    whose last rounds only drain, an elastic plan that recorded them."""
    old = saved_rounds(saved_yaml)
    if old is None or old == cfg.rounds:
        return None
    fixed = ("privacy: the noise was calibrated to the run's rounds" if cfg.privacy is not None else
             "runtime.elastic: the re-planned code recorded the run's rounds" if cfg.runtime.elastic else
             f"coding.scheme {cfg.coding.scheme}: a sequential code's last rounds only drain"
             if cfg.make_scheme().delay else None)
    if fixed:
        return f"{option('resume', out)}: rounds cannot change ({old} -> {cfg.rounds}) for this run ({fixed})"
    return None


# -- building a coordinator for a run directory ---------------------------------------------------------
def open_rundir(cfg: JobConfig, out: Path | None, mode: str = "new", discard_final: bool = True) -> RunDir:
    """The run directory for ``mode`` (new / resume / overwrite); a resumed run must have the same config,
    except ``rounds``, which may grow (a finished run is then continued: its summary is superseded)."""
    extend = False
    if mode == "resume" and out is not None and (Path(out) / "config.yaml").is_file():
        old = saved_rounds((Path(out) / "config.yaml").read_text())
        extend = old is not None and cfg.rounds > old
        if old is not None and cfg.rounds < old and (Path(out) / "summary.json").is_file():
            raise RunDirError(f"{option('resume', out)}: rounds {cfg.rounds} is below the {old} rounds that run finished; "
                              f"give rounds > {old} to extend it")
    rd = RunDir(out, mode, keep=cfg.runtime.keep_checkpoints, finished_ok=extend)
    if mode == "resume" and out is not None:
        saved = rd.read_config()
        if saved is not None:
            diff = config_difference(saved, cfg)
            why = (f"{option('resume', out)}: the job config differs from the run's at {diff}; resume with the run's "
                   "config (its config.yaml) or start a new run") if diff else rounds_change(saved, cfg, out)
            if why:
                rd.close()  # releases the directory's lock
                raise RunDirError(why)
        rd.extending = extend
        if extend and discard_final:  # the run goes on: its old summary and final model no longer describe it
            rd.discard_final()
    return rd


def make_coordinator(cfg: JobConfig, out: Path | None, mode: str = "new",
                     checkpoint_key: bytes | None = None) -> Coordinator:
    """A Coordinator writing to ``out``; with mode ``resume``, continued from the newest good checkpoint.
    ``checkpoint_key`` (checkpoint.signing_key): checkpoints are signed with it and must be to resume."""
    from dcoord.runtime.coordinator.coordinator import Coordinator

    rd = open_rundir(cfg, out, mode, discard_final=False)  # discarded once the checkpoint is taken
    rd.checkpoint_key = checkpoint_key
    try:
        coord = Coordinator(cfg, rd)
        if mode == "resume" and out is not None:
            state, path = ckpt.load_latest(Path(out) / "checkpoints", checkpoint_key)
            diff = config_difference(state["config"], cfg)
            if diff:
                raise RunDirError(f"{option('resume', out)}: the job config differs from the checkpoint's at {diff}")
            why = rounds_change(state["config"], cfg, out)
            if why:
                raise RunDirError(why)
            if int(state["round"]) + 1 > coord.total_rounds:
                raise RunDirError(f"{option('resume', out)}: rounds {cfg.rounds} is below the checkpoint's round "
                                  f"{int(state['round']) + 1}; give rounds >= {int(state['round']) + 1}")
            coord.load_checkpoint_state(state)
            if rd.extending:  # only now: a refused resume leaves the finished run as it was
                rd.discard_final()
            rd.open_metrics(int(state["metrics_offset"]))
            rd.log_event({"event": "resume", "from_round": coord.round + 1, "checkpoint": path.name,
                          "time": time.time()})
        else:
            rd.open_metrics()
    except BaseException:
        rd.close()  # no coordinator will run: release the directory's lock for the next attempt
        raise
    return coord


# -- where a run writes, and the command that continues it -----------------------------------------------
def default_out(name: str) -> Path:
    """runs/NAME with NAME reduced to one safe path component (``name: ../../x`` stays inside runs/)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "job"
    return Path("runs") / safe


def resume_or_new(out: Path) -> tuple[Path, str]:
    """Where the same command line goes when it runs again (a re-applied Kubernetes Job): the runs it wrote
    are ``out``, ``out-2``, ``out-3`` ...; the newest is resumed when it stopped before its end and has a
    checkpoint, otherwise the next name starts a new run (a finished run, or one that died before its first
    checkpoint, is left as it is)."""
    out = Path(out)
    series = (out if k == 1 else out.with_name(f"{out.name}-{k}") for k in itertools.count(1))
    last = None
    for path in series:
        if not is_run(path):
            break
        last = path
    if last is not None and not (last / "summary.json").is_file() and ckpt.list_checkpoints(last / "checkpoints"):
        return last, "resume"
    return path, "new"


def resume_hint(out: Path) -> str:
    """The command that continues this run: the same command line with ``--resume OUT`` (from the Python
    API: the same call with ``resume=OUT``)."""
    if NAMING.get() == "api":
        return f"dcoord.train(..., {option('resume', out)})"
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


def unstarted(coord: Coordinator) -> bool:
    """No round closed and no checkpoint written: a stop now leaves nothing worth keeping (host.py)."""
    return coord.round < 0 and coord.rundir.last_checkpoint_round is None


def stopped_error(coord: Coordinator, signum: int, out: Path | None) -> Stopped:
    name = signal.Signals(signum).name
    if unstarted(coord) and coord.rundir.mode != "resume":
        return Stopped(f"stopped by {name} before the first round ({coord.alive_count()} of {coord.n} workers "
                       f"had registered); nothing trained{f', {out} not kept' if out else ''}", signum)
    done = coord.rundir.last_checkpoint_round
    saved = (f"checkpoint after round {done + 1} in {out}/checkpoints" if done is not None and out
             else "no checkpoint written")
    how = f"; resume with: {resume_hint(out)}" if out and done is not None else ""
    closed = coord.round - 1 if coord.phase == "collect" else coord.round
    return Stopped(f"stopped by {name} after {closed + 1} of {coord.total_rounds} rounds; "
                   f"workers told to stop; {saved}{how}", signum)
