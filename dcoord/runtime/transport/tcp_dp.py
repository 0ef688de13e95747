"""The standalone data plane: one authenticated TCP (or TLS) connection per worker carrying raw tensor bytes.

Why: gRPC Python copies a large message several times on each side (0.1x of a raw socket at 100 MB), so
with real model sizes a round would wait on serialisation, not on stragglers. Here the coordinator keeps
gRPC for control (assignments, results' metadata, status) and moves the bytes of every model it sends and
every coded result it receives over a plain socket, straight into a numpy buffer
(``recv_into``; buffers are reused once nothing holds them, see ``dcoord.runtime.buffers``): one kernel copy
per direction, no framing of the payload itself.

Protocol (little-endian):
- two connections per worker, one per direction (so a TLS socket is only ever used by one thread per
  side): ``UP`` carries payloads to the coordinator, ``DOWN`` carries models to the worker.
- handshake, before anything is buffered: the server sends ``MAGIC`` + a 32-byte nonce; the client answers
  ``int64 worker_id``, ``int64 role`` + HMAC-SHA256(key, "dcoord-dp" + nonce + job_id + role), where ``key`` is
  the 32-byte data-plane key this worker received in its RegisterReply (over the authenticated control
  plane; never sent here). A wrong or late answer closes the connection and is counted. Then ``b"OK"``.
- then frames, each a header ``int64[6] = (kind, seq, count, dtype, a, b)`` followed by ``count`` values:
  worker -> coordinator ``DATA`` (a coded payload, ``seq`` 0, 1, 2, ... per connection, paired with the gRPC
  Result that names it, exactly as the torch/MPI planes do) and ``END``; coordinator -> worker ``MODEL``
  (``a`` = model, ``b`` = version: the parameters an assignment needs).
Every size is bounded: ``count`` by the model size, concurrent handshakes and connections by constants.

Nobody without a key can keep workers out: a connection that has not authenticated holds one of
``MAX_HANDSHAKES`` slots for at most ``HANDSHAKE_TIMEOUT_S`` in all (a deadline, not a per-read timeout, so
dribbling bytes buys nothing), and one peer address (an IPv6 /64) holds at most ``MAX_HANDSHAKES_PER_PEER``
of them; its further connections are closed at once and counted. A registered worker's handshake takes
one round trip, so the slots other addresses leave are enough for it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import random
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from dcoord.errors import KeyRefused
from dcoord.runtime.buffers import BufferPool
from dcoord.runtime.transport.base import (
    DTYPE_CODES,
    DTYPES,
    KIND_DATA,
    KIND_END,
    CoordinatorEnd,
    DataPlane,
    DataPlaneError,
    Deliver,
    Fail,
    PayloadMatcher,
    Plane,
    WorkerEnd,
)
from dcoord.runtime.transport.models_down import ModelShelf

log = logging.getLogger("dcoord.transport.tcp")

MAGIC = b"DCDP1"
KIND_MODEL = 3
HEADER = 6 * 8
NONCE = 32
HANDSHAKE_TIMEOUT_S = 5.0  # the whole handshake, from accept to b"OK"
MAX_HANDSHAKES = 128  # connections not yet authenticated, at once
MAX_HANDSHAKES_PER_PEER = 8  # of those, from one peer address (an IPv6 /64)
SOCK_BUF = 8 << 20


UP, DOWN = 0, 1


def _mac(key: bytes, nonce: bytes, job_id: str, role: int) -> bytes:
    msg = b"dcoord-dp" + nonce + job_id.encode() + bytes([role])
    return hmac.new(key, msg, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from the socket (``recv_into``: no intermediate buffers); EOF is an error."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed")
        got += k


def _recv_bytes(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_exact(sock, memoryview(buf))
    return bytes(buf)


def peer_key(peer) -> str:
    """The address a handshake budget is kept for: the IPv4 address, or the /64 of an IPv6 one (one host
    usually has a whole /64 to pick source addresses from)."""
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class HandshakeBudget:
    """Slots for connections not yet authenticated: ``total`` at once, ``per_peer`` from one address."""

    def __init__(self, total: int = MAX_HANDSHAKES, per_peer: int = MAX_HANDSHAKES_PER_PEER) -> None:
        self.total, self.per_peer = total, per_peer
        self.held: Counter[str] = Counter()
        self.count = 0
        self.lock = threading.Lock()

    def take(self, peer: str) -> str | None:
        """None when ``peer`` may handshake now (a slot taken: ``give`` it back), else why not."""
        with self.lock:
            if self.held[peer] >= self.per_peer:
                return "data-plane-peer-busy"
            if self.count >= self.total:
                return "data-plane-busy"
            self.held[peer] += 1
            self.count += 1
            return None

    def give(self, peer: str) -> None:
        with self.lock:
            self.held[peer] -= 1
            self.count -= 1
            if self.held[peer] <= 0:
                del self.held[peer]


class _Deadline:
    """Reads that share one deadline: each recv gets only the time left."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock, self.end = sock, time.monotonic() + seconds

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            left = self.end - time.monotonic()
            if left <= 0:
                raise TimeoutError("handshake took too long")
            self.sock.settimeout(left)
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError("connection closed")
            got += k
        return bytes(buf)


