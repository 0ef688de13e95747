"""The wire layer: generated protobuf types <-> the internal dataclasses the rest of dcoord works on.

Only this package, the gRPC servicer (runtime/coordinator/service.py) and the clients (runtime/worker/link.py,
runtime/client.py) import the generated ``coordinator_pb2`` modules (tests/test_structure.py checks it). Both
sides convert here: the coordinator's (``coordinator_message``, ``result_from_proto``, ``status_to_proto``)
and the worker's (``register_request``, ``registration_from_proto``, ``work_item_from_proto``,
``dcoord.wire.chunking.result_messages``, ...).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from dcoord.dtypes import ITEMSIZE, PAYLOAD_DTYPES
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.wire.messages import (
    Assignment,
    Decode,
    Group,
    ModelState,
    PartLoss,
    Registration,
    ReplicaState,
    Result,
    Shutdown,
    SyncRequest,
    TaskResult,
    TaskSpec,
    TensorData,
)

__all__ = ["StatusInfo", "coordinator_message", "fill_proto", "heartbeat_request", "hello_message", "payload_bytes",
           "register_request", "registration_from_proto", "replica_from_proto", "replica_to_proto",
           "result_from_proto", "result_to_proto", "status_from_proto", "status_to_dict", "status_to_proto",
           "stream_heartbeat", "tensor_nbytes", "to_proto",
           "work_item_from_proto"]

_DTYPES = PAYLOAD_DTYPES  # bfloat16: ml_dtypes arrays (coding.payload_dtype)
_ITEMSIZE = ITEMSIZE

#: channel and server options of the control plane: payloads ride in messages of up to 1 GiB
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 1 << 30),
    ("grpc.max_receive_message_length", 1 << 30),
]


# -- tensors --------------------------------------------------------------------------------------------
def to_proto(array: np.ndarray) -> pb.Tensor:
    t = pb.Tensor()
    fill_proto(t, array)
    return t


def fill_proto(t: pb.Tensor, array: np.ndarray) -> None:
    """Write ``array`` into an existing wire tensor (e.g. ``result.tasks.add().payload``): one copy only."""
    from dcoord.errors import PayloadError

    arr = np.ascontiguousarray(array)
    name = str(arr.dtype)
    if name not in _DTYPES:
        raise PayloadError(f"unsupported dtype {name}")
    t.shape[:] = list(arr.shape)
    t.dtype = name
    t.data = arr.tobytes()


def _tensor_to_proto(t: TensorData) -> pb.Tensor:
    return pb.Tensor(shape=list(t.shape), dtype=t.dtype, data=t.data)


def _tensor_from_proto(t: pb.Tensor) -> TensorData:
    return TensorData(tuple(t.shape), t.dtype, t.data)


# -- byte counting (metrics) -----------------------------------------------------------------------------
def tensor_nbytes(t: pb.Tensor) -> int:
    """Bytes of a wire Tensor from its shape and dtype: O(1), where reading ``t.data`` or calling
    ``ByteSize()`` would copy or encode the payload (bench/metrics_overhead.py: as costly as serializing). Feeds the coordinator's
    payload byte counters (runtime/coordinator/metrics.py)."""
    return math.prod(t.shape) * _ITEMSIZE.get(t.dtype, 0)


def payload_bytes(msg: pb.WorkerMessage | pb.CoordinatorMessage) -> int:
    """Tensor bytes one work-stream message carries (WorkerMessage or CoordinatorMessage).

    A chunked result declares its tasks' shapes, so its chunks are counted through the result, not twice;
    tensors sent over a data plane (tcp, torchrun, MPI) carry only their shape here and count 0 (the tcp
    plane counts its own bytes, see ``data_plane_bytes``)."""
    kind = msg.WhichOneof("kind")
    if kind == "assignment":
        return sum(tensor_nbytes(m.params) for m in msg.assignment.models if not m.params_on_data_plane)
    if kind == "replica":
        return sum(tensor_nbytes(nt.tensor) for nt in msg.replica.tensors)
    if kind == "result" and not (msg.result.payload_on_data_plane or msg.result.payload_held):
        return sum(tensor_nbytes(t.payload) for t in msg.result.tasks)
    return 0


# -- coordinator -> worker ------------------------------------------------------------------------------
def coordinator_message(msg: Assignment | Shutdown | Decode | Group | SyncRequest | ReplicaState
                        ) -> pb.CoordinatorMessage:
    """The stream message for an assignment, a shutdown, or the collective plane's messages."""
    if isinstance(msg, Shutdown):
        return pb.CoordinatorMessage(shutdown=pb.Shutdown(reason=msg.reason))
    if isinstance(msg, Decode):
        return pb.CoordinatorMessage(decode=pb.Decode(
            job=msg.job, model=msg.model, version=msg.version, rounds=[t[0] for t in msg.terms],
            slots=[t[1] for t in msg.terms], coeffs=[t[2] for t in msg.terms], group_epoch=msg.group_epoch,
            keep_from_job=msg.keep_from_job))
    if isinstance(msg, Group):
        return pb.CoordinatorMessage(group=pb.Group(epoch=msg.epoch, rank=msg.rank, size=msg.size,
                                                    prefix=msg.prefix))
    if isinstance(msg, SyncRequest):
        return pb.CoordinatorMessage(sync=pb.SyncRequest(model=msg.model, version=msg.version))
    if isinstance(msg, ReplicaState):
        return pb.CoordinatorMessage(replica=replica_to_proto(msg))
    tasks = [pb.TaskSpec(job=t.job, slot=t.slot, parts=list(t.parts), coeffs=list(t.coeffs), kind=t.kind,
                         model=t.model, model_version=t.model_version) for t in msg.tasks]
    models = [pb.ModelState(model=m.model, version=m.version, params=_tensor_to_proto(m.params),
                            params_on_data_plane=m.on_data_plane) for m in msg.models]
    return pb.CoordinatorMessage(assignment=pb.Assignment(
        job_id=msg.job_id, round=msg.round, tasks=tasks, models=models, deadline_unix=msg.deadline_unix))


