from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("hostname", "pid", "requested_id", "device")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    pid: int
    requested_id: int
    device: str
    def __init__(self, hostname: _Optional[str] = ..., pid: _Optional[int] = ..., requested_id: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class DataAssignment(_message.Message):
    __slots__ = ("workload", "seed", "parts")
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    workload: str
    seed: int
    parts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, workload: _Optional[str] = ..., seed: _Optional[int] = ..., parts: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("worker_id", "job_id", "job_config_yaml", "data", "heartbeat_interval_s", "data_port", "data_key", "session", "heartbeat_on_stream")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ON_STREAM_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    job_id: str
    job_config_yaml: str
    data: DataAssignment
    heartbeat_interval_s: float
    data_port: int
    data_key: bytes
    session: str
    heartbeat_on_stream: bool
    def __init__(self, worker_id: _Optional[int] = ..., job_id: _Optional[str] = ..., job_config_yaml: _Optional[str] = ..., data: _Optional[_Union[DataAssignment, _Mapping]] = ..., heartbeat_interval_s: _Optional[float] = ..., data_port: _Optional[int] = ..., data_key: _Optional[bytes] = ..., session: _Optional[str] = ..., heartbeat_on_stream: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "last_round", "session")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: int
    last_round: int
    session: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[int] = ..., last_round: _Optional[int] = ..., session: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("ok", "current_round")
    OK_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    current_round: int
    def __init__(self, ok: _Optional[bool] = ..., current_round: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("model", "version", "params", "params_on_data_plane")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_ON_DATA_PLANE_FIELD_NUMBER: _ClassVar[int]
    model: int
    version: int
    params: Tensor
    params_on_data_plane: bool
    def __init__(self, model: _Optional[int] = ..., version: _Optional[int] = ..., params: _Optional[_Union[Tensor, _Mapping]] = ..., params_on_data_plane: _Optional[bool] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("job", "slot", "parts", "coeffs", "kind", "model", "model_version")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    COEFFS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    job: int
    slot: int
    parts: _containers.RepeatedScalarFieldContainer[int]
    coeffs: _containers.RepeatedScalarFieldContainer[float]
    kind: str
    model: int
    model_version: int
    def __init__(self, job: _Optional[int] = ..., slot: _Optional[int] = ..., parts: _Optional[_Iterable[int]] = ..., coeffs: _Optional[_Iterable[float]] = ..., kind: _Optional[str] = ..., model: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job_id", "round", "tasks", "models", "deadline_unix")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    deadline_unix: float
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ..., deadline_unix: _Optional[float] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("job_id", "worker_id", "session")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: int
    session: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[int] = ..., session: _Optional[str] = ...) -> None: ...

class PartLoss(_message.Message):
    __slots__ = ("part", "loss")
    PART_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    part: int
    loss: float
    def __init__(self, part: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("job", "slot", "model", "model_version", "payload", "losses", "digest")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    job: int
    slot: int
    model: int
    model_version: int
    payload: Tensor
    losses: _containers.RepeatedCompositeFieldContainer[PartLoss]
    digest: bytes
    def __init__(self, job: _Optional[int] = ..., slot: _Optional[int] = ..., model: _Optional[int] = ..., model_version: _Optional[int] = ..., payload: _Optional[_Union[Tensor, _Mapping]] = ..., losses: _Optional[_Iterable[_Union[PartLoss, _Mapping]]] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("job_id", "round", "worker_id", "tasks", "compute_s", "injected_delay_s", "payload_on_data_plane", "data_seq", "payload_chunked", "session", "payload_held", "replica_digest", "replica_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    INJECTED_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ON_DATA_PLANE_FIELD_NUMBER: _ClassVar[int]
    DATA_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_CHUNKED_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HELD_FIELD_NUMBER: _ClassVar[int]
    REPLICA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    worker_id: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskResult]
    compute_s: float
    injected_delay_s: float
    payload_on_data_plane: bool
    data_seq: int
    payload_chunked: bool
    session: str
    payload_held: bool
    replica_digest: bytes
    replica_version: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., worker_id: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., compute_s: _Optional[float] = ..., injected_delay_s: _Optional[float] = ..., payload_on_data_plane: _Optional[bool] = ..., data_seq: _Optional[int] = ..., payload_chunked: _Optional[bool] = ..., session: _Optional[str] = ..., payload_held: _Optional[bool] = ..., replica_digest: _Optional[bytes] = ..., replica_version: _Optional[int] = ...) -> None: ...

class Decode(_message.Message):
    __slots__ = ("job", "model", "version", "rounds", "slots", "coeffs", "group_epoch", "keep_from_job")
    JOB_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    COEFFS_FIELD_NUMBER: _ClassVar[int]
    GROUP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEEP_FROM_JOB_FIELD_NUMBER: _ClassVar[int]
    job: int
    model: int
    version: int
    rounds: _containers.RepeatedScalarFieldContainer[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    coeffs: _containers.RepeatedScalarFieldContainer[float]
    group_epoch: int
    keep_from_job: int
    def __init__(self, job: _Optional[int] = ..., model: _Optional[int] = ..., version: _Optional[int] = ..., rounds: _Optional[_Iterable[int]] = ..., slots: _Optional[_Iterable[int]] = ..., coeffs: _Optional[_Iterable[float]] = ..., group_epoch: _Optional[int] = ..., keep_from_job: _Optional[int] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("epoch", "rank", "size", "prefix")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    rank: int
    size: int
    prefix: str
    def __init__(self, epoch: _Optional[int] = ..., rank: _Optional[int] = ..., size: _Optional[int] = ..., prefix: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: int
    version: int
    def __init__(self, model: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ReplicaState(_message.Message):
    __slots__ = ("model", "version", "tensors", "chunked", "session")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CHUNKED_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    model: int
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    chunked: bool
    session: str
    def __init__(self, model: _Optional[int] = ..., version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., chunked: _Optional[bool] = ..., session: _Optional[str] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "session", "op", "keys", "value", "amount")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: int
    session: str
    op: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    value: bytes
    amount: int
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[int] = ..., session: _Optional[str] = ..., op: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., value: _Optional[bytes] = ..., amount: _Optional[int] = ...) -> None: ...

class StoreReply(_message.Message):
    __slots__ = ("found", "value", "number")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    number: int
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., number: _Optional[int] = ...) -> None: ...

class PayloadChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "result", "chunk", "replica", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    result: Result
    chunk: PayloadChunk
    replica: ReplicaState
    heartbeat: StreamHeartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., chunk: _Optional[_Union[PayloadChunk, _Mapping]] = ..., replica: _Optional[_Union[ReplicaState, _Mapping]] = ..., heartbeat: _Optional[_Union[StreamHeartbeat, _Mapping]] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("assignment", "shutdown", "decode", "group", "sync", "replica")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    shutdown: Shutdown
    decode: Decode
    group: Group
    sync: SyncRequest
    replica: ReplicaState
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., decode: _Optional[_Union[Decode, _Mapping]] = ..., group: _Optional[_Union[Group, _Mapping]] = ..., sync: _Optional[_Union[SyncRequest, _Mapping]] = ..., replica: _Optional[_Union[ReplicaState, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("job_id", "name", "state", "round", "rounds_total", "workers_alive", "workers_total", "last_loss", "stragglers_seen", "dropped_late_results", "rejected", "elapsed_s", "scheme", "message", "refused", "offences", "excluded")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OffencesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WORKERS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_LOSS_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_SEEN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_LATE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    OFFENCES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: str
    round: int
    rounds_total: int
    workers_alive: int
    workers_total: int
    last_loss: float
    stragglers_seen: int
    dropped_late_results: int
    rejected: _containers.ScalarMap[str, int]
    elapsed_s: float
    scheme: str
    message: str
    refused: _containers.ScalarMap[str, int]
    offences: _containers.ScalarMap[str, int]
    excluded: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., round: _Optional[int] = ..., rounds_total: _Optional[int] = ..., workers_alive: _Optional[int] = ..., workers_total: _Optional[int] = ..., last_loss: _Optional[float] = ..., stragglers_seen: _Optional[int] = ..., dropped_late_results: _Optional[int] = ..., rejected: _Optional[_Mapping[str, int]] = ..., elapsed_s: _Optional[float] = ..., scheme: _Optional[str] = ..., message: _Optional[str] = ..., refused: _Optional[_Mapping[str, int]] = ..., offences: _Optional[_Mapping[str, int]] = ..., excluded: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamHeartbeat(_message.Message):
    __slots__ = ("last_round",)
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    last_round: int
    def __init__(self, last_round: _Optional[int] = ...) -> None: ...
