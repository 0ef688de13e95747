"""The gRPC face of the coordinator: registration, heartbeats, the work stream, status, health."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.chunking import ChunkAssembler
from dcoord.runtime.coordinator import Coordinator, WorkerConn

log = logging.getLogger("dcoord.service")

#: Large enough for the coded gradients of models of a few hundred MB.
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 1 << 30),
    ("grpc.max_receive_message_length", 1 << 30),
]


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, coord: Coordinator, matcher=None) -> None:
        self.coord = coord
        self.matcher = matcher  # data plane (torchrun/mpirun): pairs results with their payloads

    async def Register(self, request: pb.RegisterRequest, context) -> pb.RegisterReply:
        c = self.coord
        wid = c.free_worker_id(request.requested_id)
        if wid is None or c.state in ("done", "failed"):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"job {c.job_id} already has its {c.n} workers (state {c.state})")
        parts = sorted({p for t in c.scheme.tasks(0).get(wid, []) for p in t.parts}) if c.state != "done" else []
        log.info("registered worker %d (%s pid %d)", wid, request.hostname, request.pid)
        # reserve the id until the stream attaches, so two registrations never get the same id
        c.conns[wid] = WorkerConn(wid, asyncio.Queue(), hostname=request.hostname)
        return pb.RegisterReply(
            worker_id=wid, job_id=c.job_id, job_config_yaml=c.cfg.to_yaml(),
            data=pb.DataAssignment(workload=c.cfg.workload, seed=c.cfg.seed, parts=parts),
            heartbeat_interval_s=c.cfg.runtime.heartbeat_s,
        )

    async def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatReply:
        conn = self.coord.conns.get(request.worker_id)
        ok = request.job_id == self.coord.job_id and conn is not None and conn.alive
        if ok:
            conn.last_seen = time.monotonic()
        return pb.HeartbeatReply(ok=ok, current_round=max(self.coord.round, 0))

    async def Work(self, request_iterator, context):
        c = self.coord
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        hello = first.hello if first.HasField("hello") else None
        if hello is None or hello.job_id != c.job_id or hello.worker_id not in c.conns:
            c.reject("unknown-worker", "work stream without a valid hello")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "register first and open the stream with hello(job_id, worker_id)")
        conn = c.conns[hello.worker_id]
        conn.alive = True
        conn.last_seen = time.monotonic()
        c.attach(conn)

        # chunked payloads: at most 64 full-size float64 payloads buffered per stream
        chunks = ChunkAssembler(max_bytes=64 * 8 * max(c.num_params, 1))

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    conn.last_seen = time.monotonic()
                    c.bytes_in += msg.ByteSize()
                    if msg.HasField("chunk"):
                        chunks.add(msg.chunk)
                        continue
                    if not msg.HasField("result"):
                        continue
                    if msg.result.payload_chunked and not chunks.attach(msg.result):
                        c.reject("oversized", f"worker {conn.worker_id} streamed more payload bytes than allowed")
                        continue
                    if not msg.result.payload_on_data_plane:
                        c.results.put_nowait((msg.result, conn))
                    elif self.matcher is not None:
                        self.matcher.on_result(msg.result, conn)
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
                c.bytes_out += msg.ByteSize()
                yield msg
                if msg.HasField("shutdown"):
                    break
        finally:
            reader.cancel()
            c.detach(conn)

    async def GetStatus(self, request, context) -> pb.StatusReply:
        return self.coord.status()

    async def WatchStatus(self, request, context):
        c = self.coord
        yield c.status()
        while c.state not in ("done", "failed"):
            await c.round_closed.wait()
            yield c.status()


async def start_server(coord: Coordinator, listen: str = "127.0.0.1:0",
                       matcher=None) -> tuple[grpc.aio.Server, int]:
    """Start the coordinator's gRPC server (with the standard health service); returns it and its port.

    ``matcher`` (a transport.PayloadMatcher) is given under torchrun/mpirun, where payloads come over the
    data plane and results over gRPC."""
    server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorService(coord, matcher), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("dcoord.v1.Coordinator", health_pb2.HealthCheckResponse.SERVING)
    return server, port
