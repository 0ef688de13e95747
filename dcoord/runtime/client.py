"""Client side of the control plane for tools (``dcoord status``): RPCs in, plain dicts out."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from dcoord.errors import DcoordError
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.security.auth import ClientSecurity, open_channel
from dcoord.wire import status_to_dict


def watch_status(address: str, watch: bool = False, timeout: float = 5.0,
                 security: ClientSecurity | None = None) -> Iterator[dict]:
    """One status snapshot (or, with ``watch``, one per closed round until the job ends) as dicts.

    ``security``: the job's token and TLS settings (runtime/security/auth.py); None: plaintext, no token."""
    channel = open_channel(address, security)
    stub = pb_grpc.CoordinatorStub(channel)
    try:
        replies = stub.WatchStatus(pb.StatusRequest()) if watch else [stub.GetStatus(pb.StatusRequest(),
                                                                                     timeout=timeout)]
        for st in replies:
            yield status_to_dict(st)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise DcoordError(f"{address} refused: {exc.details()}") from None
        raise DcoordError(f"no coordinator answering at {address}: {exc.code().name}") from None
    finally:
        channel.close()
