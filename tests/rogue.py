"""Test support: a hand-rolled worker speaking raw gRPC to a real coordinator, to misbehave on purpose.

It does what every real worker must (register with the job's token, say hello with its session, keep
heartbeating so it stays counted alive) and leaves to a subclass only how it answers each assignment."""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent import futures
from pathlib import Path

import grpc

from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.local import run_local
from dcoord.runtime.security.auth import ClientSecurity, open_channel


class RogueWorker(threading.Thread):
    """A registered worker (an insider: it holds the job's token and a session) that answers the k-th
    assignment with `answer(KINDS[k % len(KINDS)], ...)`; `sent` lists the kinds it sent, in order."""

    KINDS: list[str] = []

    def __init__(self, address: str, token: str, requested_id: int = 3):
        super().__init__(daemon=True)
        self.address, self.token, self.requested_id = address, token, requested_id
        self.sent: list[str] = []

    def on_registered(self, reg: pb.RegisterReply) -> None:
        """Hook run once, after registering and before the work stream opens (e.g. to open a data plane)."""

    def answer(self, kind: str, assignment: pb.Assignment, reg: pb.RegisterReply) -> pb.Result:
        """The result this worker sends back for one assignment, misbehaving as `kind` says."""
        raise NotImplementedError

    def run(self) -> None:
        stub = pb_grpc.CoordinatorStub(open_channel(self.address, ClientSecurity(token=self.token)))
        reg = stub.Register(pb.RegisterRequest(hostname="rogue", pid=0, requested_id=self.requested_id))
        self.on_registered(reg)
        q: queue.Queue = queue.Queue()
        q.put(pb.WorkerMessage(hello=pb.Hello(job_id=reg.job_id, worker_id=reg.worker_id, session=reg.session)))
        done = threading.Event()

        def heartbeat():  # stays counted alive however long the real workers take to start
            while not done.wait(0.5):
                try:
                    stub.Heartbeat(pb.HeartbeatRequest(job_id=reg.job_id, worker_id=reg.worker_id,
                                                       session=reg.session), timeout=5)
                except grpc.RpcError:
                    return

        threading.Thread(target=heartbeat, daemon=True).start()
        try:
            for k, msg in enumerate(stub.Work(iter(q.get, None))):
                if msg.HasField("shutdown"):
                    break
                kind = self.KINDS[k % len(self.KINDS)]
                q.put(pb.WorkerMessage(result=self.answer(kind, msg.assignment, reg)))
                self.sent.append(kind)
        except grpc.RpcError:
            pass
        finally:
            done.set()
            q.put(None)


def run_with_rogue(cfg, out: Path, rogue: type[RogueWorker], token: str) -> tuple[dict, RogueWorker]:
    """``run_local`` with the last worker id taken by ``rogue`` (started once the coordinator listens) and
    the others spawned as real worker processes; returns the run's summary and the rogue."""
    started: list[RogueWorker] = []

    def on_started(coord, procs, address):
        started.append(rogue(address, token, requested_id=cfg.workers - 1))
        started[0].start()

    summary = run_local(cfg, out, progress=False, on_started=on_started, spawn=cfg.workers - 1, token=token)
    return summary, started[0]


@contextlib.contextmanager
def fake_coordinator(servicer: pb_grpc.CoordinatorServicer):
    """Serve a hand-written coordinator servicer on loopback (no security): yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)
