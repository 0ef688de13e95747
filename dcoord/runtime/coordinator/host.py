"""One job's life on the coordinator's side, for every way of starting it.

``dcoord run`` (runtime/local.py), ``dcoord coordinator`` (cli/train.py) and rank 0 under torchrun/mpirun
(launch.py) all call :func:`host_job`; they only add what is theirs (local worker processes, the
launcher's address exchange). The sequence lives here once, so a start-up or shutdown fix is made once:

1. SIGINT/SIGTERM handlers (first, so a Ctrl-C during start-up is a clean stop too);
2. the coordinator and its run directory (new / resume / overwrite, runtime/coordinator/resume.py);
3. the health-only port, the data plane step, the gRPC server (the only caller of ``start_server``);
4. metrics, the caller's ``started`` hook, the progress bar, the rounds;
5. on the way out: the server stopped after the shutdown messages flushed, and a run that never closed a
   round (start-up failed, or stopped by a signal first) leaves no half-made run directory behind.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcoord.errors import DcoordError
from dcoord.runtime.coordinator import resume
from dcoord.runtime.coordinator.ports import bind_problem
from dcoord.runtime.coordinator.progress import RoundProgress
from dcoord.runtime.coordinator.service import start_server
from dcoord.runtime.store.rundir import RUN_DIRS, RUN_FILES
from dcoord.runtime.transport.registry import announce_plane, get_plane, resolve_plane

if TYPE_CHECKING:
    from dcoord.config import JobConfig
    from dcoord.runtime.coordinator.coordinator import Coordinator
    from dcoord.runtime.security.auth import ServerSecurity


class ListenError(DcoordError):
    """A port the job was told to listen on cannot be used (taken, or not an address of this machine)."""


@dataclass
class HostSpec:
    """What to host: the job, where it writes, where it listens, and what the caller's start-up adds."""

    cfg: JobConfig
    out: Path | None
    mode: str = "new"  # new / resume / overwrite (RunDir)
    listen: str = "127.0.0.1:0"
    listen_flag: str = "--listen"  # how the user names ``listen`` (for the one-line error)
    security: ServerSecurity | None = None
    progress: bool = True
    start_timeout: float = 120.0  # seconds for every worker to register
    health_port: int | None = None  # plaintext grpc.health.v1 only (health.py); None/0 = off
    health_host: str = "127.0.0.1"  # where the health port binds (--health-host; loopback unless told)
    checkpoint_key: bytes | None = None  # signs checkpoints and is needed to resume (store/checkpoint.py)
    metrics: Callable[[Coordinator], Any] | None = None  # starts the Prometheus endpoint (metrics.py)
    launch_plane: Any = None  # torchrun/mpirun: the launcher's data plane (transport/registry.py)
    launch_ranks: range = range(0)  # the ranks that send payloads over ``launch_plane``
    signals: bool = True  # SIGINT/SIGTERM stop the run; False off the main thread (dcoord.loop's rank 0)


@dataclass
class HostHooks:
    """The caller's part: ``started(coord, port)`` once the server listens, ``on_round(record, coord)``
    after each round, ``start_failed(exc)`` when the job could not start (e.g. tell the other ranks), and
    ``stopped(coord, signum)`` for the error a signal ends the run with (default: resume.stopped_error)."""

    started: Callable[[Coordinator, int], None] | None = None
    on_round: Callable[[dict, Coordinator], None] | None = None
    start_failed: Callable[[BaseException], None] | None = None
    stopped: Callable[[Coordinator, int], DcoordError] | None = None


async def host_job(spec: HostSpec, hooks: HostHooks | None = None) -> dict:
    """Run the job in ``spec`` to its end and return the summary; a signal raises the ``stopped`` error."""
    from dcoord.runtime.coordinator.health import start_health_server

    hooks = hooks or HostHooks()
    loop = asyncio.get_running_loop()
    stopped: list[int] = []
    if spec.signals:
        resume.stop_on_signals(loop, asyncio.current_task(), stopped)
    fresh = spec.out is not None and not Path(spec.out).exists()
    coord = server = probe = None
    discard = False  # a run that did not start, or was stopped before its first round, leaves nothing
    try:
        try:
            chosen = None
            if spec.launch_plane is None:  # standalone (a launcher's rank 0 chose in launch.resolve_config)
                spec.cfg, *chosen = resolve_plane(spec.cfg, "none")  # a plane that cannot run here: one line
            check_ports_free(spec)  # before the run directory is made: a taken port leaves nothing behind
            coord = resume.make_coordinator(spec.cfg, spec.out, spec.mode, spec.checkpoint_key)
            probe = await start_health_server(spec.health_port, spec.health_host)
            matcher = data_plane_matcher(coord, spec)
            server, port = await _listen(coord, spec, matcher)
            start_data_plane(coord, spec, matcher)
            if spec.metrics is not None:
                spec.metrics(coord)
            if hooks.started is not None:
                hooks.started(coord, port)
            if chosen and spec.progress:  # once it runs (an error before it stays the only line)
                announce_plane(*chosen)
        except BaseException as exc:
            discard = coord is not None  # without it the directory may be another process's run
            if coord is not None:
                coord.close_data_plane()
                coord.rundir.close()
            if hooks.start_failed is not None:
                hooks.start_failed(exc)
            raise
        bar = RoundProgress(coord, enabled=spec.progress and spec.cfg.runtime.progress)

        def each_round(record: dict, c: Coordinator) -> None:
            bar.update(record, c)
            if hooks.on_round is not None:
                hooks.on_round(record, c)

        with bar:
            return await coord.run(progress=each_round, start_timeout=spec.start_timeout)
    except asyncio.CancelledError:
        if not stopped:
            raise
        discard = coord is not None and resume.unstarted(coord)
        if coord is None:
            raise resume.Stopped(f"stopped by {signal.Signals(stopped[0]).name} before the job started; "
                                 "nothing written", stopped[0]) from None
        raise (hooks.stopped or _default_stopped(spec))(coord, stopped[0]) from None
    finally:
        if spec.signals:
            resume.remove_signal_handlers(loop)
        if server is not None:
            await asyncio.sleep(0.2)  # let the shutdown messages flush
            await server.stop(grace=1.0)
        if probe is not None:
            await probe.stop(grace=None)
        if discard:
            discard_unstarted(spec, fresh)


