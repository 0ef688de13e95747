"""``python -m dcoord.launch JOB.yaml`` under torchrun or mpirun: rank 0 coordinates, ranks 1..N-1 work.

    torchrun --nproc-per-node 5 -m dcoord.launch job.yaml --out runs/x        # gloo (nccl with GPUs)
    mpirun -n 5 python -m dcoord.launch job.yaml --out runs/x                 # mpi4py

The control plane stays gRPC: rank 0 starts the coordinator's server on a free port and publishes
"host:port" once at start-up (torch.distributed's store, or an MPI broadcast); workers register as worker
``rank - 1``. Payloads travel point-to-point over the launcher's data plane (``dcoord.runtime.transport``),
never through a collective, so the round path never waits on a straggler. Without a launcher this is
``dcoord run`` (a coordinator and local worker processes over loopback gRPC).

from dcoord.errors import EXIT_LOST_COORDINATOR, ConfigError, DcoordError, RunFailed
- workers: always world_size - 1; a config that says otherwise is overridden with a note on stderr.
- a rank that dies: torchrun's agent (and mpirun) stop every rank when one exits. Rank 0 then writes its
  metrics and a checkpoint, prints why and exits 3, instead of waiting; an exception on any rank under
  mpirun is printed and ends the job with MPI_Abort.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from dcoord.config import JobConfig, load_config
from dcoord.errors import EXIT_LOST_COORDINATOR, ConfigError, DcoordError, RunFailed, WorkloadError
from dcoord.runtime.security.auth import ClientSecurity, ServerSecurity

log = logging.getLogger("dcoord.launch")

PROG = "python -m dcoord.launch"


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits: which launcher started it, its rank and the world around it."""

    launcher: str  # "torchrun" | "mpirun" | "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def _int(environ: Mapping[str, str], *names: str, default: int = 0) -> int:
    for n in names:
        if environ.get(n, "").strip().lstrip("-").isdigit():
            return int(environ[n])
    return default


