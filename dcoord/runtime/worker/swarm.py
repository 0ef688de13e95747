"""Many cheap workers in one process, over the real protocol: to size a coordinator, and to test one at scale.

Why: a coordinator's own cost per round (streams, validation, decoding, liveness) only shows with hundreds
of workers, and hundreds of real worker processes do not fit one machine. Each emulated worker here does
what a real one does on the control plane: Register with the token (retrying with backoff, as
``ControlLink.register``), open its Work stream with its hello, answer every Assignment with a Result that
carries the true coded message of its tasks, and heartbeat the way the coordinator asks (on the stream, or
the Heartbeat RPC for the old protocol). The only thing not real is the gradient: part ``p``'s gradient is
a fixed pseudo-random vector, so the coordinator decodes real coded messages (its residual check runs)
without any model being computed here. Used by bench/control_scale.py and tests/test_scale.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.security.auth import TOKEN_HEADER
from dcoord.wire import GRPC_OPTIONS, fill_proto, heartbeat_request, stream_heartbeat

RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass
class SwarmStats:
    """What the swarm saw: when each worker registered, refusals by status, results and heartbeats sent."""

    registered_at: dict[int, float] = field(default_factory=dict)  # worker id -> seconds after start()
    refusals: Counter = field(default_factory=Counter)  # Register answers that were not OK, by status (and rate)
    results: int = 0
    heartbeats: int = 0
    shutdowns: int = 0


class Swarm:
    """``n`` emulated workers sharing ``channels`` gRPC connections to the coordinator at ``address``.

    ``credentials``: grpc.ChannelCredentials for TLS (None: plaintext); ``token``: the job's bearer token;
    ``heartbeat``: "auto" (as the coordinator says), "rpc" (the Heartbeat RPC every interval, as workers did
    before heartbeats rode the stream) or "stream"."""

    def __init__(self, address: str, n: int, token: str | None = None, channels: int = 8,
                 credentials: grpc.ChannelCredentials | None = None, heartbeat: str = "auto") -> None:
        self.address, self.n, self.heartbeat = address, n, heartbeat
        self.metadata = ((TOKEN_HEADER, f"Bearer {token}"),) if token else ()
        self.channels = [grpc.aio.secure_channel(address, credentials, options=GRPC_OPTIONS) if credentials
                         else grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
                         for _ in range(max(1, min(channels, n)))]
        self.stubs = [pb_grpc.CoordinatorStub(c) for c in self.channels]
        self.stats = SwarmStats()
        self.silenced: set[int] = set()   # worker ids that stopped sending anything (their stream stays open)
        self.ids: dict[int, int] = {}     # emulated worker index -> the id the coordinator gave it
        self._grads: dict[tuple[int, int], np.ndarray] = {}
        self._t0 = 0.0
        self._tasks: list[asyncio.Task] = []

    # -- what callers use -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker (on the running event loop); ``wait()`` until they all end."""
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.n)]

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def silence(self, worker_id: int) -> None:
        """The worker with this id stops sending anything (no results, no heartbeats), its stream open."""
        self.silenced.add(worker_id)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in self.channels:
            await c.close()

    # -- one worker -----------------------------------------------------------------------------------
    async def _register(self, stub) -> pb.RegisterReply:
        delay = 0.2
        while True:
            try:
                return await stub.Register(pb.RegisterRequest(hostname="swarm", pid=0, requested_id=-1,
                                                              device="cpu"), metadata=self.metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                rate = "too many registrations" in (exc.details() or "")
                self.stats.refusals[exc.code().name + (":register-rate" if rate else "")] += 1
                if exc.code() not in RETRY:
                    raise
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    def _grad(self, part: int, size: int) -> np.ndarray:
        g = self._grads.get((part, size))
        if g is None:
            g = self._grads[(part, size)] = np.random.default_rng(part).standard_normal(size).astype(np.float32)
        return g

    def _result(self, reg: pb.RegisterReply, a: pb.Assignment, sizes: dict[int, int]) -> pb.WorkerMessage:
        msg = pb.WorkerMessage()
        res = msg.result
        res.job_id, res.round, res.worker_id, res.session = reg.job_id, a.round, reg.worker_id, reg.session
        for t in a.tasks:
            size = sizes[t.model]
            payload = np.zeros(size, dtype=np.float32)
            for p, c in zip(t.parts, t.coeffs):
                payload += np.float32(c) * self._grad(p, size)
            tr = res.tasks.add(job=t.job, slot=t.slot, model=t.model, model_version=t.model_version)
            fill_proto(tr.payload, payload)
        return msg

    async def _worker(self, i: int) -> None:
        stub = self.stubs[i % len(self.stubs)]
        reg = await self._register(stub)
        wid = reg.worker_id
        self.ids[i] = wid
        self.stats.registered_at[wid] = time.monotonic() - self._t0
        out: asyncio.Queue = asyncio.Queue()
        out.put_nowait(pb.WorkerMessage(hello=pb.Hello(job_id=reg.job_id, worker_id=wid, session=reg.session)))
        last = {"sent": time.monotonic(), "round": -1}

        async def requests():
            while True:
                m = await out.get()
                if m is None:
                    return
                last["sent"] = time.monotonic()
                yield m

        on_stream = reg.heartbeat_on_stream if self.heartbeat == "auto" else self.heartbeat == "stream"
        beat = asyncio.create_task(self._heartbeats(stub, reg, out, last, on_stream))
        sizes: dict[int, int] = {}
        call = stub.Work(requests(), metadata=self.metadata)
        try:
            async for msg in call:
                if msg.HasField("shutdown"):
                    self.stats.shutdowns += 1
                    break
                a = msg.assignment
                for m in a.models:
                    sizes[m.model] = int(np.prod(m.params.shape)) if m.params.shape else 0
                if wid in self.silenced:
                    continue
                last["round"] = a.round
                out.put_nowait(self._result(reg, a, sizes))
                self.stats.results += 1
        except grpc.aio.AioRpcError:
            pass
        finally:
            beat.cancel()
            out.put_nowait(None)
            with contextlib.suppress(BaseException):
                await beat
            call.cancel()

    async def _heartbeats(self, stub, reg: pb.RegisterReply, out: asyncio.Queue, last: dict, on_stream: bool) -> None:
        interval = reg.heartbeat_interval_s or 1.0
        while True:
            await asyncio.sleep(interval)
            if reg.worker_id in self.silenced:
                continue
            if not on_stream:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Heartbeat(heartbeat_request(reg.job_id, reg.worker_id, last["round"], reg.session),
                                         metadata=self.metadata, timeout=5)
                self.stats.heartbeats += 1
            elif time.monotonic() - last["sent"] >= interval:  # as real workers: only when idle that long
                out.put_nowait(stream_heartbeat(last["round"]))
                self.stats.heartbeats += 1