def _header(kind: int, seq: int, count: int = 0, dtype: int = 0, a: int = 0, b: int = 0) -> bytes:
    return np.array([kind, seq, count, dtype, a, b], dtype="<i8").tobytes()


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        except OSError:
            pass


def _as_bytes_view(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B")


class _Conn:
    """One authenticated connection of a worker (one direction) on the coordinator."""

    def __init__(self, sock: socket.socket, worker: int, role: int) -> None:
        self.sock = sock
        self.worker = worker
        self.role = role
        self.out: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.expect_seq = 0

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.out.put(None)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class TcpDataServer:
    """Coordinator side: accepts authenticated worker connections, receives payloads, sends models.

    ``key_for(worker)`` returns the worker's current data-plane key (or None: not registered; default: the
    keys made by ``new_key``);
    ``deliver(worker, seq, array)`` and ``on_connect(worker)`` are called from connection threads;
    ``refuse(reason)`` counts a refused peer. ``ssl_context`` (server side) turns every connection into TLS.
    """

    def __init__(self, host: str, job_id: str, key_for: Callable[[int], bytes | None] | None, max_count: int,
                 deliver: Deliver, fail: Fail, on_connect: Callable[[int], None] | None = None,
                 refuse: Callable[[str], None] | None = None, ssl_context: ssl.SSLContext | None = None,
                 port: int = 0, max_workers: int = 1 << 16, pool_size: int = 8) -> None:
        self.job_id = job_id
        self.keys: dict[int, bytes] = {}  # worker -> its current registration's key (new_key)
        self.key_for = key_for or self.keys.get
        self.max_count = max_count
        self.deliver, self.fail = deliver, fail
        self.on_connect = on_connect or (lambda w: None)
        self.refuse = refuse or (lambda reason: None)
        self.ssl_context = ssl_context
        self.max_workers = max_workers
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.create_server((host, port), family=family, backlog=128)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.conns: dict[tuple[int, int], _Conn] = {}
        self.lock = threading.Lock()
        self.handshakes = HandshakeBudget()
        self.stop = threading.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self.pool = BufferPool(per_shape=pool_size)  # payload buffers, reused once a round is done with them
        self.thread = threading.Thread(target=self._accept_loop, name="dcoord-dp-accept", daemon=True)
        self.thread.start()

    def new_key(self, worker: int) -> bytes:
        """A fresh key for ``worker``'s registration (the control plane hands it to exactly one worker); the
        connections of its previous key can no longer authenticate."""
        self.keys[worker] = key = new_key()
        return key

    # -- accepting and authenticating ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                sock, peer = self.lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            key = peer_key(peer)
            busy = self.handshakes.take(key)
            if busy is not None:
                self.refuse(busy)
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock, peer, key), name="dcoord-dp-conn", daemon=True).start()

    def _handshake(self, sock: socket.socket) -> tuple[socket.socket, int, int] | None:
        start = time.monotonic()
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        _tune(sock)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True)
        nonce = secrets.token_bytes(NONCE)
        sock.sendall(MAGIC + nonce)
        answer = _Deadline(sock, HANDSHAKE_TIMEOUT_S - (time.monotonic() - start)).recv(16 + 32)
        worker = int.from_bytes(answer[:8], "little", signed=True)
        role = int.from_bytes(answer[8:16], "little", signed=True)
        key = self.key_for(worker) if 0 <= worker < self.max_workers and role in (UP, DOWN) else None
        if key is None or not hmac.compare_digest(answer[16:], _mac(key, nonce, self.job_id, role)):
            return None
        sock.sendall(b"OK")
        sock.settimeout(None)
        return sock, worker, role

    def _serve(self, sock: socket.socket, peer, key: str) -> None:
        try:
            try:
                done = self._handshake(sock)
            except (OSError, ConnectionError, ssl.SSLError, ValueError) as exc:
                log.warning("data plane: handshake with %s failed: %s", peer, exc)
                self.refuse("data-plane-handshake")
                sock.close()
                return
            if done is None:
                log.warning("data plane: %s failed authentication", peer)
                self.refuse("data-plane-auth")
                sock.close()
                return
        finally:
            self.handshakes.give(key)
        sock, worker, role = done
        conn = _Conn(sock, worker, role)
        with self.lock:
            old = self.conns.get((worker, role))
            self.conns[(worker, role)] = conn
        if old is not None:
            old.close()  # a restarted worker (same id, new key): its old connection is over
        if role == UP:
            self.on_connect(worker)
            self._read_loop(conn)
        else:
            self._write_loop(conn)

    # -- receiving ------------------------------------------------------------------------------------
    def _read_loop(self, conn: _Conn) -> None:
        head = np.empty(6, dtype="<i8")
        hview = memoryview(head).cast("B")
        try:
            while not self.stop.is_set():
                _recv_exact(conn.sock, hview)
                kind, seq, count, code = (int(x) for x in head[:4])
                if kind == KIND_END:
                    return
                if kind != KIND_DATA:
                    raise DataPlaneError(f"unknown message kind {kind}")
                if seq != conn.expect_seq:
                    raise DataPlaneError(f"sequence number {seq}, expected {conn.expect_seq}")
                if code not in DTYPES or not 0 <= count <= self.max_count:
                    raise DataPlaneError(f"bad header (count {count}, dtype code {code})")
                conn.expect_seq += 1
                buf = self.pool.take(count, DTYPES[code])
                _recv_exact(conn.sock, memoryview(buf).cast("B"))
                self.bytes_in += buf.nbytes
                if self.conns.get((conn.worker, UP)) is conn:  # a replaced connection's data is never used
                    self.deliver(conn.worker, seq, buf)
        except (OSError, ConnectionError, ssl.SSLError, DataPlaneError) as exc:
            if not self.stop.is_set() and not conn.closed.is_set():
                self.fail(conn.worker, f"data plane from worker {conn.worker} ended: {exc}")
        finally:
            self._drop(conn)
            down = self.conns.get((conn.worker, DOWN))
            if down is not None and not self.conns.get((conn.worker, UP)):
                self._drop(down)  # the worker is gone (or said END): its model connection goes with it

    def _drop(self, conn: _Conn) -> None:
        with self.lock:
            if self.conns.get((conn.worker, conn.role)) is conn:
                del self.conns[(conn.worker, conn.role)]
        conn.close()

    # -- sending models -------------------------------------------------------------------------------
    def connected(self, worker: int) -> bool:
        """Both of the worker's connections are up (only then do its payloads and models go here)."""
        up, down = self.conns.get((worker, UP)), self.conns.get((worker, DOWN))
        return all(c is not None and not c.closed.is_set() for c in (up, down))

    def send_model(self, worker: int, model: int, version: int, params: np.ndarray) -> bool:
        """Queue one model version for ``worker`` (never blocks the caller); False if it has no connection."""
        c = self.conns.get((worker, DOWN))
        if c is None or c.closed.is_set():
            return False
        code = DTYPE_CODES.get(params.dtype)
        if code is None:
            raise DataPlaneError(f"model dtype {params.dtype} cannot go on the data plane")
        c.out.put((_header(KIND_MODEL, 0, params.size, code, model, version), params))
        return True

    def _write_loop(self, conn: _Conn) -> None:
        try:
            while True:
                item = conn.out.get()
                if item is None:
                    return
                head, arr = item
                conn.sock.sendall(head)
                conn.sock.sendall(_as_bytes_view(arr))
                self.bytes_out += arr.nbytes
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._drop(conn)

    def close(self) -> None:
        self.stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns.values())
            self.conns.clear()
        for c in conns:
            c.close()


