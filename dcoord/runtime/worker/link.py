"""The worker's end of the control plane: registering, heartbeats and the work stream, over gRPC.

Why a module of its own: it is the only part of the worker that touches gRPC and the generated stubs; the
messages themselves are built and read by dcoord.wire, so the compute loop (worker.py) works on the wire
layer's dataclasses (Assignment, Shutdown, Result, Registration) only.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator

import grpc

from dcoord.errors import DcoordError
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.security.auth import ClientSecurity, open_channel
from dcoord.wire import (
    GRPC_OPTIONS,
    heartbeat_request,
    hello_message,
    register_request,
    registration_from_proto,
    stream_heartbeat,
    work_item_from_proto,
)
from dcoord.wire.messages import Assignment, Registration, Shutdown

log = logging.getLogger("dcoord.worker")

#: Register errors worth retrying: the coordinator is not up yet, busy, or the job is full for now (an id
#: held by a dead worker frees after its reservation expires).
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class StreamEnded(Exception):
    """The work stream broke (the message says how: the gRPC status)."""


class ControlLink:
    """One channel to the coordinator at ``address`` (token and TLS from ``security``)."""

    def __init__(self, address: str, security: ClientSecurity | None = None) -> None:
        self.address = address
        self.channel = open_channel(address, security, options=GRPC_OPTIONS)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def register(self, requested_id: int, device: str, connect_timeout: float) -> Registration:
        """Register, retrying with exponential backoff (0.2 s doubling to 5 s) until ``connect_timeout``,
        so workers may start before the coordinator (pod start order does not matter)."""
        request = register_request(socket.gethostname()[:255], os.getpid(), requested_id, device)
        deadline = time.monotonic() + connect_timeout
        delay = 0.2
        while True:
            left = deadline - time.monotonic()
            try:
                return registration_from_proto(self.stub.Register(request, timeout=max(0.5, min(10.0, left))))
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRY_CODES:
                    raise DcoordError(f"registration refused by {self.address}: {code.name}: {exc.details()}") \
                        from None
                if time.monotonic() + delay > deadline:
                    raise DcoordError(
                        f"cannot register with the coordinator at {self.address} within {connect_timeout:g} s "
                        f"(--connect-timeout): last answer {code.name}: {exc.details()}"
                    ) from None
                log.info("register: %s (%s); retrying in %.1f s", code.name, exc.details(), delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def heartbeat(self, reg: Registration, last_round: int) -> bool:
        """Tell the coordinator this worker is alive; False when the call failed (the stream decides)."""
        try:
            self.stub.Heartbeat(heartbeat_request(reg.job_id, reg.worker_id, last_round, reg.session), timeout=5)
        except grpc.RpcError:
            return False
        return True

    def work(self, requests: Iterable) -> Iterator[Assignment | Shutdown]:
        """The work stream: sends ``requests`` (wire messages), yields what the coordinator sends; raises
        StreamEnded when the stream breaks."""
        try:
            for msg in self.stub.Work(iter(requests)):
                yield work_item_from_proto(msg)
        except grpc.RpcError as exc:
            raise StreamEnded(f"stream ended: {exc.code().name}") from None

    def store_call(self, reg: Registration):
        """The Rendezvous RPC as a store call (transport: allreduce's group store), for this registration."""
        from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb

        def call(op: str, keys: list[str], value: bytes, amount: int) -> tuple[bool, bytes, int]:
            req = pb.StoreRequest(job_id=reg.job_id, worker_id=reg.worker_id, session=reg.session, op=op,
                                  keys=keys, value=value, amount=amount)
            try:
                reply = self.stub.Rendezvous(req, timeout=30)
            except grpc.RpcError as exc:
                raise DcoordError(f"rendezvous refused by {self.address}: {exc.code().name}: {exc.details()}") \
                    from None
            return reply.found, reply.value, reply.number

        return call

    def close(self) -> None:
        self.channel.close()


class Inbox:
    """Assignments from the coordinator; ``latest()`` returns the newest, dropping superseded ones."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.items: list[Assignment | Shutdown] = []
        self.closed: str | None = None
        self.skipped = 0

    def put(self, msg: Assignment | Shutdown) -> None:
        with self.cv:
            self.items.append(msg)
            self.cv.notify_all()

    def close(self, reason: str) -> None:
        with self.cv:
            self.closed = reason
            self.cv.notify_all()

    def wait_closed_or_shutdown(self, timeout: float) -> bool:
        """True when the stream ended or a shutdown arrived within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                if self.closed is not None or any(isinstance(m, Shutdown) for m in self.items):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.5))

    def latest(self) -> Assignment | Shutdown | None:
        """The newest assignment (a shutdown wins over any), waiting for one; None when the stream closed."""
        with self.cv:
            while not self.items and self.closed is None:
                self.cv.wait(0.5)
            if not self.items:
                return None
            for m in self.items:
                if isinstance(m, Shutdown):
                    self.items.clear()
                    return m
            msg = self.items[-1]
            self.skipped += len(self.items) - 1
            self.items.clear()
            return msg


class WorkStream:
    """One registration's work stream: messages out (``send``), assignments in (``inbox``), and a heartbeat
    thread saying which round this worker computed last (``last_round``).

    Heartbeats go on the stream itself when the coordinator says it reads them there
    (``Registration.heartbeat_on_stream``), and only when nothing else was sent for a heartbeat interval:
    a worker that returns a result every round then sends none, and the coordinator is not served a
    separate RPC per worker per second. Older coordinators get the Heartbeat RPC as before."""

    def __init__(self, link: ControlLink, reg: Registration, collective=None) -> None:
        self.link, self.reg = link, reg
        self.collective = collective  # transport: allreduce -- takes Decode, Group, SyncRequest, ReplicaState
        self.outbox: queue.Queue = queue.Queue()
        self.outbox.put(hello_message(reg.job_id, reg.worker_id, reg.session))
        self.inbox = Inbox()
        self.stop = threading.Event()
        self.last_round = -1
        self.last_sent = time.monotonic()
        threading.Thread(target=self._receive, daemon=True).start()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _receive(self) -> None:
        try:
            for item in self.link.work(iter(self.outbox.get, None)):
                if isinstance(item, (Assignment, Shutdown)):
                    self.inbox.put(item)
                elif self.collective is not None:
                    self.collective(item)
                else:
                    log.warning("ignoring a %s message: this worker has no all-reduce plane", type(item).__name__)
        except StreamEnded as exc:
            self.inbox.close(str(exc))
        else:
            self.inbox.close("stream closed")

    def _heartbeat(self) -> None:
        interval = self.reg.heartbeat_interval_s
        if not self.reg.heartbeat_on_stream:
            while not self.stop.wait(interval):
                self.link.heartbeat(self.reg, self.last_round)
            return
        wait = interval
        while not self.stop.wait(wait):
            idle = time.monotonic() - self.last_sent
            if idle >= interval:
                self.send([stream_heartbeat(self.last_round)])
                idle = 0.0
            wait = max(0.05, interval - idle)

    def send(self, messages: Iterable) -> None:
        """Queue wire messages (dcoord.wire.result_messages) on the stream, in order."""
        for m in messages:
            self.outbox.put(m)
        self.last_sent = time.monotonic()

    def close(self) -> None:
        """End the heartbeat and the outgoing half of the stream."""
        self.stop.set()
        self.outbox.put(None)
