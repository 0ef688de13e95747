"""Test support: a hand-rolled worker speaking raw gRPC to a real coordinator, to misbehave on purpose, and
a hand-written coordinator that real workers register with (an attacker's, serving any config and plan).

The rogue worker does what every real worker must (register with the job's token, say hello with its
session, keep heartbeating so it stays counted alive) and leaves to a subclass only how it answers each
assignment."""

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


class FakeCoordinator(pb_grpc.CoordinatorServicer):
    """A coordinator under an attacker's control: serves any config and sends the assignments it is given, one
    at a time; ``results`` gets the worker's result for each, or None when it sent nothing (refused) within
    ``wait_s`` (seconds, or a list: one per assignment). Then it tells the worker to stop."""

    def __init__(self, config_yaml: str, assignments: list[pb.Assignment] = (),
                 wait_s: float | list[float] = 15.0):
        self.config_yaml = config_yaml
        self.assignments = list(assignments)
        self.wait_s = wait_s
        self.results: list[pb.Result | None] = []

    def Register(self, request, context):
        return pb.RegisterReply(worker_id=0, job_id="fake", job_config_yaml=self.config_yaml, session="s",
                                heartbeat_interval_s=30)

    def Heartbeat(self, request, context):
        return pb.HeartbeatReply(ok=True)

    def Work(self, request_iterator, context):
        got: queue.Queue = queue.Queue()

        def read():
            for m in request_iterator:
                if m.HasField("result"):
                    got.put(m.result)

        threading.Thread(target=read, daemon=True).start()
        for k, a in enumerate(self.assignments):
            yield pb.CoordinatorMessage(assignment=a)
            try:
                self.results.append(got.get(timeout=self.wait_s[k] if isinstance(self.wait_s, list) else self.wait_s))
            except queue.Empty:
                self.results.append(None)  # refused: the worker sent nothing
        yield pb.CoordinatorMessage(shutdown=pb.Shutdown(reason="done"))
