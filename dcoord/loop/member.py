"""One rank of a user's training loop as a worker of the job: registration, rounds, the decoded gradient.

Why the user's model is the replica: on the collective plane every worker steps its own replica with the
same decoded gradient. Here that replica is the user's model and the step is the user's optimizer, so
anything the user does around ``optimizer.step()`` (schedulers, clipping, checkpoints) works unchanged.

Two threads, as on every collective-plane worker (runtime/worker/replica.py, reused here): the
communication thread takes the coordinator's Decode messages at once and all-reduces this rank's share
(zeros when its message is not in the decode, e.g. it is still computing: a straggler never holds the
others), keeping each decoded gradient until the user's thread asks for it; the user's thread computes the
coded parts, hands over its message, and puts the decoded gradient into ``.grad``.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import torch

from dcoord.errors import DcoordError, RunFailed
from dcoord.runtime.replica_state import digest, to_message
from dcoord.runtime.tensors import flat_params, from_proto
from dcoord.runtime.worker.link import ControlLink, WorkStream
from dcoord.runtime.worker.replica import _SUM_DTYPES, Replica
from dcoord.wire.chunking import replica_messages, result_messages
from dcoord.wire.messages import (
    Assignment,
    Decode,
    PartLoss,
    ReplicaState,
    Result,
    Shutdown,
    SyncRequest,
    TaskResult,
    TensorData,
)


class LoopReplica(Replica):
    """The communication thread of a rank whose replica is the user's model (stepped by the user's thread).

    Decoded gradients wait in ``ready`` (by model version) for the user's thread; ``applied`` is the version
    the user's optimizer has reached, and ``params`` the parameters as of it (for the coordinator's state
    requests and the digests)."""

    def __init__(self, cfg: Any, model: torch.nn.Module, store_call, send_state, coordinator: tuple[str, int],
                 timeout_s: float) -> None:
        # not Replica.__init__: there is no copy of the model and no optimizer of dcoord's here
        self.cfg = cfg
        self.models = [model]  # one model (plain codes); only its count and parameters are read here
        self.sum_dtype = _SUM_DTYPES[cfg.coding.payload_dtype]
        self.num_params = sum(p.numel() for p in model.parameters())
        self.store_call, self.send_state = store_call, send_state
        self.coordinator, self.timeout_s = coordinator, timeout_s
        self.versions = [-1]
        self.epoch = -1
        self.group = None
        self.held: dict[tuple[int, int, int], np.ndarray] = {}
        self.cv = threading.Condition()
        self.inbox: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.decodes = 0
        self.ready: dict[int, torch.Tensor] = {}  # model version -> decoded gradient
        self.start: tuple[int, np.ndarray] | None = None  # the starting state, until the user's thread loads it
        self.applied = -1
        self.params: np.ndarray | None = None
        self.thread = threading.Thread(target=self._run, name="dcoord-allreduce", daemon=True)
        self.thread.start()

    def _load(self, st: ReplicaState) -> None:
        self._check_model(st.model)
        flat = from_proto(st.tensors["params"], expect_size=self.num_params).copy()
        with self.cv:
            self.start = (st.version, flat)
            self.versions[st.model] = st.version
            self.cv.notify_all()

    def _decode(self, d: Decode) -> None:
        if self.group is None or d.group_epoch != self.epoch:
            raise DcoordError(f"decode of job {d.job} for group {d.group_epoch}; this worker is in {self.epoch}")
        self._check_model(d.model)
        if d.version != self.versions[d.model]:
            raise DcoordError(f"decode of job {d.job} at version {d.version}; this rank is at {self.versions[0]}")
        msgs = self._held_terms(d)
        total = self._share(msgs)
        self.group.allreduce([total]).wait()
        with self.cv:
            self.ready[d.version] = total
            self.versions[d.model] += 1
            self.decodes += 1
            for key in [k for k in self.held if k[0] <= d.job or k[0] < d.keep_from_job]:
                del self.held[key]
            self.cv.notify_all()

    def _sync(self, msg: SyncRequest) -> None:
        """The coordinator asks for the parameters at ``msg.version`` (a checkpoint, the end): they are there
        once the user's optimizer has applied every decode before it."""
        self._check_model(msg.model)
        with self.cv:
            if not self.cv.wait_for(lambda: self.applied >= msg.version or self.error is not None, self.timeout_s):
                raise DcoordError(f"the training loop did not reach step {msg.version} within {self.timeout_s:g} s "
                                  "(runtime.round_timeout_s)")
            arrays = {"params": self.params}
            version = self.applied
        self.send_state(to_message(msg.model, version, arrays))

    # -- the user's thread ----------------------------------------------------------------------------
    def wait(self, what, timeout: float, why: str):
        with self.cv:
            if not self.cv.wait_for(lambda: what() or self.error is not None, timeout):
                raise DcoordError(f"{why} within {timeout:g} s (runtime.round_timeout_s)")
            if self.error is not None:
                raise DcoordError(self.error)
            return what()

    def stepped(self, model: torch.nn.Module) -> None:
        """The user's optimizer applied the next decoded gradient."""
        params = flat_params(model)
        with self.cv:
            self.applied += 1
            self.params = params
            self.cv.notify_all()


