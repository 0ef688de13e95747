"""The wire layer: generated protobuf types <-> the internal dataclasses the rest of dcoord works on.

Only this package, the gRPC servicer (runtime/service.py) and the clients (runtime/worker.py,
runtime/client.py) import the generated ``coordinator_pb2`` modules (tests/test_structure.py checks it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb

__all__ = ["StatusInfo", "status_from_proto", "status_to_dict", "status_to_proto"]


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
    elapsed_s: float = 0.0
    scheme: str = ""
    message: str = ""


def status_to_proto(st: StatusInfo) -> pb.StatusReply:
    return pb.StatusReply(**asdict(st))


def status_from_proto(reply: pb.StatusReply) -> StatusInfo:
    kw = {f: getattr(reply, f) for f in StatusInfo.__dataclass_fields__ if f != "rejected"}
    return StatusInfo(rejected=dict(reply.rejected), **kw)


def status_to_dict(reply: pb.StatusReply) -> dict:
    """Every field of a status reply as plain Python values (JSON-ready)."""
    return asdict(status_from_proto(reply))
