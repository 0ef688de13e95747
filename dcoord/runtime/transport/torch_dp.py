"""Payloads over a torch.distributed process group: gloo on CPU, nccl for CUDA tensors (point-to-point only).

Rank 0 runs one receiver thread per worker rank, each posting ``recv`` from that source in order, so a
straggler's silence only parks its own thread; nothing in the round path is a collective. Under nccl
the process group is ``cpu:gloo,cuda:nccl`` and every data-plane tensor (headers included) lives on the
rank's CUDA device, as NCCL requires.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from dcoord.runtime.buffers import BufferPool
from dcoord.runtime.transport.base import TAG, DataPlane, Deliver, Fail
from dcoord.runtime.transport.models_down import MODEL_TAG

log = logging.getLogger("dcoord.transport.torch")

_KEY = "dcoord/coordinator-address"


class TorchDataPlane(DataPlane):
    """The torch.distributed data plane (torchrun's env:// rendezvous, or a process group the user made)."""

    name = "torch"

    def __init__(self, use_cuda: bool = False, timeout_s: float = 86400.0) -> None:
        super().__init__()
        self.owns = not dist.is_initialized()
        if self.owns:
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            # a long timeout: a receiver legitimately waits as long as its worker computes (token mode:
            # idle for many rounds); failures are caught by gRPC liveness and the launcher, not by this
            dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo",
                                    timeout=timedelta(seconds=timeout_s))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.pool = BufferPool(per_shape=2 * self.world_size + 2)  # rank 0's payload buffers
        self.backend = str(dist.get_backend())
        cuda = "nccl" in self.backend and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []
        self.bytes_in = 0  # payload bytes received (rank 0)

    @property
    def models_down(self) -> bool:
        """Models go down this plane on CPU gloo; under NCCL they stay in the gRPC Assignment (untested here)."""
        return self.device.type == "cpu"

    # -- start-up -----------------------------------------------------------------------------------
    def _store(self):
        try:
            return dist.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):
            return None

    def publish(self, value: str) -> None:
        store = self._store()
        if store is not None:
            store.set(_KEY, value)
        else:  # a process group without a store: one broadcast at start-up, before any round
            dist.broadcast_object_list([value], src=0)

    def fetch(self) -> str:
        store = self._store()
        if store is not None:
            return store.get(_KEY).decode()
        box = [None]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])

    # -- worker side --------------------------------------------------------------------------------
    def _post(self, header: np.ndarray, payload: np.ndarray | None) -> None:
        for arr in (header, payload):
            if arr is None:
                continue
            t = _send_tensor(arr)
            if self.device.type != "cpu":
                t = t.to(self.device)
            self._pending.append((dist.isend(t, dst=0, tag=TAG), t))

    def wait_sent(self, timeout: float | None = None) -> bool:
        # gloo marks a send complete only inside wait(); waits return as soon as rank 0's posted recv
        # took the data (rank 0 always has one posted per worker), so this does not wait on a round
        try:
            while self._pending:
                work, _ = self._pending[0]
                work.wait(timedelta(seconds=timeout)) if timeout is not None else work.wait()
                self._pending.pop(0)
            if self.device.type != "cpu":
                torch.cuda.current_stream().synchronize()  # NCCL: buffers may be freed only now
        except RuntimeError as exc:
            log.warning("data plane send did not complete: %s", exc)
            self._pending.clear()
            return False
        return True

    # -- coordinator side ---------------------------------------------------------------------------
    def start_receiving(self, sources: Iterable[int], max_count: int, deliver: Deliver, fail: Fail) -> None:
        self.max_count = max_count
        for src in sources:
            t = threading.Thread(target=self._recv_loop, args=(src, deliver, fail),
                                 name=f"dcoord-recv-{src}", daemon=True)
            t.start()
            self._threads.append(t)

    def _recv_loop(self, src: int, deliver: Deliver, fail: Fail) -> None:
        torch_dtypes = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
        try:
            while not self._stop.is_set():
                hdr = torch.empty(4, dtype=torch.int64, device=self.device)
                dist.recv(hdr, src=src, tag=TAG)
                kind, seq, count, dtype = self.check_header(src, hdr.cpu().numpy())
                if dtype is None:  # END
                    return
                if self.device.type == "cpu":  # into a reused host buffer (no page faults every round)
                    arr = self.pool.take(count, dtype)
                    dist.recv(torch.from_numpy(arr), src=src, tag=TAG)
                    self.bytes_in += arr.nbytes
                    deliver(src - 1, seq, arr)
                    del arr  # the pool may hand it out again once the round is done with it
                    continue
                buf = torch.empty(count, dtype=torch_dtypes[dtype], device=self.device)
                dist.recv(buf, src=src, tag=TAG)
                deliver(src - 1, seq, buf.cpu().numpy())
        except Exception as exc:  # a dead peer (connection closed) or a protocol error: this source only
            if not self._stop.is_set():
                fail(src - 1, f"data plane from rank {src} ended: {exc}")

    # -- models down (models_down.py): blocking point-to-point on MODEL_TAG, from helper threads only -----
    def _send_model_array(self, dst: int, arr: np.ndarray) -> None:
        dist.send(_send_tensor(arr), dst=dst, tag=MODEL_TAG)

    def _recv_model_array(self, arr: np.ndarray) -> None:
        dist.recv(torch.from_numpy(arr), src=0, tag=MODEL_TAG)

    # -- teardown -----------------------------------------------------------------------------------
    def close(self, clean: bool = True) -> None:
        if clean and not self.end_models(timeout=10.0):
            # a model send or receive is still posted (its peer is gone): tearing the group down could block
            log.warning("model stream did not end; leaving the process group without destroying it")
            clean = False
        if self.owns and clean and dist.is_initialized():
            t0 = time.monotonic()
            dist.destroy_process_group()
            log.debug("process group destroyed in %.2f s", time.monotonic() - t0)


def _send_tensor(arr: np.ndarray) -> torch.Tensor:
    """The array as a tensor for a send, which only reads it. A read-only array (a wire buffer, a loaded
    checkpoint) is wrapped without torch's warning that writing to it would be undefined; only then are
    the (process-wide, not thread-safe) warning filters touched."""
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)