class Member:
    """This rank's registration, work stream and communication thread; the rounds as the user's loop sees them."""

    def __init__(self, cfg: Any, address: str, security: Any, rank: int, model: torch.nn.Module) -> None:
        self.cfg, self.rank, self.model = cfg, rank, model
        self.timeout = cfg.runtime.round_timeout_s
        self.link = ControlLink(address, security)
        self.reg = self.link.register(rank, "cpu", connect_timeout=60.0)
        if self.reg.worker_id != rank:
            raise DcoordError(f"rank {rank} was given worker id {self.reg.worker_id}")
        host, _, port = address.rpartition(":")

        def send_state(state: ReplicaState) -> None:
            state.session = self.reg.session
            self.stream.send(replica_messages(state, cfg.runtime.stream_chunk_bytes))

        self.replica = LoopReplica(cfg, model, self.link.store_call(self.reg), send_state,
                                   (host.strip("[]"), int(port)), self.timeout)
        self.stream = WorkStream(self.link, self.reg, collective=self.replica.submit)
        self.stragglers = cfg.straggler_model()
        self.shutdown: Shutdown | None = None

    def start(self) -> int:
        """Load the starting parameters (rank 0's, or a checkpoint's) into the user's model; its version."""
        r = self.replica
        r.wait(lambda: r.start is not None, self.timeout, "no starting state from the coordinator")
        with r.cv:
            version, flat = r.start
            r.start = None
        from dcoord.runtime.tensors import load_flat_params

        load_flat_params(self.model, flat)
        with r.cv:
            r.applied, r.params = version, flat
        return version

    def assignment(self, rnd: int) -> Assignment | None:
        """This rank's assignment for round ``rnd``, or None when the round closed without it (or gave it no
        work): then only its decoded gradient is to be applied."""
        inbox = self.stream.inbox
        deadline = time.monotonic() + self.timeout
        with inbox.cv:
            while True:
                for m in inbox.items:
                    if isinstance(m, Shutdown):
                        self.shutdown = m
                if self.shutdown is not None and self.shutdown.reason.startswith("run failed"):
                    raise RunFailed(f"the job stopped at step {rnd}: {self.shutdown.reason}")
                rounds = [m for m in inbox.items if isinstance(m, Assignment)]
                later = [m for m in rounds if m.round > rnd]
                mine = [m for m in rounds if m.round == rnd]
                inbox.items[:] = later
                if self.shutdown is not None or later or rnd in self.replica.ready:
                    return None  # closed without this rank (its decode is on its way to the communication thread)
                if mine:
                    return mine[-1]
                if inbox.closed is not None:
                    raise RunFailed(f"lost the coordinator at step {rnd}: {inbox.closed}")
                if time.monotonic() > deadline:
                    raise DcoordError(f"no work for step {rnd} within {self.timeout:g} s")
                inbox.cv.wait(0.05)

    def deliver(self, a: Assignment, messages: list[np.ndarray], losses: list[dict[int, float]],
                compute_s: float, with_digest: bytes) -> None:
        """Hold this round's coded messages for their decode and report them (shapes only) to the coordinator."""
        delay = float(self.stragglers.extra_delay(a.round, np.full(self.cfg.workers, compute_s))[self.rank])
        if delay > 0:
            time.sleep(delay)  # an injected straggler: as if this machine were that much slower
        res = Result(job_id=self.reg.job_id, round=a.round, worker_id=self.rank, session=self.reg.session,
                     compute_s=compute_s, injected_delay_s=delay, payload_held=True)
        for t, msg, part_losses in zip(a.tasks, messages, losses):
            self.replica.hold(t.job, a.round, t.slot, msg)
            res.tasks.append(TaskResult(job=t.job, slot=t.slot, model=t.model, model_version=t.model_version,
                                        losses=[PartLoss(p, v) for p, v in part_losses.items()],
                                        payload=TensorData(tuple(msg.shape), str(msg.dtype), b"")))
        if with_digest:
            res.replica_digest, res.replica_version = with_digest, a.tasks[0].model_version
        self.stream.send(result_messages(res))
        self.stream.last_round = a.round

    def digest_due(self, version: int) -> bool:
        every = self.cfg.runtime.digest_every
        return bool(every) and version % every == 0

    def params_digest(self) -> bytes:
        return digest({"params": flat_params(self.model)})

    def decoded(self, version: int) -> torch.Tensor:
        """The decoded gradient of ``version`` (waits for its all-reduce)."""
        r = self.replica
        r.wait(lambda: version in r.ready, self.timeout, f"no decoded gradient for step {version}")
        with r.cv:
            return r.ready.pop(version)

    def finish(self) -> None:
        """Wait for the coordinator to end the job (it takes the final parameters first), then leave."""
        inbox = self.stream.inbox
        try:
            if self.shutdown is None and not inbox.wait_closed_or_shutdown(self.timeout):
                raise DcoordError(f"the coordinator did not end the job within {self.timeout:g} s of the last step")
            last = self.shutdown or next((m for m in inbox.items if isinstance(m, Shutdown)), None)
            if last is None:
                raise RunFailed(f"lost the coordinator after the last step: {inbox.closed}")
            if last.reason.startswith("run failed"):
                raise RunFailed(last.reason)
        finally:
            self.close()

    def close(self) -> None:
        self.stream.close()
        self.replica.close()
        self.link.close()