def work_item_from_proto(msg: pb.CoordinatorMessage) -> Assignment | Shutdown | Decode | Group | SyncRequest \
        | ReplicaState:
    """Worker side: a work-stream message as the internal Assignment or Shutdown (the inverse of
    ``coordinator_message``; model bytes are read once, validated later by ``runtime.tensors.from_proto``)."""
    kind = msg.WhichOneof("kind")
    if kind == "shutdown":
        return Shutdown(reason=msg.shutdown.reason)
    if kind == "decode":
        d = msg.decode
        return Decode(job=d.job, model=d.model, version=d.version,
                      terms=list(zip(d.rounds, d.slots, d.coeffs, strict=False)), group_epoch=d.group_epoch,
                      keep_from_job=d.keep_from_job)
    if kind == "group":
        g = msg.group
        return Group(epoch=g.epoch, rank=g.rank, size=g.size, prefix=g.prefix)
    if kind == "sync":
        return SyncRequest(model=msg.sync.model, version=msg.sync.version)
    if kind == "replica":
        return replica_from_proto(msg.replica)
    a = msg.assignment
    tasks = [TaskSpec(job=t.job, slot=t.slot, parts=list(t.parts), coeffs=list(t.coeffs), kind=t.kind,
                      model=t.model, model_version=t.model_version) for t in a.tasks]
    models = [ModelState(model=m.model, version=m.version, params=_tensor_from_proto(m.params),
                         on_data_plane=m.params_on_data_plane) for m in a.models]
    return Assignment(job_id=a.job_id, round=a.round, tasks=tasks, models=models, deadline_unix=a.deadline_unix)


def replica_to_proto(st: ReplicaState) -> pb.ReplicaState:
    return pb.ReplicaState(model=st.model, version=st.version, session=st.session,
                           tensors=[pb.NamedTensor(name=k, tensor=_tensor_to_proto(t)) for k, t in st.tensors.items()])


def replica_from_proto(st: pb.ReplicaState) -> ReplicaState:
    """The internal ReplicaState (tensor bytes shared; validate with ``runtime.tensors.from_proto``)."""
    return ReplicaState(model=st.model, version=st.version, session=st.session,
                        tensors={nt.name: _tensor_from_proto(nt.tensor) for nt in st.tensors})


# -- registration and liveness (worker side) -------------------------------------------------------------
def register_request(hostname: str, pid: int, requested_id: int, device: str) -> pb.RegisterRequest:
    """What a worker says about itself when it registers (``requested_id`` -1: any free id)."""
    return pb.RegisterRequest(hostname=hostname, pid=pid, requested_id=requested_id, device=device)


