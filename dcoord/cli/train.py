"""``dcoord run``, ``dcoord coordinator`` and ``dcoord worker``: the commands that train."""

from __future__ import annotations

import asyncio
import sys

from dcoord.cli.options import add_resume_options, address, job_args, load_job, out_and_mode
from dcoord.runtime.coordinator.health import add_health_options, health_port, start_health_server
from dcoord.runtime.coordinator.metrics import add_metrics_options, metrics_hook


def cmd_run(args) -> int:
    from rich.console import Console

    from dcoord.runtime.coordinator.progress import summary_table
    from dcoord.runtime.local import run_local

    cfg = load_job(args)
    out, mode = out_and_mode(args, cfg)
    console = Console()
    from dcoord.coding.precision import print_precision  # issue 16: decode amplification, warned when high

    print_precision(cfg, console)
    summary = run_local(cfg, out, progress=not args.quiet, mode=mode, on_started=metrics_hook(args, "127.0.0.1"))
    console.print(summary_table(summary))
    console.print(f"run directory: {out}")
    return 0


def cmd_coordinator(args) -> int:
    from rich.console import Console

    from dcoord.runtime.coordinator import resume
    from dcoord.runtime.coordinator.progress import RoundProgress, summary_table
    from dcoord.runtime.coordinator.service import start_server
    from dcoord.runtime.security.options import security_from_args
    from dcoord.runtime.transport.registry import announce_plane, resolve_plane

    security = security_from_args(args, "coordinator")
    cfg, plane, reason = resolve_plane(load_job(args), "none")  # a transport that cannot run here: one line, now
    out, mode = out_and_mode(args, cfg)
    host = args.listen.rpartition(":")[0].strip("[]")
    start_metrics = metrics_hook(args, host)
    health_port(args)  # a bad $DCOORD_HEALTH_PORT fails before the job loads

    async def main() -> dict:
        coord = resume.make_coordinator(cfg, out, mode)
        probe = await start_health_server(args, host)
        server, port = await start_server(coord, args.listen, security=security)
        if start_metrics:
            start_metrics(coord)
        if not args.quiet:
            announce_plane(plane, reason)
        print(f"coordinator for job {coord.job_id} listening on port {port}; "
              f"waiting for {cfg.workers} workers", file=sys.stderr, flush=True)
        loop, stopped = asyncio.get_running_loop(), []
        resume.stop_on_signals(loop, asyncio.current_task(), stopped)
        try:
            with RoundProgress(coord, enabled=not args.quiet) as bar:
                return await coord.run(progress=bar.update, start_timeout=args.wait_workers)
        except asyncio.CancelledError:
            if not stopped:
                raise
            raise resume.stopped_error(coord, stopped[0], out) from None
        finally:
            resume.remove_signal_handlers(loop)
            await asyncio.sleep(0.2)
            await server.stop(grace=1.0)
            if probe is not None:
                await probe.stop(grace=None)

    summary = asyncio.run(main())
    Console().print(summary_table(summary))
    return 0


def cmd_worker(args) -> int:
    from dcoord.errors import DcoordError
    from dcoord.runtime.security.options import worker_kwargs
    from dcoord.runtime.worker.worker import run_worker

    if not args.coordinator:
        raise DcoordError("worker: give --coordinator HOST:PORT (or DCOORD_COORDINATOR)")
    rounds = run_worker(args.coordinator, requested_id=args.id, device=args.device, rejoin=not args.no_rejoin,
                        **worker_kwargs(args))
    print(f"worker done: {rounds} rounds computed", file=sys.stderr)
    return 0


def register(sub) -> None:
    from dcoord.runtime.security.options import add_security_options, env

    sp = sub.add_parser("run", help="coordinator + N local worker processes over loopback gRPC")
    job_args(sp)
    add_resume_options(sp)
    add_metrics_options(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("coordinator", help="run a coordinator that waits for remote workers")
    job_args(sp)
    add_resume_options(sp)
    sp.add_argument("--listen", type=address, default=env("DCOORD_LISTEN", "0.0.0.0:50051"),
                    help="HOST:PORT to listen on [DCOORD_LISTEN]")
    add_security_options(sp, "coordinator")
    sp.add_argument("--wait-workers", type=float, default=600.0, help="seconds to wait for all workers")
    add_metrics_options(sp)
    add_health_options(sp)
    sp.set_defaults(func=cmd_coordinator)

    sp = sub.add_parser("worker", help="a worker that joins a coordinator")
    sp.add_argument("--coordinator", type=address, default=env("DCOORD_COORDINATOR"),
                    help="HOST:PORT of the coordinator [DCOORD_COORDINATOR]")
    sp.add_argument("--id", type=int, default=env("DCOORD_WORKER_ID", -1),
                    help="worker id to take (default: any free one) [DCOORD_WORKER_ID]")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default=env("DCOORD_DEVICE"), help="[DCOORD_DEVICE]")
    sp.add_argument("--no-rejoin", action="store_true",
                    help="exit (status 4) as soon as the coordinator is lost, instead of re-registering for up "
                         "to --connect-timeout (a coordinator restarted with --resume takes workers back)")
    add_security_options(sp, "worker")
    sp.set_defaults(func=cmd_worker)
