"""The control plane's messages as plain dataclasses: what the round logic and the data planes work on.

dcoord.wire converts them to and from the generated protobuf classes at the gRPC edge, so nothing in the
coordinator's round path depends on generated code. Field names follow protos/dcoord/v1/coordinator.proto.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TensorData:
    """A dense tensor as it travels: shape, dtype name ("float32"/"float64"/"bfloat16") and little-endian bytes.

    Validate with ``dcoord.runtime.tensors.from_proto`` before trusting it."""

    shape: tuple[int, ...] = ()
    dtype: str = ""
    data: bytes = b""

    @classmethod
    def of(cls, array: np.ndarray) -> TensorData:
        arr = np.ascontiguousarray(array)
        return cls(tuple(int(d) for d in arr.shape), str(arr.dtype), arr.tobytes())


@dataclass
class TaskSpec:
    job: int
    slot: int
    parts: list[int]
    coeffs: list[float]
    kind: str
    model: int
    model_version: int


@dataclass
class ModelState:
    model: int
    version: int
    params: TensorData
    on_data_plane: bool = False  # transport: tcp -- params has shape and dtype only; the bytes come separately


@dataclass
class Assignment:
    """One round's work for one worker: its tasks and every (model, version) they need."""

    job_id: str
    round: int
    tasks: list[TaskSpec]
    models: list[ModelState]
    deadline_unix: float = 0.0


@dataclass
class Shutdown:
    reason: str = ""


@dataclass
class PartLoss:
    part: int
    loss: float


@dataclass
class TaskResult:
    job: int = 0
    slot: int = 0
    model: int = 0
    model_version: int = 0
    payload: TensorData = field(default_factory=TensorData)
    losses: list[PartLoss] = field(default_factory=list)
    digest: bytes = b""  # coding.byzantine: sha256 of the payload bytes as sent (coding/byzantine.py)


@dataclass
class Result:
    """A worker's results for one round (payloads inline, or on the data plane from ``data_seq`` on)."""

    job_id: str = ""
    round: int = 0
    worker_id: int = 0
    tasks: list[TaskResult] = field(default_factory=list)
    compute_s: float = 0.0
    injected_delay_s: float = 0.0
    payload_on_data_plane: bool = False
    data_seq: int = 0
    session: str = ""  # the sender's session credential (RegisterReply.session), checked at the gRPC edge
    payload_held: bool = False  # transport: allreduce -- payloads stay with the worker (shape and dtype only)
    replica_digest: bytes = b""  # transport: allreduce -- sha256 of the replica before this round's step
    replica_version: int = -1


@dataclass
class Registration:
    """What a worker learns when it registers (RegisterReply): who it is in which job, the job's config, and
    where its data plane is (``data_port`` 0: payloads ride the control plane, or the launcher's plane)."""

    worker_id: int
    job_id: str
    job_config_yaml: str
    session: str
    heartbeat_interval_s: float = 0.0
    data_port: int = 0
    data_key: bytes = b""
    heartbeat_on_stream: bool = False  # the coordinator reads heartbeats on the Work stream (not the RPC)


# -- transport: allreduce (runtime/transport/allreduce.py) -------------------------------------------------
@dataclass
class Decode:
    """How to decode one job on the collective plane: this worker's held messages (round, slot) and their
    coefficients; every group member all-reduces its share (zeros without terms) and steps its replica."""

    job: int
    model: int
    version: int
    terms: list[tuple[int, int, float]] = field(default_factory=list)  # (round, slot, coefficient)
    group_epoch: int = 0
    keep_from_job: int = 0


@dataclass
class Group:
    """Form (or re-form) the workers' all-reduce group: this worker's rank in it and its store prefix."""

    epoch: int
    rank: int
    size: int
    prefix: str


@dataclass
class SyncRequest:
    """The coordinator asks for a replica's state (a checkpoint, the end of the run)."""

    model: int = 0
    version: int = 0


@dataclass
class ReplicaState:
    """A model replica at a version: flat parameters ("params") and the optimizer's tensors by name."""

    model: int
    version: int
    tensors: dict[str, TensorData] = field(default_factory=dict)
    session: str = ""
