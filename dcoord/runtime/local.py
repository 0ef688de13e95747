"""`dcoord run`: a coordinator in this process and N worker processes on this machine, gRPC on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dcoord.config import JobConfig
from dcoord.runtime.coordinator.coordinator import Coordinator
from dcoord.runtime.coordinator.progress import RoundProgress
from dcoord.runtime.coordinator.resume import (
    make_coordinator,
    remove_signal_handlers,
    stop_on_signals,
    stopped_error,
)
from dcoord.runtime.coordinator.service import start_server
from dcoord.runtime.coordinator.supervise import WorkerSupervisor
from dcoord.runtime.security.auth import (
    ALLOW_ENV,
    TOKEN_FILE_ENV,
    ServerSecurity,
    random_token,
    write_token_file,
)


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
    """trust: workers: the workers' shared noise secret, for local runs that did not provide one.

    The launcher (not the Coordinator object) makes a fresh random secret and puts it only into the worker
    processes' environment; give your own in ``$DCOORD_NOISE_SECRET`` (or a file named by
    ``$DCOORD_NOISE_SECRET_FILE``) to make the noise replayable across runs.
    """
    from dcoord.privacy.mechanisms import SECRET_ENV, SECRET_FILE_ENV

    p = cfg.privacy
    if p is None or p.trust != "workers" or os.environ.get(SECRET_FILE_ENV) or os.environ.get(SECRET_ENV):
        return {}
    return {SECRET_ENV: secrets.token_hex(32)}


async def run_local_async(cfg: JobConfig, out: Path | None, progress: bool = True,
                          on_started=None, on_round=None, spawn: int | None = None, mode: str = "new",
                          respawn: bool | None = None, token: str | None = None) -> dict:
    """``on_started(coord, procs, address)`` and ``on_round(record, coord)`` are hooks for tests and tools;
    ``spawn`` starts fewer local workers than the config asks for (the rest join from elsewhere).

    ``mode``: new / resume / overwrite (see RunDir). ``respawn`` (default runtime.restart_workers): a local
    worker process that dies while the run goes on is started again with the same id, as a pod restart
    would, and rejoins.
    SIGINT/SIGTERM checkpoint, stop the workers and raise :class:`~dcoord.runtime.coordinator.resume.Stopped`.

    The server listens on loopback and requires a bearer token (``token``, default a fresh random one),
    which the local workers read from a 0600 file in a private temporary directory named by
    $DCOORD_TOKEN_FILE (never argv, never the run directory). They may run the job's own workload."""
    from dcoord.runtime.transport.registry import announce_plane, resolve_plane

    cfg, plane, reason = resolve_plane(cfg, "none")  # before anything starts: a transport that cannot run here
    token = token or random_token()
    coord = make_coordinator(cfg, out, mode)
    server, port = await start_server(coord, "127.0.0.1:0", security=ServerSecurity(token=token))
    if progress:  # once it runs (an error before it is the only line); --quiet: not at all
        announce_plane(plane, reason)
    address = f"127.0.0.1:{port}"
    logs = (out / "workers") if out else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    secret_dir = tempfile.TemporaryDirectory(prefix="dcoord-")
    extra_env = {**worker_secret_env(cfg), TOKEN_FILE_ENV: str(write_token_file(Path(secret_dir.name), token)),
                 ALLOW_ENV: cfg.workload}
    procs = [spawn_worker(address, i, logs / f"worker-{i}.log" if logs else None, extra_env)
             for i in range(cfg.workers if spawn is None else spawn)]
    threads = share_cores(len(procs))
    if on_started is not None:
        on_started(coord, procs, address)
    bar = RoundProgress(coord, enabled=progress and cfg.runtime.progress)

    def each_round(record: dict, c: Coordinator) -> None:
        bar.update(record, c)
        if on_round is not None:
            on_round(record, c)

    loop = asyncio.get_running_loop()
    stopped: list[int] = []
    stop_on_signals(loop, asyncio.current_task(), stopped)
    respawn = cfg.runtime.restart_workers if respawn is None else respawn
    supervisor = WorkerSupervisor(coord, procs, lambda i: spawn_worker(
        address, i, logs / f"worker-{i}.log" if logs else None, extra_env)) if respawn else None
    try:
        with bar:
            if supervisor is not None:
                supervisor.start()
            return await coord.run(progress=each_round)
    except asyncio.CancelledError:
        if not stopped:
            raise
        raise stopped_error(coord, stopped[0], out) from None
    finally:
        remove_signal_handlers(loop)
        if supervisor is not None:
            supervisor.stop()
        await asyncio.sleep(0.2)  # let shutdown messages flush
        await server.stop(grace=1.0)
        torch.set_num_threads(threads)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        secret_dir.cleanup()


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
