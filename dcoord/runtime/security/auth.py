"""Who may talk to the control plane: bearer token, TLS / mutual TLS, limits and refusal counters.

Why a token AND TLS: TLS (with ``--tls-ca`` on the worker) lets a worker check that it talks to the
coordinator it was given; the shared bearer token (or mutual TLS) lets the coordinator refuse strangers.
The token is checked by a server interceptor before any handler runs and before the request is parsed, on
every RPC except the standard health service (Kubernetes' native gRPC probe cannot send a token; health
reveals only SERVING). Secrets are read from files named by flags or environment variables, never argv.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from dcoord.errors import DcoordError

log = logging.getLogger("dcoord.security")

TOKEN_HEADER = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: What `dcoord run` gives its local workers (a 0600 file in a private temp dir; never argv).
TOKEN_FILE_ENV = "DCOORD_TOKEN_FILE"
#: Worker side: the package.module:function workloads it may run (comma-separated shell patterns).
ALLOW_ENV = "DCOORD_ALLOW_WORKLOADS"
#: Worker side: refuse jobs less private than this epsilon against a compromised coordinator.
MAX_EPSILON_ENV = "DCOORD_MAX_EPSILON"


# --------------------------------------------------------------------------------------------- settings


@dataclass
class ServerSecurity:
    """The coordinator's side: who may connect, and how much anyone may ask of it."""

    token: str | None = None              # bearer token every RPC must carry (None: no token check)
    tls_cert: bytes | None = None         # PEM server certificate (chain)
    tls_key: bytes | None = None          # PEM private key of tls_cert
    tls_ca: bytes | None = None           # PEM CA: clients must present a certificate it signed (mutual TLS)
    insecure: bool = False                # allow a non-loopback listen address without authentication
    max_message_bytes: int | None = None  # largest message received (None: derived from the job)
    max_streams: int | None = None        # concurrent RPCs at most (None: derived from the job)
    register_rate: float = 5.0            # Register calls per second per peer host (token bucket) ...
    register_burst: int = 20              # ... with this burst
    reserve_s: float = 30.0               # an id reserved by Register expires if no Work stream comes by then
    claim_s: float = 5.0                  # ... and, when every id is held, may be taken by a new Register after this
    hello_timeout_s: float = 10.0         # a Work stream must say hello within this

    @property
    def authenticated(self) -> bool:
        return bool(self.token) or self.tls_ca is not None

    def __repr__(self) -> str:  # never print the token or the key
        return (f"ServerSecurity(token={'<redacted>' if self.token else None}, tls={self.tls_cert is not None}, "
                f"mtls={self.tls_ca is not None}, insecure={self.insecure})")


@dataclass
class ClientSecurity:
    """A worker's or `dcoord status`'s side: how to prove who it is and check who answers."""

    token: str | None = None
    tls_ca: bytes | None = None           # CA that signed the coordinator's certificate (enables TLS)
    tls_cert: bytes | None = None         # client certificate for mutual TLS
    tls_key: bytes | None = None
    server_name: str | None = None        # name to check in the server certificate (default: the host dialled)

    def __repr__(self) -> str:
        return (f"ClientSecurity(token={'<redacted>' if self.token else None}, tls={self.tls_ca is not None}, "
                f"client_cert={self.tls_cert is not None}, server_name={self.server_name!r})")


