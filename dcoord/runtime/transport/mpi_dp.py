"""Payloads over MPI (mpi4py): non-blocking Isend on workers, Irecv + Testsome on rank 0.

Rank 0 keeps one receive posted per worker rank (a header, then the payload it announces) and polls them
all with ``Testsome`` from one thread, so no worker can hold up another or the event loop. MPI moves
large messages only while the processes call into MPI, so the receiver polls tightly while a payload is
in flight and backs off to ~1 ms sleeps when idle; workers drive their sends with ``Testall``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

from dcoord.runtime.buffers import BufferPool
from dcoord.runtime.transport.base import TAG, DataPlane, DataPlaneError, Deliver, Fail
from dcoord.runtime.transport.models_down import HEADER_LEN, MODEL_TAG

log = logging.getLogger("dcoord.transport.mpi")


class MpiDataPlane(DataPlane):
    """The MPI data plane on a private duplicate of COMM_WORLD (user code can keep using COMM_WORLD)."""

    name = "mpi"

    def __init__(self) -> None:
        super().__init__()
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()  # collective, once at start-up
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.pool = BufferPool(per_shape=2 * self.world_size + 2)  # rank 0's payload buffers, reused
        self._pending: list = []
        self._bufs: list = []
        self.bytes_in = 0  # payload bytes received (rank 0)

    @property
    def models_down(self) -> bool:
        """Models go down this plane only when helper threads may call MPI too (MPI_THREAD_MULTIPLE)."""
        return self.MPI.Query_thread() == self.MPI.THREAD_MULTIPLE

    # -- start-up -----------------------------------------------------------------------------------
    def publish(self, value: str) -> None:
        self.comm.bcast(value, root=0)

    def fetch(self) -> str:
        return str(self.comm.bcast(None, root=0))

    # -- worker side --------------------------------------------------------------------------------
    def _post(self, header: np.ndarray, payload: np.ndarray | None) -> None:
        for arr in (header, payload):
            if arr is not None:
                self._pending.append(self.comm.Isend(arr, dest=0, tag=TAG))
                self._bufs.append(arr)  # the buffer must outlive the request

    def wait_sent(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending and not self.MPI.Request.Testall(self._pending):
            if deadline is not None and time.monotonic() > deadline:
                log.warning("data plane sends not complete after %.1f s", timeout)
                return False
            time.sleep(0)  # let the gRPC threads run; Testall itself drives MPI progress
        self._pending.clear()
        self._bufs.clear()
        return True

    # -- coordinator side ---------------------------------------------------------------------------
    def start_receiving(self, sources: Iterable[int], max_count: int, deliver: Deliver, fail: Fail) -> None:
        import threading

        self.max_count = max_count
        t = threading.Thread(target=self._recv_loop, args=(list(sources), deliver, fail),
                             name="dcoord-mpi-recv", daemon=True)
        t.start()
        self._threads.append(t)

    def _recv_loop(self, sources: list[int], deliver: Deliver, fail: Fail) -> None:
        MPI = self.MPI
        hdrs = [np.empty(4, dtype=np.int64) for _ in sources]
        bufs: list[np.ndarray | None] = [None] * len(sources)
        seqs = [0] * len(sources)
        reqs = [self.comm.Irecv(h, source=s, tag=TAG) for h, s in zip(hdrs, sources)]
        active = len(sources)
        idle = 0
        try:
            while active and not self._stop.is_set():
                done = MPI.Request.Testsome(reqs)
                if not done:
                    in_flight = any(b is not None for b in bufs)
                    idle = 0 if in_flight else min(idle + 1, 10)
                    time.sleep(0 if in_flight else 1e-6 * (2 ** idle))
                    continue
                idle = 0
                for i in done:
                    src = sources[i]
                    if bufs[i] is None:  # a header arrived
                        try:
                            kind, seq, count, dtype = self.check_header(src, hdrs[i])
                        except DataPlaneError as exc:
                            fail(src - 1, str(exc))
                            reqs[i] = MPI.REQUEST_NULL
                            active -= 1
                            continue
                        if dtype is None:  # END
                            reqs[i] = MPI.REQUEST_NULL
                            active -= 1
                            continue
                        bufs[i], seqs[i] = self.pool.take(count, dtype), seq
                        reqs[i] = self.comm.Irecv(bufs[i], source=src, tag=TAG)
                    else:  # its payload arrived
                        arr, bufs[i] = bufs[i], None
                        self.bytes_in += arr.nbytes
                        deliver(src - 1, seqs[i], arr)
                        reqs[i] = self.comm.Irecv(hdrs[i], source=src, tag=TAG)
        finally:
            for r in reqs:
                if r != MPI.REQUEST_NULL:
                    r.Cancel()
                    r.Wait()

    # -- models down (models_down.py): from helper threads, which drive MPI progress themselves -------
    @staticmethod
    def _complete(req, busy: bool) -> None:
        """Poll ``req`` to completion: tightly for a model's bytes (MPI moves them only while called), with
        sleeps backing off to ~1 ms while waiting for the next header (an idle reader costs no core)."""
        idle = 0
        while not req.Test():
            if not busy:
                idle = min(idle + 1, 10)
            time.sleep(1e-6 * (2 ** idle) if idle else 0)

    def _send_model_array(self, dst: int, arr: np.ndarray) -> None:
        self._complete(self.comm.Isend(arr, dest=dst, tag=MODEL_TAG), busy=True)

    def _recv_model_array(self, arr: np.ndarray) -> None:
        self._complete(self.comm.Irecv(arr, source=0, tag=MODEL_TAG), busy=arr.size > HEADER_LEN)

    # -- teardown -----------------------------------------------------------------------------------
    def close(self, clean: bool = True) -> None:
        if clean and not self.end_models(timeout=10.0):
            log.warning("model stream did not end; leaving the communicator as it is")
            clean = False
        if clean:
            self.comm.Free()

    def abort(self, code: int) -> None:
        """End every rank of the job now (after the caller printed why)."""
        self.MPI.COMM_WORLD.Abort(code)
