"""Payloads inside the gRPC control plane's messages: the plane that runs everywhere and carries every dtype.

Why registered like the others: choosing it, printing it and refusing it go through the same registry as
every other plane. It starts nothing: results carry their payloads inline, or as ~1 MB chunks on the work
stream (dcoord.wire.chunking), and assignments carry the models. It is the slowest plane (gRPC Python copies
a large message several times on each side), so it is the default only where no faster one can run, e.g.
for bfloat16 payloads, which no other plane carries.
"""

from __future__ import annotations

from dcoord.dtypes import PAYLOAD_DTYPES
from dcoord.runtime.transport.base import Plane


class GrpcPlane(Plane):
    name = "grpc"
    description = "payloads inside the gRPC control stream (runs everywhere; slowest for large models)"
    runs_under = ("none", "torchrun", "mpirun")
    carries_payloads = False
    payload_dtypes = PAYLOAD_DTYPES
    speed = 0
