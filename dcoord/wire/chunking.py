"""Large payloads on the gRPC work stream as ~1 MB chunks, and their reassembly on the coordinator.

Why: gRPC Python moves one 100 MB message at well under 1 GB/s on loopback (the whole message is
buffered, parsed and copied at once), but a stream of 1 MB messages several times faster. A worker sends
each large payload as PayloadChunk messages followed by the Result (payload bytes left out, shape and
dtype kept, ``payload_chunked`` set); the stream is ordered, so the coordinator concatenates the chunks
it saw since the previous Result and cuts them back into the tasks' payloads by their declared sizes.
Whatever does not add up is left for the normal validation to reject (wrong byte count).
"""

from __future__ import annotations

import numpy as np

from dcoord.dtypes import ITEMSIZE
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.wire import fill_proto, replica_to_proto, result_to_proto
from dcoord.wire.messages import ReplicaState, Result, TensorData

#: default chunk size (runtime.stream_chunk_bytes); payloads no larger than this travel inline
DEFAULT_CHUNK_BYTES = 1 << 20
_ITEMSIZE = ITEMSIZE


def pack_result(result: pb.Result, payloads: list[np.ndarray], chunk_bytes: int) -> list[pb.WorkerMessage]:
    """The stream messages for ``result`` whose i-th task's payload is ``payloads[i]``.

    Small results carry their payloads inline (one message); larger ones become chunks cut straight from
    the arrays (one copy each) followed by the result holding only shapes and dtypes.
    """
    if len(payloads) != len(result.tasks):
        raise ValueError(f"{len(payloads)} payloads for {len(result.tasks)} tasks")
    arrays = [np.ascontiguousarray(p) for p in payloads]
    if chunk_bytes <= 0 or sum(a.nbytes for a in arrays) <= chunk_bytes:
        for t, a in zip(result.tasks, arrays):
            fill_proto(t.payload, a)
        return [pb.WorkerMessage(result=result)]
    out = []
    for t, a in zip(result.tasks, arrays):
        fill_proto(t.payload, a[:0])  # shape and dtype, no bytes
        t.payload.shape[:] = list(a.shape)
        raw = memoryview(a).cast("B")
        for off in range(0, len(raw), chunk_bytes):
            m = pb.WorkerMessage()
            m.chunk.data = raw[off : off + chunk_bytes].tobytes()
            out.append(m)
    result.payload_chunked = True
    out.append(pb.WorkerMessage(result=result))
    return out


class ChunkAssembler:
    """Per-stream reassembly; bounded so a rogue stream cannot grow the coordinator's memory without end."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.overflow = False

    def add(self, chunk: pb.PayloadChunk) -> None:
        if self.size + len(chunk.data) > self.max_bytes:
            self.overflow = True  # keep counting nothing more; the next Result is rejected
            return
        self.parts.append(chunk.data)
        self.size += len(chunk.data)

    def discard(self) -> None:
        """Drop the chunks received since the last result (that result was refused)."""
        self.parts, self.size, self.overflow = [], 0, False

    def attach(self, result: pb.Result) -> bool:
        """Fill ``result``'s payload bytes from the chunks; False when they were more than allowed."""
        buf = b"".join(self.parts)
        ok = not self.overflow
        self.parts, self.size, self.overflow = [], 0, False
        if not ok:
            return False
        _fill(buf, [t.payload for t in result.tasks])
        return True

    def attach_replica(self, state: pb.ReplicaState) -> bool:
        """Fill a chunked replica state's tensors from the chunks; False when they were more than allowed."""
        buf = b"".join(self.parts)
        ok = not self.overflow
        self.parts, self.size, self.overflow = [], 0, False
        if ok:
            _fill(buf, [nt.tensor for nt in state.tensors])
        return ok


def _fill(buf: bytes, tensors: list) -> None:
    """Cut ``buf`` into the tensors by their declared shapes (extra bytes go to the last one, so the normal
    validation sees a wrong byte count)."""
    off = 0
    for t in tensors:
        n = int(np.prod(t.shape)) * _ITEMSIZE.get(t.dtype, 0) if len(t.shape) else _ITEMSIZE.get(t.dtype, 0)
        t.data = buf[off : off + n]
        off += n
    if off != len(buf) and tensors:
        tensors[-1].data += buf[off:]


def replica_messages(state: ReplicaState, chunk_bytes: int) -> list[pb.WorkerMessage]:
    """Worker side: a replica's state on the work stream, its tensors as chunks before it when large."""
    msg = replica_to_proto(state)
    if chunk_bytes <= 0 or sum(len(nt.tensor.data) for nt in msg.tensors) <= chunk_bytes:
        return [pb.WorkerMessage(replica=msg)]
    raw = b"".join(nt.tensor.data for nt in msg.tensors)
    for nt in msg.tensors:
        nt.tensor.data = b""
    msg.chunked = True
    out = [pb.WorkerMessage(chunk=pb.PayloadChunk(data=raw[o : o + chunk_bytes]))
           for o in range(0, len(raw), chunk_bytes)]
    return out + [pb.WorkerMessage(replica=msg)]


def result_messages(res: Result, payloads: list[np.ndarray] | None = None,
                    chunk_bytes: int = 0) -> list[pb.WorkerMessage]:
    """Worker side: the work-stream messages of a Result.

    With ``payloads`` (one array per task), each is copied once into the messages: inline, or as chunks of
    ``chunk_bytes`` before the Result when larger (dcoord.wire.chunking). Without, the Result goes as it is
    (payloads on a data plane: its tasks' payloads hold shape and dtype only)."""
    msg = result_to_proto(res)
    if payloads is None:
        return [pb.WorkerMessage(result=msg)]
    return pack_result(msg, payloads, chunk_bytes)


def mark_payloads(res: Result, payloads: list[np.ndarray], plane) -> None:
    """Worker side: mark the result as carried on the data plane (each task's shape and dtype, no bytes) and
    number it with the sequence its first payload will get, so the Result can go before the payloads."""
    for tr, arr in zip(res.tasks, payloads):
        tr.payload = TensorData(tuple(int(d) for d in arr.shape), str(arr.dtype), b"")
    res.payload_on_data_plane = True
    res.data_seq = plane.next_seq


def send_payloads(res: Result, payloads: list[np.ndarray], plane) -> None:
    """Worker side: send each task's payload array on the data plane (a transport.DataPlane) after
    ``mark_payloads(res, ...)``; the coordinator's PayloadMatcher pairs them again by (worker, data_seq),
    whichever half comes first. No copy of a payload into the Result."""
    for k, arr in enumerate(payloads):
        seq = plane.send(arr)
        if seq != res.data_seq + k:  # the numbering the Result announced
            raise RuntimeError(f"payload {k} went as data_seq {seq}, the result announced {res.data_seq + k}")
