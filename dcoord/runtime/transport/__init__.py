"""Data planes: how payloads (coded results up, models down) travel beside the gRPC control plane.

Every plane is registered in :mod:`~dcoord.runtime.transport.registry` (the config's ``transport``): grpc
(payloads inside the gRPC messages, grpc_plane.py), tcp (our own authenticated sockets, tcp_dp.py; the
default without a launcher), torch and mpi (the launcher's process group, torch_dp.py / mpi_dp.py; the
defaults under torchrun / mpirun). Workers send each task's payload point-to-point to the coordinator,
numbered per worker, and the Result over gRPC only says where the payloads are (``payload_on_data_plane``,
``data_seq``); the coordinator's :class:`PayloadMatcher` pairs the two and hands the completed Result to the
unchanged round state machine. Code outside this package asks the registry and never names a plane.
"""

from dcoord.runtime.transport.base import DataPlane, PayloadMatcher

__all__ = ["DataPlane", "PayloadMatcher"]
