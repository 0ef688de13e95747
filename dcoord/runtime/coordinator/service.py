"""The gRPC face of the coordinator: registration, heartbeats, the work stream, status, health.

Heartbeats ride the Work stream (RegisterReply.heartbeat_on_stream; any message on the stream counts, so a
worker returning a result every round sends none); the Heartbeat RPC stays for workers that predate it.

Who may call is decided in runtime/security/auth.py (token interceptor, TLS); what a caller may do here is
bound to its session credential (runtime/coordinator/sessions.py). Nothing is queued for the round loop before its
session, job, state and round were checked, and every refusal is counted by ``coord.refuse``. The servicer
uses only the coordinator's public methods (register_worker, heard_from, attach/detach, admit_result,
submit_result, count_bytes_in/out, reject/refuse, status); tests/test_structure.py checks that.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.coordinator.coordinator import Coordinator, WorkerConn
from dcoord.runtime.coordinator.sessions import new_session, public_config_yaml, session_ok
from dcoord.runtime.security.auth import (
    Refusals,
    ServerSecurity,
    check_listen,
    credential_of,
    data_plane_server_context,
    peer_host,
    server_credentials,
    server_interceptors,
)
from dcoord.runtime.security.limits import RegisterLimits
from dcoord.wire import (
    coordinator_message,
    payload_bytes,
    replica_from_proto,
    result_from_proto,
    status_to_proto,
)
from dcoord.wire.chunking import ChunkAssembler
from dcoord.wire.messages import Shutdown

log = logging.getLogger("dcoord.service")

#: Large enough for the coded gradients of models of a few hundred MB (what workers accept).
MAX_HOSTNAME = 255
MAX_DEVICE = 64


def message_limit(coord: Coordinator) -> int:
    """Largest message the coordinator accepts: one result with every task's float64 payload inline, plus
    slack (chunked payloads come in chunks of runtime.stream_chunk_bytes)."""
    try:  # a fresh scheme: the coordinator's own must not be asked out of turn
        tasks = max((len(ts) for ts in coord.cfg.make_scheme().tasks(0).values()), default=1)
    except Exception:  # e.g. token mode needs bind_data first: be generous
        tasks = 8
    payload = 8 * max(coord.num_params, 1) * max(tasks, 1)
    return max(4 << 20, payload + (1 << 20), coord.cfg.runtime.stream_chunk_bytes + (1 << 20))


class _Refusals(Refusals):
    """Refusal counts kept on the coordinator, so status() reports them."""

    def __init__(self, coord: Coordinator) -> None:  # noqa: D107 - no counts of its own
        self.coord = coord

    @property
    def counts(self):
        return self.coord.refused

    def add(self, reason: str, detail: str = "") -> None:
        self.coord.refuse(reason, detail)


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, coord: Coordinator, matcher=None, security: ServerSecurity | None = None) -> None:
        self.coord = coord
        self.matcher = matcher  # data plane (torchrun/mpirun): pairs results with their payloads
        self.sec = security or ServerSecurity()
        self.refusals = _Refusals(coord)
        self.register_limit = RegisterLimits(self.sec.register_rate, self.sec.register_burst, coord.n)
        self._config_yaml: tuple[object, str] | None = None  # (config, its public YAML): encoded once
        self.streams = 0  # Work streams open now
        self.max_streams = 2 * coord.n + 8

    async def _refuse(self, context, code: grpc.StatusCode, reason: str, detail: str) -> None:
        self.refusals.add(reason, f"{context.peer()}: {detail}")
        await context.abort(code, detail)

    async def Register(self, request: pb.RegisterRequest, context) -> pb.RegisterReply:
        c = self.coord
        credential, host = credential_of(context), peer_host(context.peer())
        over = self.register_limit.check(credential, host)
        if over is not None:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "register-rate",
                               f"too many registrations from this {over} (more than "
                               f"{self.register_limit.job_burst} at once, then {self.sec.register_rate:g}/s); "
                               "retry later")
        if len(request.hostname) > MAX_HOSTNAME or len(request.device) > MAX_DEVICE:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad-register",
                               f"hostname must be <= {MAX_HOSTNAME} and device <= {MAX_DEVICE} characters")
        # the id is reserved until the stream attaches (at most reserve_s), so two registrations never share it;
        # when every id is held, one held claim_s without a stream goes to this caller (no squatting)
        session = new_session()
        got = c.register_worker(request.requested_id, request.hostname, session, self.sec.reserve_s,
                                self.sec.claim_s)
        if got is None:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "job-full",
                               f"job {c.job_id} already has its {c.n} workers (state {c.state}); an id held by a "
                               f"registration that never opened its stream may be taken after "
                               f"{self.sec.claim_s:g} s")
        wid, parts = got
        log.info("registered worker %d (%s pid %d)", wid, request.hostname, request.pid)
        reply = pb.RegisterReply(
            worker_id=wid, job_id=c.job_id, job_config_yaml=self._public_yaml(),
            data=pb.DataAssignment(workload=c.cfg.workload, seed=c.cfg.seed, parts=parts),
            heartbeat_interval_s=c.cfg.runtime.heartbeat_s, session=session, heartbeat_on_stream=True,
        )
        if c.data_server is not None:  # a fresh key per registration: an old connection of this id is void
            reply.data_port, reply.data_key = c.data_server.port, c.new_data_key(wid)
        return reply

    def _public_yaml(self) -> str:
        """The job config as workers get it, encoded once per config (not once per Register)."""
        cfg = self.coord.cfg
        if self._config_yaml is None or self._config_yaml[0] is not cfg:
            self._config_yaml = (cfg, public_config_yaml(cfg))
        return self._config_yaml[1]

    async def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatReply:
        """Workers that predate heartbeats on the Work stream still call this; it is served as before."""
        conn = self.coord.conns.get(request.worker_id)
        if request.job_id != self.coord.job_id or conn is None or not session_ok(conn.session, request.session):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "bad-session",
                               "heartbeat without this worker's session")
        return pb.HeartbeatReply(ok=self.coord.heard_from(conn), current_round=max(self.coord.round, 0))

    async def Work(self, request_iterator, context):
        if self.streams >= self.max_streams:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too-many-streams",
                               f"at most {self.max_streams} work streams at a time")
        self.streams += 1
        try:
            async for msg in self._work(request_iterator, context):
                yield msg
        finally:
            self.streams -= 1

    async def _work(self, request_iterator, context):
        c = self.coord
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), self.sec.hello_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, "no-hello",
                               f"no hello within {self.sec.hello_timeout_s:g} s")
        hello = first.hello if first.HasField("hello") else None
        conn = c.conns.get(hello.worker_id) if hello is not None else None
        if hello is None or hello.job_id != c.job_id or conn is None or not session_ok(conn.session, hello.session):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "bad-session",
                               "register first and open the stream with hello(job_id, worker_id, session)")
        if conn.attached:
            await self._refuse(context, grpc.StatusCode.ALREADY_EXISTS, "stream-in-use",
                               f"worker {conn.worker_id} already has its work stream open")
        c.attach(conn)

        # chunked payloads: at most 64 full-size float64 payloads buffered per stream
        chunks = ChunkAssembler(max_bytes=64 * 8 * max(c.num_params, 1))  # also a replica's state (< 4 copies)

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    c.heard_from(conn)
                    c.count_bytes_in(payload_bytes(msg))
                    if c.collective is not None and msg.WhichOneof("kind") in ("hello", "result"):
                        c.collective.control_bytes_in += msg.ByteSize()  # small there: nothing is held
                    if msg.HasField("chunk"):
                        if c.state == "running":  # nothing is buffered before the job runs
                            chunks.add(msg.chunk)
                        continue
                    if msg.HasField("replica"):
                        self._replica(msg.replica, conn, chunks)
                        continue
                    if not msg.HasField("result"):
                        continue
                    if not self._admit(msg.result, conn):
                        chunks.discard()
                        continue
                    if msg.result.payload_chunked and not chunks.attach(msg.result):
                        c.reject("oversized", f"worker {conn.worker_id} streamed more payload bytes than allowed")
                        continue
                    res = result_from_proto(msg.result)
                    if not res.payload_on_data_plane:
                        c.submit_result(res, conn)
                    elif self.matcher is not None:
                        self.matcher.on_result(res, conn)
                    else:
                        c.reject("no-data-plane", f"worker {conn.worker_id} sent payloads on a data plane "
                                 "this coordinator does not have")
            except (grpc.RpcError, asyncio.CancelledError):
                pass
            finally:
                c.detach(conn)
                conn.outbox.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                msg = await conn.outbox.get()
                if msg is None:
                    break
                out = coordinator_message(msg)
                c.count_bytes_out(payload_bytes(out))
                if c.collective is not None and out.WhichOneof("kind") != "replica":
                    c.collective.control_bytes_out += out.ByteSize()
                yield out
                if isinstance(msg, Shutdown):
                    break
        finally:
            reader.cancel()
            c.detach(conn)

    def _replica(self, st: pb.ReplicaState, conn: WorkerConn, chunks: ChunkAssembler) -> None:
        """transport: allreduce -- a replica's state the coordinator asked this worker for (else rejected)."""
        c = self.coord
        if not session_ok(conn.session, st.session):
            chunks.discard()
            c.reject("bad-session", f"replica state on worker {conn.worker_id}'s stream without its session")
            return
        if st.chunked and not chunks.attach_replica(st):
            c.reject("oversized", f"worker {conn.worker_id} streamed more replica bytes than allowed")
            return
        if c.collective is None or not c.collective.on_state(conn.worker_id, replica_from_proto(st),
                                                              payload_bytes(pb.WorkerMessage(replica=st))):
            c.reject("unasked-replica", f"worker {conn.worker_id} sent a replica state nobody asked for")

    async def Rendezvous(self, request: pb.StoreRequest, context) -> pb.StoreReply:
        """transport: allreduce -- the workers' group store; only this job's registered workers may use it."""
        from dcoord.runtime.transport.rendezvous import StoreRefused

        c = self.coord
        conn = c.conns.get(request.worker_id)
        if request.job_id != c.job_id or conn is None or not session_ok(conn.session, request.session):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "bad-session",
                               "rendezvous without a registered worker's session")
        if c.collective is None:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "no-group",
                               "this job has no all-reduce group (transport is not allreduce)")
        try:
            found, value, number = c.collective.store.handle(request.op, list(request.keys), request.value,
                                                             request.amount)
        except StoreRefused as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad-rendezvous", str(exc))
        c.heard_from(conn)
        return pb.StoreReply(found=found, value=value, number=number)

    def _admit(self, res: pb.Result, conn: WorkerConn) -> bool:
        """Cheap checks before a result may wait in the round loop's queue (which they keep bounded)."""
        if not session_ok(conn.session, res.session):
            self.coord.reject("bad-session", f"result on worker {conn.worker_id}'s stream without its session")
            return False
        return self.coord.admit_result(res.round, conn.worker_id, [t.digest for t in res.tasks])

    async def GetStatus(self, request, context) -> pb.StatusReply:
        return status_to_proto(self.coord.status())

    async def WatchStatus(self, request, context):
        c = self.coord
        yield status_to_proto(c.status())
        while not c.finished:
            await c.wait_round_closed()
            yield status_to_proto(c.status())


