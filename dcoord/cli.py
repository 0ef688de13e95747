"""The `dcoord` command line. Every user error ends in one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from dcoord.errors import ConfigError, DcoordError
from dcoord.runtime.health import add_health_options, health_port, start_health_server
from dcoord.runtime.metrics import add_metrics_options, metrics_hook


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return value


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


def _load(args) -> object:
    from dcoord.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "workers", None):
        overrides.append(f"workers={args.workers}")
    return load_config(args.job, overrides)


def cmd_run(args) -> int:
    from rich.console import Console

    from dcoord.runtime.local import run_local
    from dcoord.runtime.progress import summary_table

    cfg = _load(args)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    summary = run_local(cfg, out, progress=not args.quiet, on_started=metrics_hook(args, "127.0.0.1"))
    console = Console()
    console.print(summary_table(summary))
    console.print(f"run directory: {out}")
    return 0


def cmd_coordinator(args) -> int:
    from rich.console import Console

    from dcoord.runtime.coordinator import Coordinator
    from dcoord.runtime.progress import RoundProgress, summary_table
    from dcoord.runtime.security_options import security_from_args
    from dcoord.runtime.service import start_server

    security = security_from_args(args, "coordinator")
    cfg = _load(args)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    start_metrics = metrics_hook(args, args.listen.rpartition(":")[0].strip("[]"))
    health_port(args)  # a bad $DCOORD_HEALTH_PORT fails before the job loads

    async def main() -> dict:
        coord = Coordinator(cfg, out)
        probe = await start_health_server(args, args.listen.rpartition(":")[0].strip("[]"))
        server, port = await start_server(coord, args.listen, security=security)
        if start_metrics:
            start_metrics(coord)
        print(f"coordinator for job {coord.job_id} listening on port {port}; "
              f"waiting for {cfg.workers} workers", file=sys.stderr, flush=True)
        try:
            with RoundProgress(coord, enabled=not args.quiet) as bar:
                return await coord.run(progress=bar.update, start_timeout=args.wait_workers)
        finally:
            await asyncio.sleep(0.2)
            await server.stop(grace=1.0)
            if probe is not None:
                await probe.stop(grace=None)

    summary = asyncio.run(main())
    Console().print(summary_table(summary))
    return 0


def cmd_worker(args) -> int:
    from dcoord.runtime.security_options import worker_kwargs
    from dcoord.runtime.worker import run_worker

    if not args.coordinator:
        raise DcoordError("worker: give --coordinator HOST:PORT (or DCOORD_COORDINATOR)")
    rounds = run_worker(args.coordinator, requested_id=args.id, device=args.device, **worker_kwargs(args))
    print(f"worker done: {rounds} rounds computed", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
    from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
    from dcoord.runtime.security import open_channel
    from dcoord.runtime.security_options import security_from_args

    if not args.address:
        raise DcoordError("status: give the coordinator's HOST:PORT (or DCOORD_COORDINATOR)")
    channel = open_channel(args.address, security_from_args(args, "status"))
    stub = pb_grpc.CoordinatorStub(channel)
    try:
        replies = stub.WatchStatus(pb.StatusRequest()) if args.watch else [stub.GetStatus(pb.StatusRequest(),
                                                                                          timeout=args.timeout)]
        for st in replies:
            if args.json:
                print(json.dumps(MessageToDict(st, preserving_proto_field_name=True)), flush=True)
            else:
                rejected = sum(st.rejected.values())
                print(f"{st.name} [{st.job_id}] {st.state}: round {st.round + 1}/{st.rounds_total} "
                      f"scheme {st.scheme} workers {st.workers_alive}/{st.workers_total} "
                      f"loss {st.last_loss:.5f} stragglers {st.stragglers_seen} late {st.dropped_late_results} "
                      f"rejected {rejected} refused {sum(st.refused.values())} elapsed {st.elapsed_s:.1f}s" + (f" ({st.message})" if st.message else ""),
                      flush=True)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise DcoordError(f"{args.address} refused: {exc.details()}") from None
        raise DcoordError(f"no coordinator answering at {args.address}: {exc.code().name}") from None
    return 0


def job_args(sp: argparse.ArgumentParser, workers_help: str = "number of workers (overrides the config)") -> None:
    """The job options shared by ``dcoord run`` / ``coordinator`` / ``simulate`` and ``python -m dcoord.launch``."""
    sp.add_argument("job", help="job config (YAML)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set coding.stragglers=2 (repeatable)")
    sp.add_argument("--workers", type=_positive_int, help=workers_help)
    sp.add_argument("--out", help="run directory (default runs/NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from dcoord.runtime.security_options import add_security_options, env

    p = argparse.ArgumentParser(prog="dcoord", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("run", help="coordinator + N local worker processes over loopback gRPC")
    job_args(sp)
    add_metrics_options(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("coordinator", help="run a coordinator that waits for remote workers")
    job_args(sp)
    sp.add_argument("--listen", type=_address, default=env("DCOORD_LISTEN", "0.0.0.0:50051"),
                    help="HOST:PORT to listen on [DCOORD_LISTEN]")
    add_security_options(sp, "coordinator")
    sp.add_argument("--wait-workers", type=float, default=600.0, help="seconds to wait for all workers")
    add_metrics_options(sp)
    add_health_options(sp)
    sp.set_defaults(func=cmd_coordinator)

    sp = sub.add_parser("worker", help="a worker that joins a coordinator")
    sp.add_argument("--coordinator", type=_address, default=env("DCOORD_COORDINATOR"),
                    help="HOST:PORT of the coordinator [DCOORD_COORDINATOR]")
    sp.add_argument("--id", type=int, default=env("DCOORD_WORKER_ID", -1),
                    help="worker id to take (default: any free one) [DCOORD_WORKER_ID]")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default=env("DCOORD_DEVICE"), help="[DCOORD_DEVICE]")
    add_security_options(sp, "worker")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("status", help="show a running job's status")
    sp.add_argument("address", type=_address, nargs="?", default=env("DCOORD_COORDINATOR"),
                    help="coordinator HOST:PORT [DCOORD_COORDINATOR]")
    add_security_options(sp, "status")
    sp.add_argument("--watch", action="store_true", help="stream one line per round until the job ends")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--timeout", type=float, default=5.0)
    sp.set_defaults(func=cmd_status)

    from dcoord import cli_extra

    cli_extra.register(sub, job_args)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"dcoord: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DcoordError as exc:
        print(f"dcoord: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `dcoord privacy job.yaml --json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("dcoord: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
