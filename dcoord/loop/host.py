"""Rank 0's coordinator for a user's own training loop: the real coordinator, on a thread of its own.

Why a thread and not a process: the user's script is the process torchrun started; rank 0 must also run
its share of the training, so the coordinator (the round state machine, its gRPC control plane on
loopback, metrics.jsonl, the summary) runs beside the user's loop, through the same ``host_job`` every
other launch path uses.

The coordinator never holds the user's model on this path (the collective plane keeps the model with the
workers), so it is given a stand-in workload: the model as one flat parameter vector (rank 0's starting
parameters: every rank starts from them, as DDP broadcasts rank 0's) and a "loss" that is the batch loss
the workers last reported (the coordinator has no copy of the user's loss function).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import torch

from dcoord.errors import DcoordError
from dcoord.runtime.tensors import flat_params

#: prefix of the stand-in workload's registered name
WORKLOAD_PREFIX = "dcoord-loop:"


class FlatModel(torch.nn.Module):
    """The user's parameters as one vector (the coordinator's copy: checkpoints, model.pt)."""

    def __init__(self, flat: torch.Tensor) -> None:
        super().__init__()
        self.flat = torch.nn.Parameter(flat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x))


def register_stand_in(name: str, model: torch.nn.Module, last_loss: list[float]) -> str:
    """Register the stand-in workload of ``model`` under a name for the job config; returns the name."""
    from dcoord.workloads import Workload, register_workload

    flat = torch.from_numpy(flat_params(model).copy())
    wl_name = f"{WORKLOAD_PREFIX}{name}"

    def factory(seed: int) -> Workload:
        # the "loss" is the latest batch loss the workers reported (the coordinator copies models, not this)
        return Workload(FlatModel(flat.clone()), torch.zeros(1, 1), torch.zeros(1),
                        lambda out, y: torch.tensor(last_loss[0]), name=wl_name)

    register_workload(wl_name, factory, replace=True)
    return wl_name


class CoordinatorThread:
    """``host_job`` on a daemon thread: ``address`` once it listens, ``join()`` for the summary."""

    def __init__(self, cfg: Any, out: Path | None, mode: str, token: str, listen: str, advertise: str,
                 progress: bool, last_loss: list[float]) -> None:
        from dcoord.runtime.coordinator.host import HostHooks, HostSpec
        from dcoord.runtime.security.auth import ServerSecurity

        self.spec = HostSpec(cfg, out, mode, listen=f"{listen}:0", security=ServerSecurity(token=token),
                             progress=progress, signals=False)
        self.advertise = advertise
        self.address: str | None = None
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self._listening = threading.Event()

        def started(coord: Any, port: int) -> None:
            self.address = f"{advertise}:{port}"
            self._listening.set()

        def on_round(record: dict, coord: Any) -> None:
            if record.get("loss") is not None:
                last_loss[0] = float(record["loss"])

        self.hooks = HostHooks(started=started, on_round=on_round)
        self.thread = threading.Thread(target=self._run, name="dcoord-coordinator", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from dcoord.runtime.coordinator.host import host_job
        from dcoord.runtime.store.rundir import NAMING

        NAMING.set("api")  # errors name dcoord.join's arguments (out=, overwrite=True), not CLI flags
        try:
            self.summary = asyncio.run(host_job(self.spec, self.hooks))
        except BaseException as exc:  # noqa: BLE001 - handed to the user's thread by join()
            self.error = exc
        finally:
            self._listening.set()

    def wait_listening(self, timeout: float) -> str:
        """The address workers dial; raises the coordinator's start-up error."""
        if not self._listening.wait(timeout):
            raise DcoordError(f"the coordinator did not start within {timeout:g} s")
        if self.address is None:
            raise self.error if isinstance(self.error, DcoordError) else DcoordError(
                f"the coordinator could not start: {self.error}")
        return self.address

    def join(self, timeout: float) -> dict:
        """The run's summary once the coordinator finished; its error if it failed."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise DcoordError(f"the coordinator did not finish within {timeout:g} s of the last round")
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary
