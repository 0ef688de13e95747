"""`dcoord run`: a coordinator in this process and N worker processes on this machine, gRPC on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from dcoord.config import JobConfig
from dcoord.runtime.coordinator import Coordinator
from dcoord.runtime.progress import RoundProgress
from dcoord.runtime.resume import make_coordinator, remove_signal_handlers, stop_on_signals, stopped_error
from dcoord.runtime.service import start_server
from dcoord.runtime.supervise import WorkerSupervisor


def spawn_worker(address: str, requested_id: int = -1, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start one worker process (``python -m dcoord worker``) that connects to ``address``."""
    cmd = [sys.executable, "-m", "dcoord", "worker", "--coordinator", address, "--id", str(requested_id)]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def worker_secret_env(cfg: JobConfig) -> dict[str, str]:
    """trust: workers: the workers' shared noise secret, for local runs that did not provide one.

    The launcher (not the Coordinator object) makes a fresh random secret and puts it only into the worker
    processes' environment; give your own in ``$DCOORD_NOISE_SECRET`` (or privacy.secret_file) to make the
    noise replayable across runs.
    """
    p = cfg.privacy
    if p is None or p.trust != "workers" or p.secret_file is not None or os.environ.get(p.secret_env):
        return {}
    return {p.secret_env: secrets.token_hex(32)}


async def run_local_async(cfg: JobConfig, out: Path | None, progress: bool = True,
                          on_started=None, on_round=None, spawn: int | None = None, mode: str = "new",
                          respawn: bool | None = None) -> dict:
    """``on_started(coord, procs, address)`` and ``on_round(record, coord)`` are hooks for tests and tools;
    ``spawn`` starts fewer local workers than the config asks for (the rest join from elsewhere).

    ``mode``: new / resume / overwrite (see RunDir). ``respawn`` (default runtime.restart_workers): a local
    worker process that dies while the run goes on is started again with the same id, as a pod restart
    would, and rejoins.
    SIGINT/SIGTERM checkpoint, stop the workers and raise :class:`~dcoord.runtime.resume.Stopped`."""
    coord = make_coordinator(cfg, out, mode)
    server, port = await start_server(coord, "127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    logs = (out / "workers") if out else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    extra_env = worker_secret_env(cfg)
    procs = [spawn_worker(address, i, logs / f"worker-{i}.log" if logs else None, extra_env)
             for i in range(cfg.workers if spawn is None else spawn)]
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
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run_local(cfg: JobConfig, out: Path | None, progress: bool = True, **hooks) -> dict:
    """Run a whole job on this machine; returns the summary dict."""
    return asyncio.run(run_local_async(cfg, out, progress, **hooks))
