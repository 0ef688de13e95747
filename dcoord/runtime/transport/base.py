"""The data-plane interface, the wire header, and the coordinator-side pairing of payloads with results.

Wire format (both torch and MPI planes): for every task payload a worker posts two point-to-point sends
to rank 0 with the same tag, a header ``int64[4] = (kind, seq, count, dtype)`` and then the flat payload
(``count`` values of ``dtype``); a last header of kind END says the worker is done. Per-source FIFO order
(gloo pairs, MPI's non-overtaking rule) keeps header and payload together; the explicit ``seq`` (0, 1, 2,
... per worker) lets the receiver check that nothing was lost or reordered, and lets the coordinator pair
a payload with the gRPC Result that names it (``data_seq``), so a late payload can never be mistaken for
a later round's: it is paired with its own (late) Result and dropped as late by the round state machine.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dcoord.dtypes import NATIVE_FLOATS
from dcoord.errors import DataPlaneError, DcoordError
from dcoord.runtime.transport.frames import DTYPE_CODES, DTYPES, KIND_DATA, KIND_END, TAG
from dcoord.wire.messages import Result

__all__ = ["DTYPE_CODES", "DTYPES", "KIND_DATA", "KIND_END", "TAG", "CoordinatorEnd", "DataPlane", "DataPlaneError",
           "Deliver", "Fail", "Plane", "PayloadMatcher", "WorkerEnd", "make_header"]

log = logging.getLogger("dcoord.transport")


#: deliver(worker_id, seq, array) and fail(worker_id, message), both called from receiver threads
Deliver = Callable[[int, int, np.ndarray], None]
Fail = Callable[[int, str], None]


def make_header(kind: int, seq: int, payload: np.ndarray | None = None) -> np.ndarray:
    """The int64[4] header that precedes a payload (or ends a worker's stream)."""
    if payload is None:
        return np.array([kind, seq, 0, 0], dtype=np.int64)
    code = DTYPE_CODES.get(payload.dtype)
    if code is None:
        raise DataPlaneError(f"payload dtype {payload.dtype} cannot go on the data plane (float32/float64)")
    return np.array([kind, seq, payload.size, code], dtype=np.int64)


class DataPlane(ABC):
    """One process's end of the data plane: workers (rank >= 1) send to rank 0, rank 0 receives.

    Why an interface: the launch code and the worker loop stay the same whether payloads ride a torch
    process group (gloo/nccl) or MPI; only sending, receiving and the start-up address exchange differ.
    """

    name = "base"
    rank: int = 0
    world_size: int = 1

    def __init__(self) -> None:
        self.next_seq = 0
        self._expect: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.max_count = 0

    # -- start-up (control-plane address exchange; the only collective, before any round) ------------
    @abstractmethod
    def publish(self, value: str) -> None:
        """Rank 0: make ``value`` (the coordinator's "host:port", or "error:...") known to every rank."""

    @abstractmethod
    def fetch(self) -> str:
        """Ranks >= 1: the value rank 0 published (blocks until it is there)."""

    # -- worker side --------------------------------------------------------------------------------
    @abstractmethod
    def _post(self, header: np.ndarray, payload: np.ndarray | None) -> None:
        """Post non-blocking sends of the header (and payload) to rank 0, keeping buffers alive."""

    @abstractmethod
    def wait_sent(self, timeout: float | None = None) -> bool:
        """Drive posted sends to completion (MPI needs the sender to make progress); False on timeout."""

    def send(self, payload: np.ndarray) -> int:
        """Send one task payload to rank 0 without blocking; returns its sequence number."""
        arr = np.ascontiguousarray(payload).reshape(-1)
        seq = self.next_seq
        self._post(make_header(KIND_DATA, seq, arr), arr)
        self.next_seq += 1
        return seq

    def send_end(self, timeout: float = 10.0) -> bool:
        """Tell rank 0's receiver for this worker that no more payloads come, and flush."""
        self._post(make_header(KIND_END, self.next_seq), None)
        return self.wait_sent(timeout)

    # -- coordinator side ---------------------------------------------------------------------------
    @abstractmethod
    def start_receiving(self, sources: Iterable[int], max_count: int, deliver: Deliver, fail: Fail) -> None:
        """Rank 0: receive from every source rank in order, forever (until END or stop), off the event loop."""

    def stop_receiving(self, timeout: float = 10.0) -> bool:
        """Rank 0: wait for the receivers to see END from every worker; True when all ended cleanly."""
        for t in self._threads:
            t.join(timeout)
        clean = not any(t.is_alive() for t in self._threads)
        self._stop.set()
        return clean

    def check_header(self, src: int, header: np.ndarray) -> tuple[int, int, int, np.dtype | None]:
        """Validate a received header against the per-source sequence; returns (kind, seq, count, dtype)."""
        kind, seq, count, code = (int(x) for x in header[:4])
        expect = self._expect.get(src, 0)
        if kind not in (KIND_DATA, KIND_END):
            raise DataPlaneError(f"rank {src}: unknown message kind {kind}")
        if seq != expect:
            raise DataPlaneError(f"rank {src}: sequence number {seq}, expected {expect} (lost or reordered data)")
        if kind == KIND_END:
            return kind, seq, 0, None
        if code not in DTYPES or not 0 <= count <= self.max_count:
            raise DataPlaneError(f"rank {src}: bad header (count {count}, dtype code {code})")
        self._expect[src] = expect + 1
        return kind, seq, count, DTYPES[code]

    # -- models down (rank 0 -> workers, runtime/transport/models_down.py) ----------------------------
    #: planes that carry models set this (and implement _send_model_array / _recv_model_array)
    models_down = False
    models_sender = None
    models_receiver = None

    def _send_model_array(self, dst: int, arr: np.ndarray) -> None:
        """Rank 0: blocking send of one array to rank ``dst`` on MODEL_TAG (called from sender threads)."""
        raise NotImplementedError

    def _recv_model_array(self, arr: np.ndarray) -> None:
        """A worker: blocking receive of one array from rank 0 on MODEL_TAG (its reader thread)."""
        raise NotImplementedError

    def model_sender(self, workers: Iterable[int]):
        """Rank 0: a ModelSender for these worker ids (coordinator.data_server), or None if models stay on gRPC."""
        if not self.models_down:
            return None
        from dcoord.runtime.transport.models_down import ModelSender

        self.models_sender = ModelSender(self._send_model_array, workers,
                                         bytes_in=lambda: getattr(self, "bytes_in", 0))
        return self.models_sender

    def start_models(self, max_count: int) -> None:
        """A worker: start receiving models from rank 0 (before its first assignment can name one)."""
        if self.models_down and self.models_receiver is None:
            from dcoord.runtime.transport.models_down import ModelReceiver

            self.models_receiver = ModelReceiver(self._recv_model_array, max_count)

    def model(self, model: int, version: int, timeout: float) -> np.ndarray:
        """A worker: the parameters of (model, version) from rank 0, waiting for them (see ModelReceiver)."""
        if self.models_receiver is None:
            raise DcoordError(f"the coordinator sent models on the {self.name} data plane, which this worker "
                              "does not read")
        return self.models_receiver.model(model, version, timeout)

    def keep_models(self, keep: set[tuple[int, int]]) -> None:
        """A worker: forget model versions older than those in ``keep`` (newer ones stay)."""
        if self.models_receiver is not None:
            self.models_receiver.keep_models(keep)

    def end_models(self, timeout: float = 10.0) -> bool:
        """Wait until the model stream ended on this rank (rank 0: END sent; worker: END received).

        True when nothing of it is left posted, so the plane may be torn down without blocking."""
        if self.models_sender is not None:
            self.models_sender.close()  # normally done already by the coordinator's close_data_plane
            return self.models_sender.join(timeout)
        if self.models_receiver is not None:
            return self.models_receiver.join(timeout)
        return True

    # -- teardown -----------------------------------------------------------------------------------
    @abstractmethod
    def close(self, clean: bool = True) -> None:
        """Leave the process group / communicator; ``clean=False`` skips anything that could block."""


class PayloadMatcher:
    """Coordinator side: pairs each data-plane Result (gRPC) with its payloads (data plane) by (worker, seq).

    Only a complete Result goes on the coordinator's result queue, so the round state machine and its
    validation (shape, finiteness, round, duplicates) are exactly those of the gRPC path. Either half may
    arrive first; the event loop is never blocked waiting for the other half.
    """

    def __init__(self, results: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> None:
        self.results = results
        self.loop = loop
        self.lock = threading.Lock()
        self.arrays: dict[int, dict[int, np.ndarray]] = {}
        self.waiting: dict[int, deque] = {}
        self.payloads = 0
        self.orphaned = 0

    def reset(self, worker: int) -> None:
        """A worker's data connection was (re)made: its numbering starts again at 0, nothing old is kept."""
        with self.lock:
            self.orphaned += len(self.arrays.pop(worker, {}))
            self.waiting.pop(worker, None)

    def on_payload(self, worker: int, seq: int, array: np.ndarray) -> None:
        """A payload arrived (receiver thread)."""
        with self.lock:  # scheduling under the lock keeps each worker's results in order
            self.payloads += 1
            self.arrays.setdefault(worker, {})[seq] = array
            for item in self._ready(worker):
                try:
                    self.loop.call_soon_threadsafe(self.results.put_nowait, item)
                except RuntimeError:  # the event loop is closed: the run is over
                    return

    def on_result(self, res: Result, conn) -> None:
        """A Result whose payloads are on the data plane arrived (event-loop thread)."""
        worker = conn.worker_id if conn is not None else res.worker_id
        with self.lock:
            self.waiting.setdefault(worker, deque()).append((res, conn))
            for item in self._ready(worker):
                self.loop.call_soon_threadsafe(self.results.put_nowait, item)

    def _ready(self, worker: int) -> list:
        out = []
        q = self.waiting.get(worker)
        have = self.arrays.setdefault(worker, {})
        while q:
            res, conn = q[0]
            seqs = range(res.data_seq, res.data_seq + len(res.tasks))
            if not all(s in have for s in seqs):
                break
            q.popleft()
            # a worker's results come in order: payloads numbered before this one can never be claimed
            for s in [s for s in have if s < res.data_seq]:
                del have[s]
                self.orphaned += 1
            out.append((res, conn, [have.pop(s) for s in seqs]))  # arrays as received: no copy
        return out


# -- registered planes ------------------------------------------------------------------------------------
@dataclass
class CoordinatorEnd:
    """What a plane's coordinator side needs from the coordinator (and nothing more of it).

    ``fail(worker, message)`` and ``refuse(reason)`` may be called from any thread; ``results`` is the round
    loop's queue, fed on ``loop``."""

    job_id: str
    host: str
    port: int  # requested listen port (runtime.data_port; 0 = any free one)
    max_count: int  # largest payload in values
    max_workers: int
    results: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    fail: Fail
    refuse: Callable[[str], None]
    ssl_context: ssl.SSLContext | None = None


@dataclass
class WorkerEnd:
    """What a plane's worker side learns at registration: where the coordinator's side is and the
    credentials of this registration."""

    host: str
    port: int
    worker_id: int
    key: bytes
    job_id: str
    max_count: int
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None


class Plane:
    """A registered data plane (runtime/transport/registry.py): a ``transport`` value and its hooks.

    Why an object with hooks: the coordinator, the servicer, the worker and the launchers start whichever
    plane the job chose through these calls, so none of them names a plane and a new one touches only
    its own module and the registry.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: where it can run: "none" (dcoord run, dcoord coordinator + dcoord worker), "torchrun", "mpirun"
    runs_under: ClassVar[tuple[str, ...]] = ()
    #: the launcher whose ranks it connects (its process group does the start-up address exchange)
    launcher: ClassVar[str | None] = None
    #: False: payloads ride inside the control plane's messages (no plane beside it)
    carries_payloads: ClassVar[bool] = True
    payload_dtypes: ClassVar[tuple[str, ...]] = NATIVE_FLOATS
    #: the default is the fastest plane that can run where the job runs (measured: bench/transport.py)
    speed: ClassVar[int] = 0
    #: a default for private jobs (privacy:) too; False keeps them on another plane unless asked for by name
    default_for_private: ClassVar[bool] = True
    #: True: the plane adds the workers' decoded terms a_i f_i itself, in the payload dtype (a collective
    #: all-reduce), which the decode-precision guard (coding/precision.py ``decode_bound``) accounts for
    sums_in_payload_dtype: ClassVar[bool] = False
    #: workers hold replicas and decode by all-reduce among themselves (transport/allreduce.py)
    collective: ClassVar[bool] = False

    def check(self, cfg: Any) -> str | None:
        """A one-line reason this plane cannot run ``cfg`` with its guarantees, or None (the default)."""
        return None

    def build(self, cfg: Any, env: Any) -> DataPlane:
        """A launcher's plane: this rank's end of the process group (dcoord.launch)."""
        raise DcoordError(f"transport: {self.name} is not started by a launcher")

    def start_coordinator_side(self, end: CoordinatorEnd) -> tuple[PayloadMatcher, Any] | None:
        """Without a launcher: start the coordinator's side beside the control plane.

        Returns (the matcher that pairs results with payloads, the data server the coordinator sends
        models on and counts bytes of), or None when payloads stay in the control plane's messages."""
        return None

    def open_worker_side(self, end: WorkerEnd) -> DataPlane | None:
        """Without a launcher: this worker's end (after each registration), or None (payloads on gRPC)."""
        return None
