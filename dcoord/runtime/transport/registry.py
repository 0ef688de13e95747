"""Data planes by name: every way payloads can travel, where each can run, and which one a job gets.

A data plane is a registered :class:`Plane`: its name (the config's ``transport``), where it can run (without
a launcher, under torchrun, under mpirun), whether it carries payloads beside the control plane at all
(``grpc`` does not: payloads ride inside the gRPC messages), the payload dtypes it carries, and hooks that
start its coordinator side and open its worker side. Nothing outside ``dcoord.runtime.transport`` names a
plane; callers ask here (``choose_plane``, ``get_plane``, ``plane_for_launcher``), so a new plane is one
module with a Plane subclass plus one ``register_plane`` call (tests/test_structure.py checks the first half).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from dcoord.errors import ConfigError, DcoordError
from dcoord.runtime.transport.base import DataPlane, Plane

log = logging.getLogger("dcoord.transport")

__all__ = ["Plane", "announce_plane", "choose_plane", "get_plane", "plane_for_launcher", "plane_names",
           "register_plane", "resolve_plane"]

#: where a job runs, as LaunchEnv.launcher says it, in the words the user knows
WHERE = {"none": "dcoord run / dcoord coordinator (no launcher)", "torchrun": "torchrun", "mpirun": "mpirun"}
_DEFAULT_FOR = {"none": "for dcoord run and dcoord coordinator"}

_PLANES: dict[str, Plane] = {}


def register_plane(plane: Plane, *, replace: bool = False) -> Plane:
    """Make ``plane`` a ``transport`` value (a plugin may call this from its ``plugins:`` module)."""
    if not plane.name or (plane.name in _PLANES and not replace):
        raise ConfigError(f"transport {plane.name!r} is already registered")
    _PLANES[plane.name] = plane
    return plane


def plane_names() -> tuple[str, ...]:
    """Every registered data plane, in registration order."""
    return tuple(_PLANES)


def get_plane(name: str) -> Plane:
    """The registered plane called ``name``; ConfigError naming the choices if there is none."""
    plane = _PLANES.get(name)
    if plane is None:
        raise ConfigError(f"transport: {name} is not a data plane; choose one of {', '.join(_PLANES)} "
                          "or leave it out (the fastest where the job runs)")
    return plane


def plane_for_launcher(launcher: str) -> Plane:
    """The plane that connects the ranks of ``launcher`` (its process group also carries the start-up
    address exchange, whichever plane carries the payloads)."""
    for plane in _PLANES.values():
        if plane.launcher == launcher:
            return plane
    raise ConfigError(f"no data plane is registered for launcher {launcher!r}")


def choose_plane(cfg: Any, launcher: str = "none") -> tuple[Plane, str]:
    """The job's data plane where it runs, after the decode-precision guard has passed the job on it
    (``_choose``; the guard: dcoord.coding.precision.check_decode_precision, a one-line ConfigError)."""
    plane, reason = _choose(cfg, launcher)
    from dcoord.coding.precision import check_decode_precision

    check_decode_precision(cfg, plane.sums_in_payload_dtype)
    return plane, reason


def _choose(cfg: Any, launcher: str = "none") -> tuple[Plane, str]:
    """The job's data plane where it runs (``launcher``: "none", "torchrun" or "mpirun") and why.

    The one place the choice is made: an explicit ``transport`` wins if it can run there and carries the
    job's payload dtype (else a one-line ConfigError naming the choices, raised before anything starts);
    otherwise the fastest registered plane (highest ``speed``) that can. Every launch path calls this
    (through ``resolve_plane``) before it makes a run directory."""
    where = WHERE.get(launcher, launcher)
    dtype = cfg.coding.payload_dtype
    here = [p for p in _PLANES.values() if launcher in p.runs_under and p.speed >= 0]
    if cfg.transport is not None:
        plane = get_plane(cfg.transport)
        if launcher not in plane.runs_under:
            raise ConfigError(f"transport: {plane.name} cannot run under {where} (use "
                              f"{', '.join(p.name for p in here)}, or leave it out)")
        problem = plane.check(cfg)
        if problem is not None:
            raise ConfigError(problem)
        if dtype not in plane.payload_dtypes:
            carriers = [p.name for p in here if dtype in p.payload_dtypes]
            raise ConfigError(f"coding.payload_dtype: {dtype} payloads need transport: {' or '.join(carriers)} "
                              f"(transport: {plane.name} carries {'/'.join(plane.payload_dtypes)} only); use "
                              f"payload_dtype float32 or transport {carriers[0] if carriers else 'left out'}")
        return plane, "set by transport: in the config"
    fits = [p for p in here if dtype in p.payload_dtypes]
    if not fits:
        raise ConfigError(f"coding.payload_dtype: no data plane under {where} carries {dtype} payloads")
    if getattr(cfg, "privacy", None) is not None and any(p.default_for_private for p in fits):
        private = [p for p in fits if p.default_for_private]
        if max(private, key=lambda p: p.speed) is not max(fits, key=lambda p: p.speed):
            best = max(private, key=lambda p: p.speed)
            return best, (f"default for private jobs {_DEFAULT_FOR.get(launcher, f'under {where}')}: a private "
                          "run resumed while its workers stay up is not yet reliable on the faster plane; "
                          "set transport: to change")
    best = max(fits, key=lambda p: p.speed)  # ties: the first registered
    fastest = max(here, key=lambda p: p.speed)
    default = _DEFAULT_FOR.get(launcher, f"under {where}")
    if best is not fastest:
        return best, (f"default {default} with {dtype} payloads, which {fastest.name} does not carry; "
                      "set transport: to change")
    return best, f"default {default}; set transport: to change"


def resolve_plane(cfg: Any, launcher: str = "none") -> tuple[Any, Plane, str]:
    """``choose_plane``, and the config with ``transport`` set to the chosen plane's name.

    The coordinator's config is what every worker receives at registration, so the worker opens the plane
    the coordinator chose without choosing again; a run directory's config.yaml records it."""
    plane, reason = choose_plane(cfg, launcher)
    if cfg.transport != plane.name:
        cfg = cfg.model_copy(update={"transport": plane.name})
    return cfg, plane, reason


