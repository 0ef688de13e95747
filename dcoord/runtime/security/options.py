"""Command-line options for authentication, TLS, limits and worker-side guards (flag, else env var).

Kept out of the CLI modules so the commands add them with one call: ``add_security_options(parser, role)``
and read them back with ``security_from_args(args, role)`` / ``worker_kwargs(args)``. Every option can come
from an environment variable (as containers need); the flag wins. Secrets are only ever named by a
path (a file), never given on the command line.
"""

from __future__ import annotations

import argparse
import os

from dcoord.errors import DcoordError
from dcoord.runtime.security.auth import (
    ALLOW_ENV,
    MAX_EPSILON_ENV,
    ClientSecurity,
    ServerSecurity,
    read_secret_file,
    read_token,
)

ROLES = ("coordinator", "worker", "status")


def env(name: str, default=None):
    """$name when set and non-empty, else ``default`` (the flag's default)."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_flag(name: str) -> bool:
    return env(name, "0").lower() in ("1", "true", "yes", "on")


def _option(g, flag: str, var: str, help: str, default=None, **kw) -> None:
    """Add ``flag``, defaulting to $var (else ``default``); its help names the variable."""
    g.add_argument(flag, default=env(var, default), help=f"{help} [{var}]", **kw)


def add_security_options(parser: argparse.ArgumentParser, role: str) -> None:
    """Add the options of ``role`` (coordinator, worker or status) to ``parser``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    g = parser.add_argument_group("security (each also from the environment variable shown)")
    _option(g, "--token-file", "DCOORD_TOKEN_FILE", "file holding the job's bearer token, checked on every RPC",
            metavar="PATH")
    if role == "coordinator":
        _option(g, "--tls-cert", "DCOORD_TLS_CERT", "PEM server certificate: serve TLS", metavar="PATH")
        _option(g, "--tls-key", "DCOORD_TLS_KEY", "PEM private key of --tls-cert", metavar="PATH")
        _option(g, "--tls-ca", "DCOORD_TLS_CA",
                "PEM CA: mutual TLS, clients must present a certificate it signed", metavar="PATH")
        g.add_argument("--insecure", action="store_true", default=_env_flag("DCOORD_INSECURE"),
                       help="allow listening beyond loopback without authentication (warns) [DCOORD_INSECURE=1]")
        _option(g, "--max-message-mb", "DCOORD_MAX_MESSAGE_MB",
                "largest message accepted, MB (default: one result of this job)", type=float)
        _option(g, "--max-streams", "DCOORD_MAX_STREAMS", "concurrent RPCs at most (default 4 x workers + 32)",
                type=int)
        _option(g, "--register-rate", "DCOORD_REGISTER_RATE", "Register calls per second per credential and per peer host, after a burst of twice the job's workers + 20",
                5.0, type=float)
        _option(g, "--reserve-s", "DCOORD_RESERVE_S",
                "a registered id frees if its Work stream does not open within this", 30.0, type=float)
        return
    _option(g, "--tls-ca", "DCOORD_TLS_CA", "PEM CA that signed the coordinator's certificate: use TLS and check it",
            metavar="PATH")
    _option(g, "--tls-cert", "DCOORD_TLS_CERT", "PEM client certificate for mutual TLS", metavar="PATH")
    _option(g, "--tls-key", "DCOORD_TLS_KEY", "PEM private key of --tls-cert", metavar="PATH")
    _option(g, "--tls-server-name", "DCOORD_TLS_SERVER_NAME",
            "name to check in the coordinator's certificate (default: the host dialled)", metavar="NAME")
    if role == "worker":
        allowed = [p.strip() for p in env(ALLOW_ENV, "").split(",") if p.strip()]
        g.add_argument("--allow-workload", action="append", default=None, metavar="PATTERN",
                       help="a package.module:function workload this worker may run (shell pattern, repeatable; "
                            f"built-ins always) [{ALLOW_ENV}, comma-separated]")
        g.set_defaults(allow_workload_env=allowed)
        g.add_argument("--noise-secret-file", default=env("DCOORD_NOISE_SECRET_FILE"), metavar="PATH",
                       help="this worker's DIFF2/DP noise secret (trust: workers) [DCOORD_NOISE_SECRET_FILE; "
                            "else $DCOORD_NOISE_SECRET]")
        _option(g, "--max-epsilon", MAX_EPSILON_ENV, "refuse jobs without trust: workers privacy or with a larger "
                "epsilon against a compromised coordinator, and any answer that would take this worker's own "
                "account of what it released past it", type=float)
        _option(g, "--min-noise-multiplier", "DCOORD_MIN_NOISE_MULTIPLIER", "refuse jobs whose messages carry "
                "less noise than this multiple of their sensitivity (noise std x N / clip)", type=float)
        g.add_argument("--privacy-account", default=env("DCOORD_PRIVACY_ACCOUNT"), metavar="FILE",
                       help="keep this worker's own account of the private messages it released in FILE, across "
                            "restarts and jobs on the same data (--max-epsilon then bounds all of them) "
                            "[DCOORD_PRIVACY_ACCOUNT]")
        _option(g, "--connect-timeout", "DCOORD_CONNECT_TIMEOUT_S",
                "keep retrying registration (with backoff) this many seconds", 300.0, type=float)