def detect_launcher(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """torchrun (TORCHELASTIC_RUN_ID, or RANK + WORLD_SIZE), mpirun (OMPI_COMM_WORLD_SIZE / PMI_SIZE), or none."""
    env = os.environ if environ is None else environ
    torch_like = "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env)
    mpi_like = "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env
    if torch_like and ("TORCHELASTIC_RUN_ID" in env or not mpi_like):
        ws = _int(env, "WORLD_SIZE", default=1)
        return LaunchEnv("torchrun", _int(env, "RANK"), ws, _int(env, "LOCAL_RANK"),
                         _int(env, "LOCAL_WORLD_SIZE", default=1))
    if mpi_like:
        ws = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", default=1)
        return LaunchEnv("mpirun", _int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK"), ws,
                         _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"),
                         _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", default=1))
    return LaunchEnv("none")


def resolve_config(cfg: JobConfig, env: LaunchEnv) -> tuple[JobConfig, list[str]]:
    """The config this launch runs (transport and workers fixed by the launcher) and notes for the user.

    Without a launcher the config is left as it is (``dcoord run`` chooses its data plane itself)."""
    notes: list[str] = []
    if env.launcher == "none":
        return cfg, notes
    from dcoord.runtime.transport.registry import choose_plane

    plane, _ = choose_plane(cfg, env.launcher)  # an explicit transport that cannot run here: ConfigError
    if env.world_size < 2:
        raise ConfigError(f"{env.launcher} started 1 process; dcoord.launch needs at least 2 "
                          "(rank 0 coordinates, the others are workers)")
    n = env.world_size - 1
    if cfg.workers != n:
        notes.append(f"workers: the config says {cfg.workers}, {env.launcher} started {env.world_size} "
                     f"processes: rank 0 coordinates and {n} workers compute (workers={n})")
    where = f"under {env.launcher} with {env.world_size} processes ({n} workers): "
    fix = "" if cfg.workers == n else (f"; the job asks for {cfg.workers} workers: start {cfg.workers + 1} "
                                       f"processes ({launcher_size_flag(env.launcher, cfg.workers + 1)})")
    return _revalidate(cfg, [f"workers={n}", f"transport={plane.name}"], where, fix), notes


def launcher_size_flag(launcher: str, processes: int) -> str:
    """How the user asks ``launcher`` for ``processes`` processes (in a fix we suggest)."""
    return {"torchrun": f"torchrun --nproc-per-node {processes}", "mpirun": f"mpirun -n {processes}"}.get(
        launcher, f"{processes} processes")


def _revalidate(cfg: JobConfig, overrides: list[str], where: str, fix: str = "") -> JobConfig:
    data = yaml.safe_load(cfg.to_yaml())
    try:
        return load_config(None, overrides, data=data)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}".replace("config: ", "", 1) + fix) from None


def coordinator_hosts(env: LaunchEnv) -> tuple[str, str]:
    """(listen address, address workers dial): loopback when every rank is on this node."""
    adv = os.environ.get("DCOORD_ADVERTISE_HOST")
    if not adv and env.local_world_size >= env.world_size:
        return "127.0.0.1", "127.0.0.1"
    host = adv or (os.environ.get("MASTER_ADDR") if env.launcher == "torchrun" else None) or socket.getfqdn()
    return "0.0.0.0", host


#: what a launcher's data plane needs installed, and how to install it
LAUNCHER_NEEDS = {"mpirun": ("mpi4py", "pip install 'dcoord[mpi]'")}


def make_data_plane(cfg: JobConfig, env: LaunchEnv):
    """The data plane for this launch (also used for the start-up address exchange under ``grpc``).

    A launcher whose module is missing (mpirun without mpi4py) is one ConfigError: every rank hits it,
    rank 0 says it once."""
    from dcoord.runtime.transport.registry import plane_for_launcher

    try:
        return plane_for_launcher(env.launcher).build(cfg, env)
    except ImportError as exc:
        module, how = LAUNCHER_NEEDS.get(env.launcher, (exc.name or str(exc), "install it"))
        raise ConfigError(f"{env.launcher} needs {module}: {how}") from None


def _carries_payloads(cfg: JobConfig) -> bool:
    """The job's plane carries payloads beside the control plane (else the launcher only places the ranks)."""
    from dcoord.runtime.transport.registry import get_plane

    return get_plane(cfg.transport).carries_payloads


async def _coordinate_async(cfg: JobConfig, env: LaunchEnv, out: Path | None, plane, progress: bool,
                            mode: str = "new", chosen_from: JobConfig | None = None,
                            security: ServerSecurity | None = None, metrics=None,
                            checkpoint_key: bytes | None = None) -> dict:
    """Rank 0: host the job (runtime/coordinator/host.py) and publish its address to the other ranks."""
    from dcoord.runtime.coordinator.host import HostHooks, HostSpec, host_job
    from dcoord.runtime.transport.registry import announce_plane, choose_plane

    listen, host = coordinator_hosts(env)
    spec = HostSpec(cfg, out, mode, listen=f"{listen}:0", progress=progress, launch_plane=plane,
                    launch_ranks=range(1, env.world_size), security=security,
                    metrics=metrics(listen) if metrics is not None else None, checkpoint_key=checkpoint_key)

    def started(coord, port: int) -> None:
        plane.publish(f"{host}:{port}")
        if progress:  # (not --quiet)
            announce_plane(*choose_plane(chosen_from or cfg, env.launcher))
        log.info("coordinator of job %s on %s:%d, %s data plane, %d workers", coord.job_id, host, port,
                 cfg.transport, cfg.workers)

    def stopped(coord, signum: int) -> DcoordError:
        from dcoord.runtime.coordinator.resume import stopped_error, unstarted
        from dcoord.runtime.store.rundir import option

        if unstarted(coord) and mode != "resume":  # nothing to continue: host.py removes the run directory
            return RunFailed(str(stopped_error(coord, signum, out)))
        why = (f"{_launcher_gone[0]} is gone (killed?)" if _launcher_gone else
               f"{env.launcher} stops every rank when any rank exits (a worker died or was killed, or the "
               "job was interrupted)")
        return RunFailed(
            f"stopped by {signal.Signals(signum).name} after {max(coord.round, 0)} of {coord.total_rounds} "
            f"rounds: {why}; metrics and checkpoints are in {out} (continue with {option('resume', out)})")

    hooks = HostHooks(started=started, stopped=stopped,
                      start_failed=lambda exc: plane.publish(f"error:{exc or 'stopped'}"))  # workers wait on it
    try:
        return await host_job(spec, hooks)
    except WorkloadError as exc:
        raise ConfigError(str(exc)) from None


def _work(cfg: JobConfig, env: LaunchEnv, plane, security: ClientSecurity | None = None) -> dict:
    from dcoord.runtime.worker.worker import run_worker

    address = plane.fetch()
    if address.startswith("error:"):
        raise DcoordError(f"rank 0 could not start the coordinator: {address[6:]}")
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))  # pick_device uses it (mpirun does not set it)
    carries = _carries_payloads(cfg)
    from dcoord.runtime.worker.guard import own_job_allowances

    rounds = run_worker(address, requested_id=env.rank - 1, device=cfg.device,
                        data_plane=plane if carries else None,
                        allow_workloads=own_job_allowances(cfg),  # this rank read the job file itself
                        rejoin=False, security=security)  # the launcher ends every rank when rank 0 (the coordinator) goes
    if carries:
        plane.send_end()
    plane.close(clean=True)
    out = {"role": "worker", "rank": env.rank, "worker_id": env.rank - 1, "rounds_computed": rounds}
    models = plane.models_receiver
    if models is not None:  # models came down the launcher's plane (models_down.py)
        out.update(models_received=models.received, model_bytes_received=models.bytes_in)
    return out