async def start_server(coord: Coordinator, listen: str = "127.0.0.1:0", matcher=None,
                       security: ServerSecurity | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the coordinator's gRPC server (with the standard health service); returns it and its port.

    ``matcher`` (a transport.PayloadMatcher) is given under torchrun/mpirun, where payloads come over the
    launcher's data plane and results over gRPC; without one the job's plane starts its own side here
    (``Coordinator.start_data_plane``). ``security`` (token, TLS, limits) is checked against ``listen``:
    a non-loopback address needs authentication or ``insecure``. Without it (library use, launchers that
    run inside their own trust domain) the server is plaintext with no token."""
    if security is not None:
        check_listen(listen, security)
    sec = security or ServerSecurity()
    creds = server_credentials(sec)  # checked before anything listens
    if matcher is None:  # no launcher wired one: the job's plane starts beside this server, under the same TLS
        matcher = coord.start_data_plane(listen.rpartition(":")[0].strip("[]") or "0.0.0.0",
                                         ssl_context=data_plane_server_context(sec))
    service = CoordinatorService(coord, matcher, sec)
    limit = sec.max_message_bytes or message_limit(coord)
    max_rpcs = sec.max_streams or 4 * coord.n + 32
    service.max_streams = min(service.max_streams, max_rpcs)
    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", limit)]
    server = grpc.aio.server(options=options, interceptors=server_interceptors(sec, service.refusals),
                             maximum_concurrent_rpcs=max_rpcs)
    pb_grpc.add_CoordinatorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(listen, creds) if creds is not None else server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        coord.close_data_plane()
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("dcoord.v1.Coordinator", health_pb2.HealthCheckResponse.SERVING)
    return server, port
