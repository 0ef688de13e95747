"""A plaintext port that serves only the standard gRPC health service (``--health-port``).

Why: Kubernetes' built-in gRPC probe speaks plaintext only (before 1.37's ``mode: TLS``), so once the
coordinator's port serves TLS the kubelet cannot probe it there. This second port answers
grpc.health.v1 Check/Watch and nothing else: no job RPC, no status, no token needed, nothing revealed
beyond SERVING. It runs on the coordinator's own event loop, so a stuck loop also fails the probe.
It binds loopback unless ``--health-host`` names an address (a kubelet probes the pod's IP: 0.0.0.0 there).
"""

from __future__ import annotations

import argparse
import os

ENV_PORT = "DCOORD_HEALTH_PORT"
ENV_HOST = "DCOORD_HEALTH_HOST"
SERVICES = ("", "dcoord.v1.Coordinator")


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number 0-65535 (0 = no health port)")
    return int(value)


def add_health_options(parser: argparse.ArgumentParser) -> None:
    """``--health-port`` on ``dcoord coordinator`` (default: $DCOORD_HEALTH_PORT, else off)."""
    env = os.environ.get(ENV_PORT, "").strip()
    parser.add_argument("--health-port", type=_port, default=_port(env) if env.isdigit() else None,
                        metavar="PORT", help="also serve grpc.health.v1 (only) in plaintext on this port, for "
                        f"Kubernetes gRPC probes when the main port uses TLS (env {ENV_PORT}; 0 or unset = off)")
    parser.add_argument("--health-host", default=os.environ.get(ENV_HOST, "").strip() or "127.0.0.1",
                        metavar="HOST", help=f"address the health port binds (env {ENV_HOST}; default 127.0.0.1: "
                        "this machine only; 0.0.0.0 for a kubelet's probe)")
    if env and not env.isdigit():
        parser.set_defaults(_health_env_error=f"{ENV_PORT}={env!r} is not a port number; set 0-65535 or unset it")


def health_port(args: argparse.Namespace) -> int | None:
    """The port asked for (None/0: no health port); a bad $DCOORD_HEALTH_PORT is a one-line ConfigError."""
    from dcoord.errors import ConfigError

    err = getattr(args, "_health_env_error", None)
    if err and args.health_port is None:
        raise ConfigError(err)
    return args.health_port


def port_problem(port: int, why: str) -> str:
    """The one line for a health port that cannot be used, with the fix."""
    return f"--health-port {port}: {why}; choose another port, or 0 / unset {ENV_PORT} for no health port"


async def start_health_server(port: int | None, host: str = "127.0.0.1"):
    """Start the health-only server when ``port`` is set (see health_port); returns it (or None).

    A port that cannot be used is one line naming --health-port and $DCOORD_HEALTH_PORT; the server that
    could not bind is stopped here, so nothing is left for its finalizer to complain about later."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from dcoord.errors import DcoordError

    if not port:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a taken port must fail, not be shared
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        await server.stop(grace=None)
        raise DcoordError(port_problem(port, f"cannot listen on {host} (is port {port} in use?)"))
    await server.start()
    for name in SERVICES:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