#: the data plane of the launch in progress (so a failure can abort MPI / skip a blocking teardown)
_plane = None
#: set when this rank's launcher process went away (see watch_launcher)
_launcher_gone: list[str] = []


def watch_launcher(env: LaunchEnv, interval: float = 1.0) -> None:
    """Stop this rank when the process that started it (torchrun's agent, mpirun's daemon) is gone.

    torchrun starts every rank in its own session, so a SIGKILL of torchrun (or of its process group) leaves
    the ranks running the job on their own; a relaunch with --resume would then share the run directory
    with a coordinator nobody can see. A rank whose parent changed stops instead: rank 0 as on SIGTERM
    (checkpoint, workers told to stop, exit 3 with the resume hint), a worker when rank 0 tells it to stop or
    a few seconds later (exit 4).
    """
    parent = os.getppid()
    if parent <= 1:  # already detached from whatever started it: nothing to watch
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _launcher_gone.append(f"{env.launcher} (pid {parent})")
        if env.rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(5 * interval)  # rank 0 saw it too: let it checkpoint and tell this worker to stop first
        try:
            print(f"dcoord.launch: rank {env.rank}: error: {env.launcher} (pid {parent}) is gone; stopping",
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):  # its stderr went with it
            pass
        os._exit(EXIT_LOST_COORDINATOR)

    threading.Thread(target=watch, name="dcoord-launcher-watch", daemon=True).start()


