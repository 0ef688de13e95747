"""A worker's model replica on the collective plane (transport: allreduce), and its communication thread.

Why a thread of its own: a straggler must not hold the all-reduce. The coordinator closes a round without
it and sends every group member a Decode; this thread takes it at once, contributes the worker's share
(zeros when its message is not in the decode, for instance because it is still being computed), runs the
SUM all-reduce, and steps the replica, while the compute thread goes on with its own copy of the
parameters. Messages are handled strictly in stream order (group, state, decodes, state requests), so
every replica applies the same decoded gradients in the same order with the same optimizer: an
all-reduce hands every rank the same bits, and the digests the coordinator compares say so.
"""

from __future__ import annotations

import copy
import datetime
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dcoord.errors import DcoordError
from dcoord.runtime.optim import make_optimizer
from dcoord.runtime.replica_state import digest, load_state, state_arrays, to_message
from dcoord.runtime.tensors import flat_grads_to_model, flat_params
from dcoord.runtime.transport.rendezvous import ControlPlaneStore, StoreCall
from dcoord.wire.messages import Decode, Group, ReplicaState, SyncRequest

log = logging.getLogger("dcoord.worker")

#: the torch dtype the all-reduce sums in, by payload dtype (bfloat16 messages are summed in float32)
_SUM_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.float32}