def _hello(host: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None,
           timeout: float) -> tuple[socket.socket, bytes]:
    """Connect and read the server's hello. A server whose handshake slots are taken (every slot, or this
    address's share: see HandshakeBudget) closes before its hello, as does one still starting; many workers
    of one host connect at once, so that is retried with backoff until ``timeout``, not an error."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=max(0.5, deadline - time.monotonic()))
            _tune(sock)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            return sock, _recv_bytes(sock, len(MAGIC) + NONCE)
        except ssl.SSLCertVerificationError:
            raise
        except OSError as exc:  # ConnectionError, a reset, a refused connect, an aborted TLS handshake
            if sock is not None:
                sock.close()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DataPlaneError(f"{host}:{port}: no data-plane hello within {timeout:g} s ({exc})") from None
            time.sleep(min(left, pause * (0.5 + random.random())))
            pause = min(1.0, pause * 2)


def _connect(host: str, port: int, worker_id: int, role: int, key: bytes, job_id: str,
             ssl_context: ssl.SSLContext | None, server_hostname: str | None, timeout: float) -> socket.socket:
    sock, hello = _hello(host, port, ssl_context, server_hostname, timeout)
    if hello[: len(MAGIC)] != MAGIC:
        sock.close()
        raise DataPlaneError(f"{host}:{port} is not a dcoord data plane")
    nonce = hello[len(MAGIC):]
    sock.sendall(int(worker_id).to_bytes(8, "little", signed=True) + role.to_bytes(8, "little", signed=True)
                 + _mac(key, nonce, job_id, role))
    try:
        ok = _recv_bytes(sock, 2)
    except ConnectionError:
        ok = b""
    if ok != b"OK":
        sock.close()
        raise KeyRefused(f"the data plane at {host}:{port} refused worker {worker_id}'s credentials")
    sock.settimeout(None)
    return sock


class TcpDataPlane(DataPlane):
    """Worker side: payloads to the coordinator, models from it, over two authenticated connections."""

    name = "tcp"

    def __init__(self, host: str, port: int, worker_id: int, key: bytes, job_id: str,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 max_count: int = 1 << 34, timeout: float = 30.0) -> None:
        super().__init__()
        self.rank = worker_id + 1
        self.max_count = max_count
        args = (key, job_id, ssl_context, server_hostname, timeout)
        self.up = _connect(host, port, worker_id, UP, *args)
        self.down = _connect(host, port, worker_id, DOWN, *args)
        self.shelf = ModelShelf()  # the model versions received, for the compute loop to wait on
        self.bytes_in = 0
        self.pool = BufferPool()  # model buffers, reused once the worker has dropped that version
        self.reader = threading.Thread(target=self._read_models, name="dcoord-dp-models", daemon=True)
        self.reader.start()

    # -- control-plane address exchange: not used (the address comes in the RegisterReply) ------------
    def publish(self, value: str) -> None:  # pragma: no cover - the standalone path has no launcher
        raise NotImplementedError

    def fetch(self) -> str:  # pragma: no cover
        raise NotImplementedError

    # -- payloads out (one thread: the worker's compute loop) ----------------------------------------
    def _post(self, header: np.ndarray, payload: np.ndarray | None) -> None:
        kind, seq, count, code = (int(x) for x in header[:4])
        self.up.sendall(_header(kind, seq, count, code))
        if payload is not None:
            self.up.sendall(_as_bytes_view(payload))

    def wait_sent(self, timeout: float | None = None) -> bool:
        return True  # sendall returned: the bytes are in the kernel, in order

    def start_receiving(self, sources, max_count, deliver, fail) -> None:  # pragma: no cover
        raise NotImplementedError("the coordinator side is TcpDataServer")

    # -- models in (one thread: the reader) ---------------------------------------------------------
    def _read_models(self) -> None:
        head = np.empty(6, dtype="<i8")
        hview = memoryview(head).cast("B")
        try:
            while True:
                _recv_exact(self.down, hview)
                kind, _, count, code, model, version = (int(x) for x in head)
                if kind != KIND_MODEL or code not in DTYPES or not 0 <= count <= self.max_count:
                    raise DataPlaneError(f"bad model header {head.tolist()}")
                buf = self.pool.take(count, DTYPES[code])
                _recv_exact(self.down, memoryview(buf).cast("B"))
                self.bytes_in += buf.nbytes
                self.shelf.put(model, version, buf)
        except (OSError, ConnectionError, ssl.SSLError, DataPlaneError) as exc:
            self.shelf.fail(str(exc))

    def model(self, model: int, version: int, timeout: float) -> np.ndarray:
        """The parameters of (model, version), waiting for them to arrive; DataPlaneError if they never do."""
        return self.shelf.model(model, version, timeout)

    def keep_models(self, keep: set[tuple[int, int]]) -> None:
        """Forget the versions older than every one in ``keep`` of the same model.

        Newer versions stay: a straggler's superseded assignments may already have brought the models of
        later rounds, and the assignment it takes next needs them (the coordinator does not send them again).
        """
        self.shelf.keep_models(keep)

    def close(self, clean: bool = True) -> None:
        try:
            if clean:
                self.send_end(timeout=1.0)
        except OSError:
            pass
        for s in (self.up, self.down):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def new_key() -> bytes:
    """A fresh per-registration data-plane key (the control plane hands it to exactly one worker)."""
    return os.urandom(32)


class TcpPlane(Plane):
    """``transport: tcp``: the standalone plane, the default without a launcher (bench/transport.py: a 50 MB
    model moves ~25x faster than inside gRPC messages)."""

    name = "tcp"
    description = "authenticated raw-byte sockets beside gRPC (dcoord run / coordinator + worker)"
    # not yet for private jobs by default: private workers that stay up while their coordinator is resumed
    # do not get through the re-run rounds on this plane (tests/test_private_rejoin.py hangs), on gRPC they do
    default_for_private = False
    runs_under = ("none",)
    speed = 30

    def start_coordinator_side(self, end: CoordinatorEnd) -> tuple[PayloadMatcher, TcpDataServer]:
        """Listen for workers' data connections next to the control plane, under the same TLS; peers
        refused here (TLS, key) are counted through ``end.refuse``, like the control plane's."""
        matcher = PayloadMatcher(end.results, end.loop)
        server = TcpDataServer(end.host, end.job_id, None, end.max_count, matcher.on_payload, end.fail,
                               on_connect=matcher.reset, refuse=end.refuse, max_workers=end.max_workers,
                               port=end.port, ssl_context=end.ssl_context, pool_size=2 * end.max_workers + 2)
        return matcher, server

    def open_worker_side(self, end: WorkerEnd) -> TcpDataPlane:
        """Both connections of this registration (a fresh key each time the worker registers)."""
        return TcpDataPlane(end.host, end.port, end.worker_id, end.key, end.job_id, max_count=end.max_count,
                            ssl_context=end.ssl_context, server_hostname=end.server_hostname)
