"""Data planes by name: the config's ``transport`` values besides ``grpc``, and which launcher each serves.

``launch.py`` asks for the plane of its launcher (torchrun -> ``torch``, mpirun -> ``mpi``) and builds it
through here; the config's allowed ``transport`` values are ``grpc`` plus the registered names. A new data
plane is one module with a DataPlane subclass plus one ``register_data_plane`` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dcoord.errors import ConfigError, DcoordError
from dcoord.runtime.transport.base import DataPlane

log = logging.getLogger("dcoord.transport")


@dataclass(frozen=True)
class DataPlaneSpec:
    """``name``: the config's ``transport`` value; ``launcher``: whose ranks it connects (``torchrun`` or
    ``mpirun``); ``build(cfg, env)``: the plane for this process (also used for the start-up address
    exchange when payloads stay on gRPC)."""

    name: str
    launcher: str
    build: Callable[[Any, Any], DataPlane]
    description: str = ""


_PLANES: dict[str, DataPlaneSpec] = {}


def register_data_plane(spec: DataPlaneSpec, *, replace: bool = False) -> DataPlaneSpec:
    if spec.name == "grpc" or (spec.name in _PLANES and not replace):
        raise ConfigError(f"transport {spec.name!r} is already registered")
    _PLANES[spec.name] = spec
    return spec


def data_plane_names() -> tuple[str, ...]:
    """Registered data planes (the config also allows ``grpc``: payloads inside the gRPC messages)."""
    return tuple(_PLANES)


def plane_for_launcher(launcher: str) -> DataPlaneSpec:
    """The data plane that connects the ranks of ``launcher``."""
    for spec in _PLANES.values():
        if spec.launcher == launcher:
            return spec
    raise ConfigError(f"no data plane is registered for launcher {launcher!r}")


def _build_torch(cfg, env) -> DataPlane:
    import torch

    from dcoord.runtime.transport.torch_dp import TorchDataPlane

    use_cuda = cfg.transport == "torch" and cfg.device != "cpu" and torch.cuda.is_available()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DcoordError("device: cuda was asked for but no CUDA device is visible")
    if use_cuda and torch.cuda.device_count() < env.local_world_size:
        # NCCL puts one rank per GPU; with fewer GPUs than ranks on a node, payloads go over gloo
        # (workers still compute on their GPU)
        log.warning("%d GPU(s) for %d ranks on this node: NCCL needs one GPU per rank, payloads go over gloo",
                    torch.cuda.device_count(), env.local_world_size)
        use_cuda = False
    return TorchDataPlane(use_cuda=use_cuda)


def _build_mpi(cfg, env) -> DataPlane:
    try:
        from dcoord.runtime.transport.mpi_dp import MpiDataPlane
    except ImportError as exc:
        raise DcoordError(f"mpirun launch needs mpi4py (pip install 'dcoord[mpi]'): {exc}") from None
    return MpiDataPlane()


register_data_plane(DataPlaneSpec("torch", "torchrun", _build_torch,
                                  "torch.distributed point-to-point (gloo; nccl on GPUs)"))
def _build_tcp(cfg, env) -> DataPlane:
    raise ConfigError("transport: tcp is the standalone data plane (dcoord run, dcoord coordinator + dcoord "
                      "worker); under torchrun or mpirun use torch or mpi")


register_data_plane(DataPlaneSpec("mpi", "mpirun", _build_mpi, "MPI point-to-point (mpi4py)"))
#: the standalone path: workers build their end after registering (runtime.transport.tcp_dp)
register_data_plane(DataPlaneSpec("tcp", "standalone", _build_tcp,
                                  "authenticated raw-byte sockets beside gRPC (dcoord run / coordinator + worker)"))