def read_secret_file(path: str | Path, what: str) -> bytes:
    """A secret's bytes (surrounding whitespace stripped); one clear line when it cannot be read."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise DcoordError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise DcoordError(f"{what}: {path} is empty")
    return data


def read_token(path: str | Path, what: str = "--token-file") -> str:
    data = read_secret_file(path, what)
    try:
        token = data.decode("ascii")
    except UnicodeDecodeError:
        raise DcoordError(f"{what}: {path} must hold a printable ASCII token (e.g. `openssl rand -hex 32`)") from None
    if len(token) < 16 or not token.isprintable() or any(ch.isspace() for ch in token):
        raise DcoordError(f"{what}: the token in {path} must be >= 16 printable characters without spaces "
                          "(e.g. `openssl rand -hex 32`)")
    return token


def random_token() -> str:
    return secrets.token_hex(32)


def write_token_file(directory: Path, token: str) -> Path:
    """Write ``token`` to a 0600 file in ``directory`` (private to this user) for local worker processes."""
    path = Path(directory) / "token"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(token)
    return path


# --------------------------------------------------------------------------------------- listen policy


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: str, sec: ServerSecurity) -> None:
    """Refuse a non-loopback listen address without authentication unless the user said --insecure."""
    host = listen.rpartition(":")[0]
    if is_loopback(host) or sec.authenticated:
        return
    if not sec.insecure:
        raise DcoordError(
            f"--listen {listen}: refusing to listen beyond loopback without authentication; give "
            "--token-file (and --tls-cert/--tls-key, or --tls-ca for mutual TLS), or say --insecure"
        )
    log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can reach it can join the "
                "job, read its status and send results", listen)


# ------------------------------------------------------------------------------------------- refusals


class Refusals:
    """Counts of what was refused before it reached the job, by reason (shown by `dcoord status`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        log.warning("refused (%s) %s", reason, detail)


class RateLimiter:
    """A token bucket per key (a peer host, a credential); remembers at most ``max_peers`` keys (the least
    recent are dropped)."""

    def __init__(self, rate: float, burst: int, max_peers: int = 4096) -> None:
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self.buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def level(self, peer: str, now: float | None = None) -> float:
        """Tokens ``peer`` has now (nothing taken)."""
        now = time.monotonic() if now is None else now
        level, last = self.buckets.get(peer, (float(self.burst), now))
        return min(float(self.burst), level + (now - last) * self.rate)

    def take(self, peer: str, amount: float, now: float | None = None) -> None:
        """Take ``amount`` tokens (negative: give them back) from ``peer``'s bucket."""
        now = time.monotonic() if now is None else now
        level = self.level(peer, now) - amount
        self.buckets.pop(peer, None)
        self.buckets[peer] = (min(float(self.burst), level), now)
        while len(self.buckets) > self.max_peers:
            self.buckets.popitem(last=False)

    def allow(self, peer: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        ok = self.level(peer, now) >= 1.0
        self.take(peer, 1.0 if ok else 0.0, now)
        return ok


def credential_of(context) -> str:
    """Who is calling, for per-credential limits: the client certificate under mutual TLS (its SHA-256),
    else the bearer token presented (a digest, never the token), else "anonymous" (no authentication)."""
    auth = context.auth_context() or {}
    certs = auth.get("x509_pem_cert") or []
    if certs:
        return "cert:" + hashlib.sha256(bytes(certs[0])).hexdigest()[:16]
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_HEADER:
            raw = value.encode() if isinstance(value, str) else bytes(value)
            return "token:" + hashlib.sha256(raw).hexdigest()[:16]
    return "anonymous"


def peer_host(peer: str) -> str:
    """'ipv4:1.2.3.4:5678' -> '1.2.3.4' (the port changes per connection; the host is the peer)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0]
    return peer


# ---------------------------------------------------------------------------------------- server side


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts UNAUTHENTICATED without parsing the request."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - never reached (abort raises)

    raw = {"request_deserializer": None, "response_serializer": None}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **raw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **raw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **raw)
    return grpc.unary_unary_rpc_method_handler(unary, **raw)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but health must carry ``authorization: Bearer TOKEN``; others are refused and counted."""

    def __init__(self, token: str, refusals: Refusals) -> None:
        self.expected = f"Bearer {token}".encode()
        self.refusals = refusals

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_HEADER:
                presented = value.encode() if isinstance(value, str) else bytes(value)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        if hmac.compare_digest(presented, self.expected):
            return handler
        reason = "no-token" if not presented else "wrong-token"
        self.refusals.add(reason, f"{method}")
        return _deny_handler(handler, "authentication required: give the job's token (--token-file)")


def server_credentials(sec: ServerSecurity) -> grpc.ServerCredentials | None:
    """TLS server credentials (mutual when ``tls_ca`` is set), or None for a plaintext port."""
    if sec.tls_cert is None and sec.tls_key is None:
        if sec.tls_ca is not None:
            raise DcoordError("--tls-ca on the coordinator (mutual TLS) needs --tls-cert and --tls-key too")
        return None
    if sec.tls_cert is None or sec.tls_key is None:
        raise DcoordError("TLS needs both --tls-cert and --tls-key")
    return grpc.ssl_server_credentials([(sec.tls_key, sec.tls_cert)], root_certificates=sec.tls_ca,
                                       require_client_auth=sec.tls_ca is not None)


def server_interceptors(sec: ServerSecurity | None, refusals: Refusals) -> list:
    return [TokenInterceptor(sec.token, refusals)] if sec is not None and sec.token else []


# ------------------------------------------------------------------------- the tcp data plane (ssl module)


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``ssl`` loads a certificate and key only from files: write them (0600) into a private temporary
    directory, load them, and remove them at once."""
    with tempfile.TemporaryDirectory(prefix="dcoord-tls-") as d:
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = Path(d) / name
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        except ssl.SSLError as exc:
            raise DcoordError(f"TLS: cannot load the certificate and key: {exc}") from None


def data_plane_server_context(sec: ServerSecurity) -> ssl.SSLContext | None:
    """The coordinator's TLS for the standalone data plane (transport: tcp): the same certificate as the
    control plane, and client certificates from ``tls_ca`` required when it is set (mutual TLS); None when
    the control plane is plaintext."""
    if sec.tls_cert is None or sec.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert_chain(ctx, sec.tls_cert, sec.tls_key)
    if sec.tls_ca is not None:
        ctx.load_verify_locations(cadata=sec.tls_ca.decode("ascii", "replace"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def data_plane_client_context(sec: ClientSecurity | None) -> ssl.SSLContext | None:
    """A worker's TLS for the data plane: the coordinator's certificate checked against ``tls_ca`` (and
    the name ``server_name`` or the host dialled), this worker's certificate for mutual TLS; None without
    a CA (plaintext, as the control plane)."""
    if sec is None or sec.tls_ca is None:
        return None
    ctx = ssl.create_default_context(cadata=sec.tls_ca.decode("ascii", "replace"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if sec.tls_cert is not None and sec.tls_key is not None:
        _load_cert_chain(ctx, sec.tls_cert, sec.tls_key)
    return ctx


# ---------------------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple | None
    credentials: object
    wait_for_ready: bool | None
    compression: object = field(default=None)


class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.header = (TOKEN_HEADER, f"Bearer {token}")

    def _details(self, d):
        md = tuple(d.metadata or ()) + (self.header,)
        return _CallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready,
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def open_channel(address: str, sec: ClientSecurity | None, options: list | None = None) -> grpc.Channel:
    """A channel to the coordinator: TLS when a CA is given (the server's certificate is checked against
    it), the client certificate for mutual TLS, and the bearer token on every call."""
    sec = sec or ClientSecurity()
    opts = list(options or [])
    if sec.tls_ca is not None:
        if (sec.tls_cert is None) != (sec.tls_key is None):
            raise DcoordError("a client certificate needs both --tls-cert and --tls-key")
        creds = grpc.ssl_channel_credentials(root_certificates=sec.tls_ca, private_key=sec.tls_key,
                                             certificate_chain=sec.tls_cert)
        if sec.server_name:
            opts.append(("grpc.ssl_target_name_override", sec.server_name))
        channel = grpc.secure_channel(address, creds, options=opts)
    else:
        if sec.tls_cert is not None:
            raise DcoordError("--tls-cert/--tls-key (client certificate) need --tls-ca (the CA that signed the "
                              "coordinator's certificate)")
        channel = grpc.insecure_channel(address, options=opts)
    if sec.token:
        channel = grpc.intercept_channel(channel, _TokenClientInterceptor(sec.token))
    return channel