def launch(cfg: JobConfig, env: LaunchEnv, out: Path | None, progress: bool = True, mode: str = "new",
           chosen_from: JobConfig | None = None,
           security: tuple[ServerSecurity | None, ClientSecurity | None] | None = None, metrics=None,
           checkpoint_key: bytes | None = None) -> dict:
    """Run this rank's role; rank 0 returns the run summary, workers ``{"role": "worker", ...}``.

    ``chosen_from``: the config as given, before ``resolve_config`` (rank 0 then says why the data plane
    is the one it is, once the coordinator runs). ``security``: (rank 0's server side, the worker ranks'
    client side), see ``launch_security``; ``metrics(listen_host)``: rank 0's Prometheus endpoint hook;
    ``checkpoint_key``: rank 0 signs checkpoints with it and resumes only from ones it signed.

    Under mpirun an exception on any rank is printed and ends the whole job (MPI_Abort) instead of
    leaving the other ranks waiting. Rank 0's summary carries ``_clean_exit`` = False when a receiver
    was still blocked on a dead worker (callers that own the process should then ``os._exit``).
    """
    global _plane
    import torch

    if env.rank > 0:
        torch.set_num_threads(1)  # workers share the node's cores
    watch_launcher(env)
    try:
        _plane = make_data_plane(cfg, env)
        if _plane.rank == 0:
            summary = asyncio.run(_coordinate_async(cfg, env, out, _plane, progress, mode, chosen_from,
                                                    security[0] if security else None, metrics,
                                                    checkpoint_key))
            clean = _plane.stop_receiving(timeout=10.0) if _carries_payloads(cfg) else True
            clean = _plane.end_models(timeout=10.0) and clean  # END sent to every worker's model reader
            if _plane.models_sender is not None:  # what went down the plane (models) and up it (payloads)
                summary["data_plane_bytes"] = {"models_out": _plane.models_sender.bytes_out,
                                               "payloads_in": int(getattr(_plane, "bytes_in", 0))}
            if clean:
                _plane.close(clean=True)
            summary["_clean_exit"] = clean
            return summary
        return _work(cfg, env, _plane, security[1] if security else None)
    except BaseException as exc:
        if env.launcher == "mpirun" and env.world_size > 1 and _plane is not None:
            who = "" if env.rank == 0 else f"rank {env.rank}: "
            if isinstance(exc, DcoordError):
                print(f"dcoord.launch: {who}error: {exc}", file=sys.stderr, flush=True)
                code = exc.exit_code
            elif isinstance(exc, KeyboardInterrupt):
                code = 130
            else:
                print(f"dcoord.launch: {who}unexpected error, ending the job:", file=sys.stderr)
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
            sys.stdout.flush()
            _plane.abort(code)
        raise