def _pem(path: str | None, what: str) -> bytes | None:
    return None if not path else read_secret_file(path, what)


def security_from_args(args: argparse.Namespace, role: str) -> ServerSecurity | ClientSecurity:
    """The ServerSecurity (coordinator) or ClientSecurity (worker, status) the options describe."""
    token = read_token(args.token_file) if args.token_file else None
    cert, key, ca = _pem(args.tls_cert, "--tls-cert"), _pem(args.tls_key, "--tls-key"), _pem(args.tls_ca, "--tls-ca")
    if role == "coordinator":
        if (cert is None) != (key is None):
            raise DcoordError("--tls-cert and --tls-key go together (the server certificate and its key)")
        if ca is not None and cert is None:
            raise DcoordError("--tls-ca (mutual TLS) needs --tls-cert and --tls-key too")
        mb = args.max_message_mb
        if mb is not None and not mb > 0:
            raise DcoordError(f"--max-message-mb must be > 0, got {mb}")
        if args.max_streams is not None and args.max_streams < 1:
            raise DcoordError(f"--max-streams must be >= 1, got {args.max_streams}")
        if not args.register_rate > 0 or not args.reserve_s > 0:
            raise DcoordError("--register-rate and --reserve-s must be > 0")
        return ServerSecurity(token=token, tls_cert=cert, tls_key=key, tls_ca=ca, insecure=args.insecure,
                              max_message_bytes=None if mb is None else int(mb * (1 << 20)),
                              max_streams=None if args.max_streams is None else int(args.max_streams),
                              register_rate=args.register_rate, reserve_s=args.reserve_s)
    if (cert is None) != (key is None):
        raise DcoordError("--tls-cert and --tls-key go together (the client certificate and its key)")
    if cert is not None and ca is None:
        raise DcoordError("a client certificate (--tls-cert) needs --tls-ca, the CA that signed the coordinator's")
    return ClientSecurity(token=token, tls_ca=ca, tls_cert=cert, tls_key=key, server_name=args.tls_server_name)


def worker_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of runtime.worker.run_worker from the worker's options."""
    allowed = args.allow_workload if args.allow_workload is not None else args.allow_workload_env
    if args.connect_timeout is not None and not args.connect_timeout > 0:
        raise DcoordError(f"--connect-timeout must be > 0, got {args.connect_timeout}")
    for flag, value in (("--max-epsilon", args.max_epsilon), ("--min-noise-multiplier", args.min_noise_multiplier)):
        if value is not None and not value >= 0:
            raise DcoordError(f"{flag} must be a number >= 0, got {value}")
    return {"security": security_from_args(args, "worker"), "allow_workloads": list(allowed),
            "noise_secret_file": args.noise_secret_file, "max_epsilon": args.max_epsilon,
            "min_noise_multiplier": args.min_noise_multiplier, "privacy_account": args.privacy_account,
            "connect_timeout": args.connect_timeout}