def _default_stopped(spec: HostSpec) -> Callable[[Coordinator, int], DcoordError]:
    return lambda coord, signum: resume.stopped_error(coord, signum, spec.out)


def discard_unstarted(spec: HostSpec, fresh: bool) -> None:
    """A run that never closed a round leaves nothing behind: the directory goes if this run made it,
    else exactly the run's files (as --overwrite removes them). A resumed run keeps its checkpoints."""
    out = spec.out
    if out is None or spec.mode == "resume" or not Path(out).is_dir():
        return
    out = Path(out)
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
        return
    for f in RUN_FILES:
        (out / f).unlink(missing_ok=True)
    for d in RUN_DIRS:
        shutil.rmtree(out / d, ignore_errors=True)


# -- listening ---------------------------------------------------------------------------------------------
async def _listen(coord: Coordinator, spec: HostSpec, matcher) -> tuple[Any, int]:
    """The coordinator's gRPC server on ``spec.listen``; a port that cannot be used is one line."""
    try:
        return await start_server(coord, spec.listen, matcher=matcher, security=spec.security)
    except OSError:
        raise ListenError(listen_problem(spec.listen, spec.listen_flag)) from None


def check_ports_free(spec: HostSpec) -> None:
    """Refuse a fixed port that is taken before anything is made (gRPC would log its own error first)."""
    host, _, port = spec.listen.rpartition(":")
    if port.isdigit() and int(port):
        why = bind_problem(host.strip("[]") or "0.0.0.0", int(port))
        if why:
            raise ListenError(f"{spec.listen_flag} {spec.listen}: {why}; choose another port "
                              f"({spec.listen_flag} HOST:PORT) or stop what holds it")
    if spec.health_port:
        from dcoord.runtime.coordinator.health import port_problem

        why = bind_problem(spec.health_host, spec.health_port)
        if why:
            raise ListenError(port_problem(spec.health_port, why))


def listen_problem(listen: str, flag: str) -> str:
    """Why ``listen`` cannot be used, naming ``flag`` and the fix."""
    host, _, port = listen.rpartition(":")
    why = bind_problem(host.strip("[]") or "0.0.0.0", int(port)) if port.isdigit() else "not HOST:PORT"
    return f"{flag} {listen}: {why or 'cannot listen there'}; choose another port ({flag} HOST:PORT) or stop " \
           "what holds it"


# -- the data plane step (which plane carries payloads is decided here, once) --------------------------------
def data_plane_matcher(coord: Coordinator, spec: HostSpec):
    """Under a launcher whose plane carries payloads: the PayloadMatcher that pairs them with the results
    coming over gRPC (the tcp plane makes its own inside start_server)."""
    if spec.launch_plane is None or not get_plane(spec.cfg.transport).carries_payloads:
        return None
    from dcoord.runtime.transport.base import PayloadMatcher

    return PayloadMatcher(coord.results, asyncio.get_running_loop())


def start_data_plane(coord: Coordinator, spec: HostSpec, matcher) -> None:
    """Receive payloads from ``spec.launch_ranks`` over the launcher's plane and send models down it
    (CPU gloo, MPI: models_down.py), as the tcp server does standalone."""
    if matcher is None:
        return
    loop = asyncio.get_running_loop()

    def fail(worker: int, msg: str) -> None:  # receiver thread: count it on the loop, if still running
        try:
            loop.call_soon_threadsafe(coord.reject, "data-plane", msg)
        except RuntimeError:  # the event loop is closed: the run is over
            pass

    plane = spec.launch_plane
    plane.start_receiving(spec.launch_ranks, 4 * max(coord.num_params, 1), matcher.on_payload, fail)
    coord.use_model_sender(plane.model_sender(range(len(spec.launch_ranks))))