def announce_plane(plane: Plane, reason: str, file=None) -> None:
    """The one line a job prints at start about its data plane (stderr)."""
    print(f"data plane: {plane.name} ({reason})", file=file or sys.stderr, flush=True)


# -- the built-in planes ------------------------------------------------------------------------------
class _LauncherPlane(Plane):
    """A launcher's own process group: payloads point-to-point to rank 0 (torch.distributed or MPI).

    Its coordinator and worker sides are this rank's end of the process group, built by ``build`` and
    wired by dcoord.launch; a standalone worker (``dcoord worker`` joining a launched job) has no end of it,
    so its payloads stay in the gRPC messages."""

    speed = 20

    def build(self, cfg: Any, env: Any) -> DataPlane:
        raise NotImplementedError


class TorchPlane(_LauncherPlane):
    name = "torch"
    launcher = "torchrun"
    runs_under = ("torchrun",)
    description = "torch.distributed point-to-point (gloo; nccl on GPUs)"

    def build(self, cfg: Any, env: Any) -> DataPlane:
        import torch

        from dcoord.runtime.transport.torch_dp import TorchDataPlane

        use_cuda = cfg.transport == self.name and cfg.device != "cpu" and torch.cuda.is_available()
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise DcoordError("device: cuda was asked for but no CUDA device is visible")
        if use_cuda and torch.cuda.device_count() < env.local_world_size:
            # NCCL puts one rank per GPU; with fewer GPUs than ranks on a node, payloads go over gloo
            # (workers still compute on their GPU)
            log.warning("%d GPU(s) for %d ranks on this node: NCCL needs one GPU per rank, payloads go over "
                        "gloo", torch.cuda.device_count(), env.local_world_size)
            use_cuda = False
        return TorchDataPlane(use_cuda=use_cuda)


class MpiPlane(_LauncherPlane):
    name = "mpi"
    launcher = "mpirun"
    runs_under = ("mpirun",)
    description = "MPI point-to-point (mpi4py)"

    def build(self, cfg: Any, env: Any) -> DataPlane:
        try:
            from dcoord.runtime.transport.mpi_dp import MpiDataPlane
        except ImportError as exc:
            raise DcoordError(f"mpirun launch needs mpi4py (pip install 'dcoord[mpi]'): {exc}") from None
        return MpiDataPlane()


def _register_builtins() -> None:
    from dcoord.runtime.transport.allreduce import AllreducePlane
    from dcoord.runtime.transport.grpc_plane import GrpcPlane
    from dcoord.runtime.transport.tcp_dp import TcpPlane

    for plane in (GrpcPlane(), TcpPlane(), TorchPlane(), MpiPlane(), AllreducePlane()):
        register_plane(plane)


_register_builtins()
