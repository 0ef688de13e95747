"""A worker: register, then compute whatever the coordinator assigns, newest round first.

The worker never holds the coordinator up: it streams results back as they are ready; if it falls
behind (a straggler), it skips assignments that a newer one has superseded. Injected straggler delays
(config ``inject``) are slept after computing, as if the machine were that much slower.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
import time

import grpc
import numpy as np
import torch

from dcoord.config import load_config
from dcoord.errors import DataPlaneError, DcoordError
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.security.auth import ClientSecurity, data_plane_client_context, open_channel
from dcoord.runtime.tensors import from_proto, load_flat_params
from dcoord.runtime.worker.compute import TaskComputer
from dcoord.wire import GRPC_OPTIONS
from dcoord.wire.chunking import mark_payloads, pack_result, send_payloads
from dcoord.workloads.data import load_checked

log = logging.getLogger("dcoord.worker")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DcoordError("device: cuda was asked for but no CUDA device is visible")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local % torch.cuda.device_count()}")
    return torch.device("cpu")


class _Inbox:
    """Assignments from the coordinator; ``latest()`` returns the newest, dropping superseded ones."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.items: list[pb.CoordinatorMessage] = []
        self.closed: str | None = None
        self.skipped = 0

    def put(self, msg: pb.CoordinatorMessage) -> None:
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
                if self.closed is not None or any(m.HasField("shutdown") for m in self.items):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.5))

    def latest(self) -> pb.CoordinatorMessage | None:
        with self.cv:
            while not self.items and self.closed is None:
                self.cv.wait(0.5)
            if not self.items:
                return None
            for m in self.items:
                if m.HasField("shutdown"):
                    self.items.clear()
                    return m
            msg = self.items[-1]
            self.skipped += len(self.items) - 1
            self.items.clear()
            return msg


def computer_size(workload) -> int:
    """Largest tensor the data plane may carry to this worker (a model's parameter count, with room)."""
    return 4 * max(workload.num_params(), 1)