def local_address(host: str, port: int) -> str:
    """The address of this host's interface that reaches ``host`` (gloo listens there: in a cluster the
    host name may resolve to an address the other workers cannot reach)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port or 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class Replica:
    """The replica, its held messages, and the thread that decodes into it.

    ``send_state(state)`` puts a ReplicaState on the work stream (a SyncRequest's answer); ``store_call``
    is the Rendezvous RPC; ``coordinator`` is (host, port) of the control plane (to pick the interface)."""

    def __init__(self, cfg: Any, workload: Any, models: int, store_call: StoreCall,
                 send_state: Callable[[ReplicaState], None], coordinator: tuple[str, int], timeout_s: float) -> None:
        self.cfg = cfg
        # one replica per model the scheme trains (sequential codes train several at once)
        self.models = [copy.deepcopy(workload.model).cpu() for _ in range(models)]
        self.optimizers = [make_optimizer(cfg, m, i) for i, m in enumerate(self.models)]
        self.sum_dtype = _SUM_DTYPES[cfg.coding.payload_dtype]
        self.num_params = sum(p.numel() for p in self.models[0].parameters())
        self.store_call, self.send_state = store_call, send_state
        self.coordinator, self.timeout_s = coordinator, timeout_s
        self.versions = [-1] * models  # no state yet
        self.epoch = -1
        self.group = None
        self.held: dict[tuple[int, int, int], np.ndarray] = {}  # (job, round, slot) -> message
        self.cv = threading.Condition()
        self.inbox: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.decodes = 0
        self.thread = threading.Thread(target=self._run, name="dcoord-allreduce", daemon=True)
        self.thread.start()

    # -- the compute thread's side ---------------------------------------------------------------------
    def submit(self, msg: Decode | Group | ReplicaState | SyncRequest) -> None:
        """A collective-plane message from the work stream, handled in order by the communication thread."""
        self.inbox.put(msg)

    def snapshot(self, model: int, version: int, timeout: float, with_digest: bool = False
                 ) -> tuple[np.ndarray, bytes] | None:
        """Model ``model``'s parameters at ``version`` (a copy) and, when asked, its replica's digest
        (parameters and optimizer state), waiting for the decodes before it; None when the replica is
        already past it (the assignment was superseded)."""
        self._check_model(model)
        with self.cv:
            ready = lambda: self.versions[model] >= version or self.error is not None  # noqa: E731
            if not self.cv.wait_for(ready, timeout):
                raise DcoordError(f"replica of model {model} stuck at version {self.versions[model]}; the round "
                                  f"needs {version}")
            if self.error is not None:
                raise DcoordError(self.error)
            if self.versions[model] > version:
                return None
            if not with_digest:
                return flat_params(self.models[model]), b""
            arrays = state_arrays(self.models[model], self.optimizers[model])
            return arrays["params"], digest(arrays)

    def hold(self, job: int, round: int, slot: int, message: np.ndarray) -> None:
        with self.cv:
            self.held[(job, round, slot)] = message

    def close(self) -> None:
        self.inbox.put(None)

    # -- the communication thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            msg = self.inbox.get()
            if msg is None:
                return
            try:
                if isinstance(msg, Group):
                    self._form(msg)
                elif isinstance(msg, ReplicaState):
                    self._load(msg)
                elif isinstance(msg, Decode):
                    self._decode(msg)
                elif isinstance(msg, SyncRequest):
                    self._sync(msg)
            except Exception as exc:  # noqa: BLE001 - reported to the compute thread, which ends the worker
                log.error("all-reduce plane: %s", exc)
                with self.cv:
                    self.error = f"all-reduce plane: {exc}"
                    self.cv.notify_all()
                return

    def _sync(self, msg: SyncRequest) -> None:
        """Answer the coordinator's request for this replica's state (a checkpoint, the end of the run)."""
        self._check_model(msg.model)
        with self.cv:
            arrays = state_arrays(self.models[msg.model], self.optimizers[msg.model])
            version = self.versions[msg.model]
        self.send_state(to_message(msg.model, version, arrays))

    def _form(self, g: Group) -> None:
        """Join (or re-form) the group: a fresh gloo process group on the coordinator's store."""
        # the Python store must outlive the group: torch keeps only its C++ half, whose methods are the
        # Python object's (once that is collected, every store call fails with "Not implemented")
        self._store = ControlPlaneStore(self.store_call, timeout=self.timeout_s)
        store = dist.PrefixStore(g.prefix, self._store)
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = datetime.timedelta(seconds=self.timeout_s)
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=local_address(*self.coordinator))]
        self.group = dist.ProcessGroupGloo(store, g.rank, g.size, opts)
        with self.cv:  # a new group starts from the states that follow it: nothing held before counts
            self.held.clear()
        self.epoch = g.epoch
        log.info("all-reduce group %d formed: rank %d of %d", g.epoch, g.rank, g.size)

    def _check_model(self, model: int) -> None:
        if not 0 <= model < len(self.models):
            raise DcoordError(f"the coordinator named model {model}; this job trains {len(self.models)}")

    def _load(self, st: ReplicaState) -> None:
        self._check_model(st.model)
        with self.cv:
            load_state(self.models[st.model], self.optimizers[st.model], st)
            self.versions[st.model] = st.version
            self.cv.notify_all()

    def _share(self, msgs: list[tuple[np.float64, np.ndarray]]) -> torch.Tensor:
        """Sum of coefficient x message in float64, rounded once to the sum dtype (zeros without messages).

        A lone message with coefficient 1 already in the sum dtype is the share itself, bit for bit (the
        float64 round trip would give the same bits): no copy through float64 (uncoded, gc-fr, gc-binary)."""
        if not msgs:
            return torch.zeros(self.num_params, dtype=self.sum_dtype)
        if len(msgs) == 1 and msgs[0][0] == 1.0 and torch.from_numpy(msgs[0][1][:0]).dtype == self.sum_dtype:
            return torch.from_numpy(np.ascontiguousarray(msgs[0][1]).copy())
        share = np.zeros(self.num_params, dtype=np.float64)
        for coeff, msg in msgs:
            share += coeff * msg.astype(np.float64, copy=False)
        return torch.from_numpy(share).to(self.sum_dtype)

    def _held_terms(self, d) -> list:
        """(coefficient, held message) for each term of decode ``d``; a term this worker does not hold is an
        error (the coordinator named a message it never received)."""
        with self.cv:
            msgs = []
            for rnd, slot, coeff in d.terms:
                msg = self.held.get((d.job, rnd, slot))
                if msg is None:
                    raise DcoordError(f"decode of job {d.job} names message (round {rnd}, slot {slot}), which "
                                      "this worker does not hold")
                msgs.append((np.float64(coeff), msg))
        return msgs

    def _decode(self, d: Decode) -> None:
        """This worker's share (sum of coeff * held message, in float64, then the sum dtype), one SUM
        all-reduce over the group, and the optimizer step on the replica."""
        if self.group is None or d.group_epoch != self.epoch:
            raise DcoordError(f"decode of job {d.job} for group {d.group_epoch}; this worker is in {self.epoch}")
        self._check_model(d.model)
        if d.version != self.versions[d.model]:
            raise DcoordError(f"decode of job {d.job} at version {d.version}; the replica of model {d.model} is at "
                              f"{self.versions[d.model]}")
        t0 = time.perf_counter()
        msgs = self._held_terms(d)
        total = self._share(msgs)
        t1 = time.perf_counter()
        self.group.allreduce([total]).wait()
        t2 = time.perf_counter()
        with self.cv:
            flat_grads_to_model(self.models[d.model], total.numpy())
            self.optimizers[d.model].step()
            self.versions[d.model] += 1
            self.decodes += 1
            self.timing = (t1 - t0, t2 - t1, time.perf_counter() - t2)  # share, all-reduce, step (seconds)
            log.debug("job %d: share %.3f s, all-reduce %.3f s, step %.3f s", d.job, *self.timing)
            for key in [k for k in self.held if k[0] <= d.job or k[0] < d.keep_from_job]:
                del self.held[key]
            self.cv.notify_all()

