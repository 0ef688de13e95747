"""``dcoord run``, ``dcoord coordinator`` and ``dcoord worker``: the commands that train."""

from __future__ import annotations

import asyncio
import sys

from dcoord.cli.options import add_resume_options, address, checkpoint_key, job_args, load_job, out_and_mode
from dcoord.runtime.coordinator.health import add_health_options, health_port
from dcoord.runtime.coordinator.metrics import add_metrics_options, metrics_hook


def cmd_run(args) -> int:
    from rich.console import Console

    from dcoord.runtime.coordinator.progress import summary_table
    from dcoord.runtime.local import run_local

    cfg = load_job(args)
    out, mode = out_and_mode(args, cfg, number_default=True)
    console = Console()
    from dcoord.coding.precision import print_precision  # issue 16: decode amplification, warned when high

    print_precision(cfg, console)
    summary = run_local(cfg, out, progress=not args.quiet, mode=mode, on_started=metrics_hook(args),
                        checkpoint_key=checkpoint_key(args))
    console.print(summary_table(summary))
    console.print(f"run directory: {out}")
    return 0


def cmd_coordinator(args) -> int:
    from rich.console import Console

    from dcoord.runtime.coordinator.host import HostHooks, HostSpec, host_job
    from dcoord.runtime.coordinator.progress import summary_table
    from dcoord.runtime.security.options import security_from_args

    security = security_from_args(args, "coordinator")
    cfg = load_job(args)
    out, mode = out_and_mode(args, cfg)
    spec = HostSpec(cfg, out, mode, listen=args.listen, security=security, progress=not args.quiet,
                    start_timeout=args.wait_workers, health_port=health_port(args),  # bad env: fails here
                    health_host=args.health_host, metrics=metrics_hook(args),
                    checkpoint_key=checkpoint_key(args, security.token))

    def started(coord, port: int) -> None:
        print(f"coordinator for job {coord.job_id} listening on port {port}; "
              f"waiting for {cfg.workers} workers", file=sys.stderr, flush=True)

    summary = asyncio.run(host_job(spec, HostHooks(started=started)))
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
