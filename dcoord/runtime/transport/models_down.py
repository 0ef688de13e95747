"""Models down the launcher's data plane (torchrun/mpirun): rank 0 sends, each worker's reader receives.

Why: under a launcher the payloads already go up point-to-point, but a model inside the gRPC Assignment is
serialised into protobuf bytes and parsed again on every worker, every round; at millions of parameters
that is most of the launch path's gap to DDP. Here the coordinator's assignment only names (model, version)
(``ModelState.on_data_plane``) and the bytes go on the plane with their own tag, straight into a reused
buffer on the worker -- the same interface as the standalone tcp plane (``connected``, ``send_model`` on
the coordinator; ``model``, ``keep_models`` on the worker), so coordinator.py and worker.py do not care
which plane carries them.

Wire format, on tag ``MODEL_TAG`` (payloads use ``TAG``), rank 0 -> worker rank: a header
``int64[6] = (kind, seq, count, dtype, model, version)`` and, for ``KIND_MODEL``, ``count`` values of
``dtype``; ``seq`` counts 0, 1, 2, ... per worker (lost or reordered messages are detected). A header of
kind ``KIND_END`` (sent when the coordinator closes its data plane, after the shutdown messages) ends the
worker's reader, so a worker waiting for a model when the job ends is woken and no receive is left posted
when the process group is torn down.

The plane supplies two blocking primitives: ``send(dst_rank, array)`` on rank 0 (called only from this
module's sender threads, never from the event loop) and ``recv(array)`` on a worker (its reader thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

from dcoord.errors import DataPlaneError
from dcoord.runtime.buffers import BufferPool
from dcoord.runtime.transport.frames import DTYPE_CODES, DTYPES, KIND_END

log = logging.getLogger("dcoord.transport.models")

#: tag of model messages (rank 0 -> workers); payloads (workers -> rank 0) use base.TAG
MODEL_TAG = 8
KIND_MODEL = 3
HEADER_LEN = 6

Send = Callable[[int, np.ndarray], None]
Recv = Callable[[np.ndarray], None]


def model_header(seq: int, model: int = 0, version: int = 0, params: np.ndarray | None = None) -> np.ndarray:
    """The int64[6] header of one model message (``params`` None: the END of the stream)."""
    if params is None:
        return np.array([KIND_END, seq, 0, 0, 0, 0], dtype=np.int64)
    code = DTYPE_CODES.get(params.dtype)
    if code is None:
        raise DataPlaneError(f"model dtype {params.dtype} cannot go on the data plane (float32/float64)")
    return np.array([KIND_MODEL, seq, params.size, code, model, version], dtype=np.int64)


class ModelSender:
    """Rank 0: queues models per worker; one sender thread per worker sends them in order.

    Offers what coordinator.py uses of ``TcpDataServer`` (``connected``, ``send_model``, ``close``, the byte
    counters). ``port`` is 0: a launched worker gets no tcp data port in its RegisterReply.
    """

    port = 0

    def __init__(self, send: Send, workers: Iterable[int], bytes_in: Callable[[], int] = lambda: 0) -> None:
        self._send = send
        self._bytes_in = bytes_in
        self.bytes_out = 0
        self._queues: dict[int, queue.Queue] = {}
        self._failed: set[int] = set()
        self._closed = False
        self._threads: list[threading.Thread] = []
        for w in workers:
            self._queues[w] = queue.Queue()
            t = threading.Thread(target=self._loop, args=(w,), name=f"dcoord-models-{w}", daemon=True)
            t.start()
            self._threads.append(t)

    def new_key(self, worker: int) -> bytes:
        """No per-registration key: the launcher's process group already authenticates its ranks."""
        return b""

    @property
    def bytes_in(self) -> int:
        """Payload bytes the plane received (for metrics.data_plane_bytes)."""
        return int(self._bytes_in())

    def connected(self, worker: int) -> bool:
        """Models for ``worker`` can go on the plane (it is a rank of this launch and no send to it failed)."""
        return not self._closed and worker in self._queues and worker not in self._failed

    def send_model(self, worker: int, model: int, version: int, params: np.ndarray) -> bool:
        """Queue one model version for ``worker`` (never blocks the caller); False if it cannot go here."""
        if not self.connected(worker):
            return False
        arr = np.ascontiguousarray(params).reshape(-1)
        if arr.dtype not in DTYPE_CODES:
            raise DataPlaneError(f"model dtype {arr.dtype} cannot go on the data plane (float32/float64)")
        self._queues[worker].put((model, version, arr))
        return True

    def _loop(self, worker: int) -> None:
        q, seq, dst = self._queues[worker], 0, worker + 1
        try:
            while True:
                item = q.get()
                if item is None:  # END: the worker's reader stops
                    self._send(dst, model_header(seq))
                    return
                model, version, arr = item
                self._send(dst, model_header(seq, model, version, arr))
                self._send(dst, arr)
                self.bytes_out += arr.nbytes
                seq += 1
        except Exception as exc:  # noqa: BLE001 - a dead peer: later assignments carry its models over gRPC
            self._failed.add(worker)
            if not self._closed:
                log.warning("models to worker %d: data plane send failed (%s); models go over gRPC", worker, exc)

    def close(self) -> None:
        """Queue END for every worker, after the models already queued (never blocks)."""
        if self._closed:
            return
        self._closed = True
        for q in self._queues.values():
            q.put(None)

    def join(self, timeout: float = 10.0) -> bool:
        """Wait for the sender threads to send END; True when all did (the plane may then be torn down)."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class ModelShelf:
    """Model versions a worker has received, (model, version) -> parameters, for its compute loop to wait on.

    Shared by every plane that carries models down (tcp, and the launchers' planes through ModelReceiver):
    a straggler may already hold models of later rounds, and versions newer than those it keeps are never
    dropped (the coordinator does not send them again)."""

    def __init__(self) -> None:
        self.models: dict[tuple[int, int], np.ndarray] = {}
        self.cv = threading.Condition()
        self.error: str | None = None

    def put(self, model: int, version: int, params: np.ndarray) -> None:
        with self.cv:
            self.models[(model, version)] = params
            self.cv.notify_all()

    def fail(self, why: str) -> None:
        """The stream ended: every waiting and later ``model`` call raises with ``why``."""
        with self.cv:
            self.error = why
            self.cv.notify_all()

    def model(self, model: int, version: int, timeout: float) -> np.ndarray:
        """The parameters of (model, version), waiting for them to arrive; DataPlaneError if they never do."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while (model, version) not in self.models:
                left = deadline - time.monotonic()
                if self.error is not None or left <= 0:
                    why = self.error or f"not received within {timeout:g} s"
                    raise DataPlaneError(f"model {model} version {version}: {why}")
                self.cv.wait(min(left, 0.5))
            return self.models[(model, version)]

    def keep_models(self, keep: set[tuple[int, int]]) -> None:
        """Forget the versions older than every one in ``keep`` of the same model (newer ones stay)."""
        oldest: dict[int, int] = {}
        for m, v in keep:
            oldest[m] = min(v, oldest.get(m, v))
        with self.cv:
            for k in [k for k in self.models if k[0] in oldest and k[1] < oldest[k[0]]]:
                del self.models[k]


class ModelReceiver(ModelShelf):
    """A worker: a reader thread receives every model rank 0 sends into reused buffers, until END.

    ``model`` and ``keep_models`` come from ModelShelf, as on the tcp plane.
    """

    def __init__(self, recv: Recv, max_count: int, pool: BufferPool | None = None) -> None:
        self._recv = recv
        self.max_count = max_count
        super().__init__()
        self.pool = pool or BufferPool()
        self.ended = False
        self.bytes_in = 0
        self.received = 0
        self.thread = threading.Thread(target=self._loop, name="dcoord-models-in", daemon=True)
        self.thread.start()

    def check_header(self, head: np.ndarray, expect: int) -> tuple[int, int, int, np.dtype | None, int, int]:
        """(kind, seq, count, dtype, model, version) of a received header; DataPlaneError when malformed."""
        kind, seq, count, code, model, version = (int(x) for x in head[:HEADER_LEN])
        if kind not in (KIND_MODEL, KIND_END):
            raise DataPlaneError(f"model stream: unknown message kind {kind}")
        if seq != expect:
            raise DataPlaneError(f"model stream: sequence number {seq}, expected {expect} (lost or reordered)")
        if kind == KIND_END:
            return kind, seq, 0, None, 0, 0
        if code not in DTYPES or not 0 <= count <= self.max_count or model < 0 or version < 0:
            raise DataPlaneError(f"model stream: bad header (count {count}, dtype code {code}, model {model}, "
                                 f"version {version})")
        return kind, seq, count, DTYPES[code], model, version

    def _loop(self) -> None:
        head = np.empty(HEADER_LEN, dtype=np.int64)
        expect = 0
        try:
            while True:
                self._recv(head)
                kind, _, count, dtype, model, version = self.check_header(head, expect)
                if dtype is None:
                    self.ended = True
                    self.fail("the coordinator ended the model stream (the job is over)")
                    return
                buf = self.pool.take(count, dtype)
                self._recv(buf)
                expect += 1
                self.bytes_in += buf.nbytes
                self.received += 1
                self.put(model, version, buf)
        except Exception as exc:  # noqa: BLE001 - a dead rank 0 or a protocol error: waiting callers are told
            self.fail(f"model stream from rank 0 ended: {exc}")

    def join(self, timeout: float = 10.0) -> bool:
        """Wait for END (or the stream's failure); True when the reader has stopped."""
        self.thread.join(timeout)
        return not self.thread.is_alive()
