"""Data planes beside the gRPC control plane: payloads over a torch process group (gloo/nccl) or MPI.

``grpc`` (the default everywhere) needs nothing here: payloads travel inside the gRPC Result. Under
torchrun or mpirun, ``launch.py`` builds a :class:`DataPlane` (``torch_dp`` or ``mpi_dp``); workers send
each task's payload point-to-point to rank 0, numbered per worker, and the Result over gRPC only says
where the payloads are (``payload_on_data_plane``, ``data_seq``). The coordinator's :class:`PayloadMatcher`
pairs the two and hands the completed Result to the unchanged round state machine.
"""

from dcoord.runtime.transport.base import DataPlane, PayloadMatcher

__all__ = ["DataPlane", "PayloadMatcher"]