def registration_from_proto(reply: pb.RegisterReply) -> Registration:
    return Registration(worker_id=reply.worker_id, job_id=reply.job_id, job_config_yaml=reply.job_config_yaml,
                        session=reply.session, heartbeat_interval_s=reply.heartbeat_interval_s,
                        data_port=reply.data_port, data_key=reply.data_key,
                        heartbeat_on_stream=reply.heartbeat_on_stream)


def hello_message(job_id: str, worker_id: int, session: str) -> pb.WorkerMessage:
    """The first message of a work stream: which registration it belongs to."""
    return pb.WorkerMessage(hello=pb.Hello(job_id=job_id, worker_id=worker_id, session=session))


def stream_heartbeat(last_round: int) -> pb.WorkerMessage:
    """A heartbeat on the Work stream (coordinators that set RegisterReply.heartbeat_on_stream)."""
    return pb.WorkerMessage(heartbeat=pb.StreamHeartbeat(last_round=last_round))


def heartbeat_request(job_id: str, worker_id: int, last_round: int, session: str) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(job_id=job_id, worker_id=worker_id, last_round=last_round, session=session)


# -- worker -> coordinator ------------------------------------------------------------------------------
def result_from_proto(res: pb.Result) -> Result:
    """The internal Result (payload bytes shared, not copied)."""
    tasks = [TaskResult(job=tr.job, slot=tr.slot, model=tr.model, model_version=tr.model_version,
                        payload=_tensor_from_proto(tr.payload),
                        losses=[PartLoss(pl.part, pl.loss) for pl in tr.losses], digest=tr.digest)
             for tr in res.tasks]
    return Result(job_id=res.job_id, round=res.round, worker_id=res.worker_id, tasks=tasks,
                  compute_s=res.compute_s, injected_delay_s=res.injected_delay_s,
                  payload_on_data_plane=res.payload_on_data_plane, data_seq=res.data_seq, session=res.session,
                  payload_held=res.payload_held, replica_digest=res.replica_digest,
                  replica_version=res.replica_version)


def result_to_proto(res: Result) -> pb.Result:
    """The wire form of an internal Result (tests and tools)."""
    tasks = [pb.TaskResult(job=t.job, slot=t.slot, model=t.model, model_version=t.model_version,
                           payload=_tensor_to_proto(t.payload),
                           losses=[pb.PartLoss(part=pl.part, loss=pl.loss) for pl in t.losses], digest=t.digest)
             for t in res.tasks]
    return pb.Result(job_id=res.job_id, round=res.round, worker_id=res.worker_id, tasks=tasks,
                     compute_s=res.compute_s, injected_delay_s=res.injected_delay_s,
                     payload_on_data_plane=res.payload_on_data_plane, data_seq=res.data_seq,
                     session=res.session, payload_held=res.payload_held, replica_digest=res.replica_digest,
                     replica_version=res.replica_version)


@dataclass
class StatusInfo:
    """A snapshot of a job for ``dcoord status`` (GetStatus / WatchStatus)."""

    job_id: str = ""
    name: str = ""
    state: str = ""
    round: int = 0
    rounds_total: int = 0
    workers_alive: int = 0
    workers_total: int = 0
    last_loss: float = 0.0
    stragglers_seen: int = 0
    dropped_late_results: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # refused before reaching the job, by reason
    elapsed_s: float = 0.0
    scheme: str = ""
    message: str = ""
    offences: dict[str, int] = field(default_factory=dict)  # coding.byzantine: worker id -> offences
    excluded: list[int] = field(default_factory=list)  # coding.byzantine: workers excluded for lying


def status_to_proto(st: StatusInfo) -> pb.StatusReply:
    return pb.StatusReply(**asdict(st))


def status_from_proto(reply: pb.StatusReply) -> StatusInfo:
    kw = {f: getattr(reply, f) for f in StatusInfo.__dataclass_fields__
          if f not in ("rejected", "refused", "offences", "excluded")}
    return StatusInfo(rejected=dict(reply.rejected), refused=dict(reply.refused), offences=dict(reply.offences),
                      excluded=list(reply.excluded), **kw)


def status_to_dict(reply: pb.StatusReply) -> dict:
    """Every field of a status reply as plain Python values (JSON-ready)."""
    return asdict(status_from_proto(reply))
