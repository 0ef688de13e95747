"""`dcoord run`: a coordinator in this process and N worker processes on this machine, gRPC on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dcoord.config import JobConfig
from dcoord.runtime.coordinator.coordinator import Coordinator
from dcoord.runtime.coordinator.host import HostHooks, HostSpec, host_job
from dcoord.runtime.coordinator.resume import Stopped
from dcoord.runtime.coordinator.supervise import WorkerSupervisor
from dcoord.runtime.security.auth import (
    ALLOW_ENV,
    TOKEN_FILE_ENV,
    ServerSecurity,
    random_token,
    write_token_file,
)
from dcoord.runtime.worker.guard import own_job_allowances


def spawn_worker(address: str, requested_id: int = -1, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start one worker process (``python -m dcoord worker``) that connects to ``address``."""
    # --no-rejoin: the coordinator is our parent process; a resumed run starts workers of its own
    cmd = [sys.executable, "-m", "dcoord", "worker", "--coordinator", address, "--id", str(requested_id),
           "--no-rejoin"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def worker_secret_env(cfg: JobConfig) -> dict[str, str]:
    """trust: workers or Poisson sampling: the workers' shared secret, for local runs that did not provide one.

    The launcher (not the Coordinator object) makes a fresh random secret and puts it only into the worker
    processes' environment; give your own in ``$DCOORD_NOISE_SECRET`` (or a file named by
    ``$DCOORD_NOISE_SECRET_FILE``) to make the noise replayable across runs.
    """
    from dcoord.privacy.mechanisms import SECRET_ENV, SECRET_FILE_ENV

    p = cfg.privacy
    needs = p is not None and (p.trust == "workers" or p.sampling == "poisson")  # the noise, the Poisson batches
    if not needs or os.environ.get(SECRET_FILE_ENV) or os.environ.get(SECRET_ENV):
        return {}
    return {SECRET_ENV: secrets.token_hex(32)}


async def run_local_async(cfg: JobConfig, out: Path | None, progress: bool = True,
                          on_started=None, on_round=None, spawn: int | None = None, mode: str = "new",
                          respawn: bool | None = None, token: str | None = None,
                          checkpoint_key: bytes | None = None) -> dict:
    """``on_started(coord, procs, address)`` and ``on_round(record, coord)`` are hooks for tests and tools;
    ``spawn`` starts fewer local workers than the config asks for (the rest join from elsewhere).

    ``mode``: new / resume / overwrite (see RunDir). ``respawn`` (default runtime.restart_workers): a local
    worker process that dies while the run goes on is started again with the same id, as a pod restart
    would, and rejoins.
    SIGINT/SIGTERM checkpoint, stop the workers and raise :class:`~dcoord.runtime.coordinator.resume.Stopped`
    (the job's life is runtime/coordinator/host.py's; this adds the local worker processes).

    The server listens on loopback and requires a bearer token (``token``, default a fresh random one),
    which the local workers read from a 0600 file in a private temporary directory named by
    $DCOORD_TOKEN_FILE (never argv, never the run directory). They may run the job's own workload.
    ``checkpoint_key`` (checkpoint.signing_key) signs checkpoints; a resume then needs it (the random token
    is never the key: it would not be there to resume with)."""
    token = token or random_token()
    workers = LocalWorkers(cfg, out, token, cfg.workers if spawn is None else spawn,
                           cfg.runtime.restart_workers if respawn is None else respawn, on_started)
    spec = HostSpec(cfg, out, mode, security=ServerSecurity(token=token), progress=progress,
                    checkpoint_key=checkpoint_key)
    interrupted = False
    try:
        return await host_job(spec, HostHooks(started=workers.start, on_round=on_round))
    except Stopped:
        interrupted = True
        raise
    finally:
        workers.close(interrupted)


class LocalWorkers:
    """``dcoord run``'s worker processes: started once the coordinator listens, restarted with the same id
    when one dies mid-run (``respawn``, as a pod restart would), and ended with the job."""

    def __init__(self, cfg: JobConfig, out: Path | None, token: str, count: int, respawn: bool,
                 on_started=None) -> None:
        self.cfg, self.out, self.count, self.respawn, self.on_started = cfg, out, count, respawn, on_started
        self.secret_dir = tempfile.TemporaryDirectory(prefix="dcoord-")
        self.env = {**worker_secret_env(cfg), ALLOW_ENV: ",".join(own_job_allowances(cfg)),
                    TOKEN_FILE_ENV: str(write_token_file(Path(self.secret_dir.name), token))}
        self.procs: list[subprocess.Popen] = []
        self.supervisor: WorkerSupervisor | None = None
        self.threads = torch.get_num_threads()
        self.coord: Coordinator | None = None

    def start(self, coord: Coordinator, port: int) -> None:
        self.coord = coord
        address = f"127.0.0.1:{port}"
        logs = (self.out / "workers") if self.out else None
        if logs:
            logs.mkdir(parents=True, exist_ok=True)

        def one(i: int) -> subprocess.Popen:
            return spawn_worker(address, i, logs / f"worker-{i}.log" if logs else None, self.env)

        self.procs.extend(one(i) for i in range(self.count))
        self.threads = share_cores(len(self.procs))
        if self.on_started is not None:
            self.on_started(coord, self.procs, address)
        if self.respawn:
            self.supervisor = WorkerSupervisor(coord, self.procs, one)
            self.supervisor.start()

    def close(self, interrupted: bool) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        torch.set_num_threads(self.threads)
        # stopped while workers were still starting: nobody told those to stop (they never registered)
        starting = interrupted and self.coord is not None and self.coord.state == "waiting-for-workers"
        stop_workers(self.procs, starting)
        self.secret_dir.cleanup()


def stop_workers(procs: list[subprocess.Popen], starting: bool, grace_s: float = 5.0) -> None:
    """Wait for the local worker processes to exit (they were told to stop), all within one ``grace_s``,
    then kill what is left. ``starting``: the job was stopped before every worker registered; those were
    told nothing, so the user is told what is waited for and they are ended at once instead of each
    waiting out its connect timeout for a coordinator that is gone."""
    running = [p for p in procs if p.poll() is None]
    if starting and running:
        print(f"stopping: waiting for {len(running)} worker{'s' if len(running) > 1 else ''} to exit",
              file=sys.stderr, flush=True)
        for p in running:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _signal_group(p: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:  # already gone
        pass


def share_cores(local_workers: int) -> int:
    """Leave the cores to the local workers (one torch thread each): the coordinator's torch ops use the
    cores they leave, at least one. Measured with gpt-char and four workers on two cores, in alternating
    runs, rounds took 80, 60 and 62 ms with one coordinator thread against 77, 71 and 76 ms with two
    (idle torch threads keep cores the workers need); with a 50 MB model and two idle workers one thread
    costs ~7 ms of optimizer step.
    Returns the thread count to restore afterwards."""
    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(before, cores - local_workers)))
    return before


def run_local(cfg: JobConfig, out: Path | None, progress: bool = True, **hooks) -> dict:
    """Run a whole job on this machine; returns the summary dict."""
    return asyncio.run(run_local_async(cfg, out, progress, **hooks))