#: Register errors worth retrying: the coordinator is not up yet, busy, or the job is full for now (an id
#: held by a dead worker frees after its reservation expires).
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def register(stub, request: pb.RegisterRequest, address: str, connect_timeout: float) -> pb.RegisterReply:
    """Register, retrying with exponential backoff (0.2 s doubling to 5 s) until ``connect_timeout``,
    so workers may start before the coordinator (pod start order does not matter)."""
    deadline = time.monotonic() + connect_timeout
    delay = 0.2
    while True:
        left = deadline - time.monotonic()
        try:
            return stub.Register(request, timeout=max(0.5, min(10.0, left)))
        except grpc.RpcError as exc:
            code = exc.code()
            if code not in RETRY_CODES:
                raise DcoordError(f"registration refused by {address}: {code.name}: {exc.details()}") from None
            if time.monotonic() + delay > deadline:
                raise DcoordError(
                    f"cannot register with the coordinator at {address} within {connect_timeout:g} s "
                    f"(--connect-timeout): last answer {code.name}: {exc.details()}"
                ) from None
            log.info("register: %s (%s); retrying in %.1f s", code.name, exc.details(), delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def run_worker(address: str, requested_id: int = -1, device: str | None = None,
               connect_timeout: float = 60.0, data_plane=None, security: ClientSecurity | None = None,
               allow_workloads: list[str] | None = None, noise_secret_file: str | None = None,
               max_epsilon: float | None = None, rejoin: bool = True) -> int:
    """Serve one job until the coordinator says stop; returns the number of rounds computed.

    A worker that loses its coordinator (stream gone without a shutdown) registers again, with its id and
    the same backoff, for up to ``connect_timeout``, so it rejoins a coordinator restarted with --resume
    (same job id); after that, or at once with ``rejoin=False``, it raises LostCoordinator (exit status 4).

    With ``data_plane`` (a transport.DataPlane, under torchrun/mpirun) payloads go to rank 0 over the
    process group / MPI and the gRPC Result only points at them (``payload_on_data_plane``, ``data_seq``).
    ``security``: token and TLS (runtime/security/auth.py); ``allow_workloads``: ``package.module:function``
    patterns this worker may run (None: $DCOORD_ALLOW_WORKLOADS); ``noise_secret_file``: this worker's
    noise secret (default $DCOORD_NOISE_SECRET_FILE, then $DCOORD_NOISE_SECRET); ``max_epsilon``: refuse
    jobs less private than this against a compromised coordinator (runtime/worker/guard.py).
    """
    from dcoord.runtime.worker.guard import allowed_from_env, check_privacy, check_workload

    torch.set_num_threads(1)
    channel = open_channel(address, security, options=GRPC_OPTIONS)
    stub = pb_grpc.CoordinatorStub(channel)
    dev = pick_device(device or "auto")
    reg = register(stub, pb.RegisterRequest(hostname=socket.gethostname()[:255], pid=os.getpid(),
                                            requested_id=requested_id, device=str(dev)), address, connect_timeout)
    cfg = load_config(None, data=__import__("yaml").safe_load(reg.job_config_yaml))
    check_workload(cfg.workload, allowed_from_env() if allow_workloads is None else allow_workloads)
    if device is None and cfg.device != "auto":
        dev = pick_device(cfg.device)  # no --device flag: the job config's device
    wid, job_id, session = reg.worker_id, reg.job_id, reg.session
    if data_plane is not None and wid != data_plane.rank - 1:
        raise DcoordError(f"rank {data_plane.rank} was given worker id {wid}, not {data_plane.rank - 1}; "
                          "its data-plane payloads could not be paired with its results")
    scheme = cfg.make_scheme()
    stragglers = cfg.straggler_model()
    workload = load_checked(cfg)
    check_privacy(cfg, workload, max_epsilon)
    privacy = None
    from dcoord.privacy.mechanisms import PrivacyError

    if cfg.privacy is not None:
        from dcoord.privacy.mechanisms import load_worker_noise_key
        from dcoord.runtime.worker.private import WorkerPrivacy

        try:
            key = load_worker_noise_key(noise_secret_file) if cfg.privacy.trust == "workers" else None
            privacy = WorkerPrivacy(cfg, workload, scheme.num_parts(), key=key)
        except (PrivacyError, OSError) as exc:
            raise DcoordError(f"worker: {exc}") from None
    computer = TaskComputer(workload, scheme.part_fractions(), cfg.batch_size,
                            cfg.seed, models=scheme.models, device=dev, shards=cfg.shards, privacy=privacy,
                            loader_workers=cfg.runtime.loader_workers)
    dtype = cfg.coding.payload_dtype
    launcher_plane = data_plane is not None  # torchrun/mpirun: the launcher ends every rank with rank 0
    host = address.rpartition(":")[0].strip("[]")

    def open_tcp_plane(reg: pb.RegisterReply):
        """transport: tcp -- models and payloads on our own sockets (a fresh key per registration)."""
        from dcoord.runtime.transport.tcp_dp import TcpDataPlane

        try:  # TLS exactly when the control plane has it (--tls-ca), with the same server name
            return TcpDataPlane(host, reg.data_port, reg.worker_id, reg.data_key, reg.job_id,
                                max_count=computer_size(workload), ssl_context=data_plane_client_context(security),
                                server_hostname=(security.server_name if security else None) or host)
        except (OSError, DcoordError) as exc:
            raise DcoordError(f"worker {reg.worker_id}: cannot open the data plane at {host}:{reg.data_port}: "
                              f"{exc}") from None

    if reg.data_port and not launcher_plane:
        data_plane = open_tcp_plane(reg)
    if launcher_plane and hasattr(data_plane, "start_models"):
        data_plane.start_models(computer_size(workload))  # rank 0 may send models down the launcher's plane
    print(f"worker {wid} of job {job_id} on {dev}", file=sys.stderr, flush=True)
    cache: dict[tuple[int, int], np.ndarray] = {}
    computed = 0
    try:
        while True:  # one pass per registration: a coordinator restarted from its checkpoint is rejoined
            told_to_stop, closed, computed = _serve(
                stub, reg, session, wid, job_id, cfg, computer, privacy, stragglers, dtype, data_plane, cache,
                computed)
            if told_to_stop:
                return computed
            lost = (f"worker {wid}: lost the coordinator at {address} ({closed}) after {computed} rounds "
                    "computed; the job did not tell this worker to stop")
            if launcher_plane or not rejoin:  # torchrun/mpirun stop every rank: no coordinator to wait for
                raise LostCoordinator(lost)
            log.warning("%s; re-registering for up to %g s (--connect-timeout)", lost, connect_timeout)
            if reg.data_port and data_plane is not None:
                data_plane.close(clean=False)
                data_plane = None
            try:
                reg = register(stub, pb.RegisterRequest(hostname=socket.gethostname()[:255], pid=os.getpid(),
                                                        requested_id=wid, device=str(dev)),
                               address, connect_timeout)
            except DcoordError as exc:
                raise LostCoordinator(f"{lost}; no coordinator took it back within {connect_timeout:g} s "
                                      f"(--connect-timeout): {exc}") from None
            if reg.job_id != job_id:
                raise LostCoordinator(f"{lost}; the coordinator at {address} now runs job {reg.job_id}, not "
                                      f"{job_id} (resume the run with --resume to continue it)")
            wid, session = reg.worker_id, reg.session
            if reg.data_port:
                data_plane = open_tcp_plane(reg)
            print(f"worker {wid} of job {job_id} rejoined the coordinator at {address}", file=sys.stderr,
                  flush=True)
    finally:
        if reg.data_port and data_plane is not None and not launcher_plane:
            data_plane.close(clean=True)
        channel.close()


def _serve(stub, reg: pb.RegisterReply, session: str, wid: int, job_id: str, cfg, computer, privacy, stragglers,
           dtype: str, data_plane, cache: dict, computed: int) -> tuple[bool, str | None, int]:
    """Serve one registration's Work stream until it ends: (told to stop?, why the stream closed, rounds)."""
    from dcoord.privacy.mechanisms import PrivacyError

    outbox: queue.Queue = queue.Queue()
    outbox.put(pb.WorkerMessage(hello=pb.Hello(job_id=job_id, worker_id=wid, session=session)))
    inbox = _Inbox()
    stop = threading.Event()

    def receive() -> None:
        try:
            for msg in stub.Work(iter(outbox.get, None)):
                inbox.put(msg)
        except grpc.RpcError as exc:
            inbox.close(f"stream ended: {exc.code().name}")
        else:
            inbox.close("stream closed")

    def heartbeat(last_round: list[int]) -> None:
        while not stop.wait(reg.heartbeat_interval_s):
            try:
                stub.Heartbeat(pb.HeartbeatRequest(job_id=job_id, worker_id=wid, last_round=last_round[0],
                                                   session=session), timeout=5)
            except grpc.RpcError:
                pass

    last = [-1]
    threading.Thread(target=receive, daemon=True).start()
    threading.Thread(target=heartbeat, args=(last,), daemon=True).start()
    try:
        while True:
            msg = inbox.latest()
            if msg is None or msg.HasField("shutdown"):
                return msg is not None, inbox.closed, computed
            a = msg.assignment
            try:
                for ms in a.models:
                    if ms.params_on_data_plane:
                        if not hasattr(data_plane, "model"):
                            raise DcoordError("the coordinator sent models on a data plane this worker does not have")
                        cache[(ms.model, ms.version)] = data_plane.model(ms.model, ms.version,
                                                                         cfg.runtime.round_timeout_s)
                    else:
                        cache[(ms.model, ms.version)] = from_proto(ms.params)
            except DataPlaneError:
                # the job may have ended while this straggler waited for a model: the coordinator closes its
                # data plane right after telling every worker to stop; that is a normal end, not a failure
                if inbox.wait_closed_or_shutdown(timeout=5.0):
                    last_msg = inbox.latest()  # a shutdown if one came (it wins over assignments), else None
                    return last_msg is not None and last_msg.HasField("shutdown"), inbox.closed, computed
                raise
            t0 = time.perf_counter()
            result = pb.Result(job_id=job_id, round=a.round, worker_id=wid,  # built in place: no payload copies
                               session=session)
            payloads = []
            try:
                if privacy is not None:
                    privacy.ledger.begin_round(a.round, session)
                for t in a.tasks:
                    load_flat_params(computer.model, cache[(t.model, t.model_version)])
                    payload, losses = computer.coded_device(t.job, list(t.parts), list(t.coeffs), dtype,
                                                            params=cache[(t.model, t.model_version)],
                                                            prev=cache.get((t.model, t.model_version - 1)))
                    result.tasks.add(job=t.job, slot=t.slot, model=t.model, model_version=t.model_version,
                                     losses=[pb.PartLoss(part=p, loss=v) for p, v in losses.items()])
                    payloads.append(payload)
            except PrivacyError as exc:  # trust: workers: never a second answer the coordinator could subtract
                log.warning("worker %d refuses round %d: %s", wid, a.round, exc)
                continue
            if privacy is not None:
                privacy.ledger.answered_round(a.round)
            # GPU: one pinned copy per result, into a buffer reused by the next result. Safe on every path:
            # pack_result copies the bytes into protobuf messages; send_payloads (tcp: sendall returns with
            # the bytes in the kernel; mpi/torch: wait_sent below) is done with the arrays before the next
            # compute writes the buffer again.
            payloads = computer.to_host(payloads, dtype)
            emulated = cfg.runtime.emulate_part_s * sum(len(t.parts) for t in a.tasks)
            emulated += cfg.runtime.emulate_job_s * sum(float(computer.fractions[list(t.parts)].sum()) for t in a.tasks)
            if emulated > 0:
                time.sleep(emulated)
            compute_s = time.perf_counter() - t0
            delay = float(stragglers.extra_delay(a.round, np.full(cfg.workers, compute_s))[wid])
            # an injected straggler delay (emulating a slow machine) still ends when the coordinator goes away
            # or says stop: a killed coordinator's workers must exit, not sleep out the delay first
            if delay > 0 and inbox.wait_closed_or_shutdown(timeout=delay):
                continue
            result.compute_s, result.injected_delay_s = compute_s, delay
            if data_plane is not None:  # the small Result goes first and travels while the payload bytes stream
                mark_payloads(result, payloads, data_plane)
                outbox.put(pb.WorkerMessage(result=result))
                send_payloads(result, payloads, data_plane)  # point-to-point, in order
            else:  # payloads inline, or over ~1 MB as chunks on the stream
                for m in pack_result(result, payloads, cfg.runtime.stream_chunk_bytes):
                    outbox.put(m)
            if data_plane is not None:
                data_plane.wait_sent()  # MPI moves data only while the sender calls into it
            last[0] = a.round
            computed += 1
            keep = {(t.model, t.model_version) for t in a.tasks}  # x_(t-1) for DIFF2 comes with each assignment
            for k in [k for k in cache if k not in keep]:
                del cache[k]
            if hasattr(data_plane, "keep_models"):
                data_plane.keep_models(keep)
    finally:
        stop.set()
        outbox.put(None)


class LostCoordinator(DcoordError):
    """The coordinator went away without telling this worker to stop (crash, kill, network)."""

    exit_code = 4