def report(line: str) -> None:
    """One line on stderr, and the same line where torchrun's agent looks for this rank's error (its
    ``TORCHELASTIC_ERROR_FILE``), so its failure summary shows dcoord's message, not a hint to enable tracebacks."""
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        import json

        try:
            with open(path, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
        except OSError:  # the agent's directory is gone: stderr said it
            pass


def _hard_exit(code: int) -> None:
    """After outputs are written: leave without joining threads blocked on a dead peer."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, from rank 0 only, exit 2
        if detect_launcher().rank == 0:
            print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The same job options as ``dcoord run``."""
    p = _Parser(prog=PROG, description="Run a dcoord job under torchrun or mpirun (rank 0 coordinates).")
    from dcoord.cli import job_args

    job_args(p, workers_help="number of workers (under a launcher: world size - 1)")
    from dcoord.cli.options import add_resume_options

    add_resume_options(p)
    add_launch_security_options(p)
    from dcoord.runtime.coordinator.metrics import add_metrics_options

    add_metrics_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    return p


def add_launch_security_options(parser: argparse.ArgumentParser) -> None:
    """The token and TLS of ``dcoord coordinator`` / ``dcoord worker``, for one command line that every rank
    runs: rank 0 serves with the certificate, the other ranks check it against the CA. Needed when the
    control plane listens beyond loopback (ranks on several nodes), as ``dcoord coordinator`` needs them."""
    from dcoord.runtime.security.options import _env_flag, _option

    g = parser.add_argument_group("security (each also from the environment variable shown)")
    _option(g, "--token-file", "DCOORD_TOKEN_FILE", "file holding the job's bearer token, checked on every RPC",
            metavar="PATH")
    _option(g, "--tls-cert", "DCOORD_TLS_CERT", "PEM server certificate: rank 0 serves TLS", metavar="PATH")
    _option(g, "--tls-key", "DCOORD_TLS_KEY", "PEM private key of --tls-cert", metavar="PATH")
    _option(g, "--tls-ca", "DCOORD_TLS_CA", "PEM CA that signed --tls-cert: the worker ranks use TLS and "
            "check it", metavar="PATH")
    _option(g, "--tls-server-name", "DCOORD_TLS_SERVER_NAME",
            "name the worker ranks check in the certificate (default: the host they dial)", metavar="NAME")
    g.add_argument("--insecure", action="store_true", default=_env_flag("DCOORD_INSECURE"),
                   help="allow listening beyond loopback without authentication (warns) [DCOORD_INSECURE=1]")


def launch_security(args: argparse.Namespace, rank: int) -> tuple[ServerSecurity | None, ClientSecurity | None]:
    """(rank 0's server side, the worker ranks' client side) of the launch's token and TLS options; each
    rank reads only the files its side needs (rank 0 the certificate and key, the others the CA), so a
    worker pod need not hold the coordinator's key."""
    from dcoord.runtime.security.auth import read_secret_file, read_token

    def pem(path: str | None, what: str) -> bytes | None:
        return None if not path else read_secret_file(path, what)

    token = read_token(args.token_file) if args.token_file else None
    if rank == 0:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise DcoordError("--tls-cert and --tls-key go together (rank 0's certificate and its key)")
        return ServerSecurity(token=token, tls_cert=pem(args.tls_cert, "--tls-cert"),
                              tls_key=pem(args.tls_key, "--tls-key"), insecure=args.insecure), None
    return None, ClientSecurity(token=token, tls_ca=pem(args.tls_ca, "--tls-ca"), server_name=args.tls_server_name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dcoord.launch``; exit 2 with one line on a bad config."""
    args = build_parser().parse_args(argv)
    env = detect_launcher()
    lead = env.rank == 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s %(levelname)s %(message)s")
    try:
        overrides = list(args.set or []) + ([f"workers={args.workers}"] if args.workers else [])
        job = load_config(args.job, overrides)
        cfg, notes = resolve_config(job, env)
        for note in notes if lead else []:
            print(f"dcoord.launch: note: {note}", file=sys.stderr, flush=True)

        from dcoord.cli.options import out_and_mode

        out, mode = out_and_mode(args, cfg)
        if env.launcher == "none":  # no launcher: exactly `dcoord run`
            from dcoord.cli.options import checkpoint_key
            from dcoord.runtime.local import run_local

            result = run_local(cfg, out, progress=not args.quiet, mode=mode, checkpoint_key=checkpoint_key(args))
        else:
            from dcoord.runtime.coordinator.metrics import metrics_hook

            security = launch_security(args, env.rank)  # a bad file fails before anything starts
            from dcoord.cli.options import checkpoint_key

            result = launch(cfg, env, out, progress=not args.quiet, mode=mode, chosen_from=job, security=security,
                            metrics=(lambda host: metrics_hook(args)) if lead else None,
                            checkpoint_key=checkpoint_key(args) if lead else None)
    except ConfigError as exc:
        if not lead:
            return 0
        # every rank read the same job and failed the same way; rank 0 alone reports it, and the other
        # ranks end quietly with 0, so the launcher does not stop rank 0 before it has said why
        report(f"dcoord.launch: config error: {exc}")
        return exc.exit_code
    except DcoordError as exc:
        report(f"dcoord.launch: {'' if lead else f'rank {env.rank}: '}error: {exc}")
        if lead and isinstance(exc, RunFailed):
            _hard_exit(exc.exit_code)  # receivers may be blocked on a dead worker; outputs are written
        return exc.exit_code
    except KeyboardInterrupt:
        print("dcoord.launch: interrupted", file=sys.stderr)
        return 130
    if lead:
        from rich.console import Console

        from dcoord.runtime.coordinator.progress import summary_table

        clean = result.pop("_clean_exit", True)
        console = Console()
        console.print(summary_table(result))
        console.print(f"run directory: {out}")
        if not clean:
            _hard_exit(0)
    return 0


if __name__ == "__main__":
    # an unexpected exception still reaches torchrun's failure summary (its error file), with its traceback
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
