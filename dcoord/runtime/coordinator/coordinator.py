"""The coordinator's round state machine: assign -> collect -> decode -> step -> record.

Transport-agnostic: workers are "connections" with an outbox; results arrive on one asyncio queue.
The gRPC servicer (service.py) feeds it. Nothing in the round path blocks on a particular worker:
the loop waits on the result queue with timeouts and closes the round as soon as the scheme allows.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from dcoord.coding.base import ResultRef, Scheme, Task
from dcoord.coding.combine import combine
from dcoord.coding.elastic import ElasticScheme, plan_members, replan
from dcoord.config import JobConfig
from dcoord.errors import ConfigError, DcoordError, RunFailed
from dcoord.runtime.buffers import BufferPool
from dcoord.runtime.coordinator.counters import RunCounters
from dcoord.runtime.coordinator.membership import Membership, WorkerConn, WorkerEvent
from dcoord.runtime.coordinator.view import CoordinatorView
from dcoord.runtime.optim import make_optimizer
from dcoord.runtime.store.rundir import RunDir
from dcoord.runtime.tensors import (
    GradVector,
    PayloadError,
    check_array,
    flat_grads_to_model,
    flat_params,
    from_proto,
)
from dcoord.wire import StatusInfo
from dcoord.wire.messages import Assignment, ModelState, Result, Shutdown, TaskSpec, TensorData
from dcoord.workloads import batch_indices, evaluate
from dcoord.workloads.data import load_checked

log = logging.getLogger("dcoord.coordinator")


class Coordinator:
    """Owns the models (one source of truth per model), the scheme and the round loop."""

    def __init__(self, cfg: JobConfig, out: RunDir | Path | str | None = None, job_id: str | None = None) -> None:
        self.cfg = cfg
        if cfg.coding.byzantine and cfg.transport is not None:
            from dcoord.runtime.transport.registry import get_plane

            if get_plane(cfg.transport).collective:  # before anything is made: nothing left behind
                raise ConfigError(f"coding.byzantine: not on transport {cfg.transport} yet (the payloads stay with "
                                  "the workers, where the coordinator cannot check them); use grpc or tcp")
        self.job_id = job_id or f"{cfg.name}-{uuid.uuid4().hex[:8]}"
        self.scheme: Scheme = cfg.make_scheme()
        self.n = cfg.workers
        self.byz = None  # coding.byzantine: digests checked, liars counted and excluded (coordinator/byzantine.py)
        self._robust_center: np.ndarray | None = None  # coding.aggregate: centered-clipping's last aggregate
        if cfg.coding.byzantine and cfg.coding.aggregate == "sum":
            from dcoord.runtime.coordinator.byzantine import ByzantineCheck

            self.byz = ByzantineCheck(self.scheme, cfg.coding.byzantine, cfg.coding.stragglers,
                                      cfg.coding.exclude_after, lambda e: self._log_event(e))
        self.workload = load_checked(cfg)
        self.models = [copy.deepcopy(self.workload.model) for _ in range(self.scheme.models)]
        self.optimizers = [make_optimizer(cfg, m, i) for i, m in enumerate(self.models)]
        self.steps = [0] * len(self.models)
        self.num_params = self.workload.num_params()
        self._grad_buf: np.ndarray | None = None  # the decoded gradient of plain runs, reused every round
        self._grad_vectors = [GradVector(m) for m in self.models]  # plain runs decode straight into p.grad
        # flat model versions (sent to workers, kept until their jobs decode): reused once no one holds them
        self.param_pool = BufferPool(per_shape=2 * self.scheme.models + 4)
        self.scheme.bind_data(  # token mode: shard sizes for grad F_i
            len(batch_indices(self.workload.num_samples, cfg.batch_size, 0, cfg.seed)))
        self.privacy = None
        if cfg.privacy is not None:  # DP-GD / DIFF2: decoded aggregates feed a private running estimate
            from dcoord.runtime.coordinator.privacy import CoordinatorPrivacy

            self.privacy = CoordinatorPrivacy(cfg, self.workload, self.scheme.num_parts())
        self.rundir = out if isinstance(out, RunDir) else RunDir(out, keep=cfg.runtime.keep_checkpoints)
        self.total_rounds = cfg.rounds + self.scheme.delay
        # round state
        self.round = -1
        self.state = "waiting-for-workers"
        self.message = ""
        self._members = Membership(
            # coding.byzantine: the code's 2a + s is shared with the liars; s is what stragglers may take
            self.n, cfg.runtime.heartbeat_s,
            tolerated=lambda: self.cfg.coding.stragglers if self.byz is not None else self.scheme.s,
            members=lambda: plan_members(self.scheme, self.n), round=lambda: self.round,
            running=lambda: self.state == "running", record=self._log_event, slow=self._known_slow)
        self._results: asyncio.Queue = asyncio.Queue()  # admit_result() bounds what is queued (results_limit)
        self.results_limit = 4 * self.n + 16
        self.round_tasks: dict[int, list[Task]] = {}
        self.job_params: dict[int, tuple[int, np.ndarray]] = {}  # job -> (model version, params)
        self.stored: dict[int, dict[ResultRef, np.ndarray]] = {}  # job -> delivered messages
        self.part_losses: dict[int, dict[int, float]] = {}
        self.arrived: set[int] = set()
        self._first_tasks: tuple[Scheme | None, dict[int, list[Task]]] = (None, {})  # round 0's plan, for Register
        self._plan_seq = 0  # bumped when a round's plan changes (_collect caches "can it finish" on it)
        # counters
        self._counts = RunCounters()  # counters.py: what metrics, status and the summary report
        self.bytes_round = 0
        self._round_observers: list = []  # f(record, coord) after each round (add_round_observer)
        self.cpu_s: Counter[str] = Counter()  # this round's coordinator CPU time: receive, decode, step, send
        self.started = time.monotonic()
        self._round_closed = asyncio.Event()
        self._registered = asyncio.Event()
        self.data_server = None  # the data plane's side that sends models (start_data_plane; dcoord.launch)
        # checkpoints: "collect" while a round waits for results (the scheme as it was when the round
        # started is kept), "closing" while a closed round is applied, "boundary" between rounds
        self.phase = "boundary"
        self.scheme_snapshot: dict | None = None
        self.resumed_elapsed = 0.0
        self._final_losses: list[float] | None = None  # evaluated once, after the last round
        # transport: allreduce -- the workers hold replicas and all-reduce the decode; this keeps the group
        self.collective = None
        if cfg.transport is not None:
            from dcoord.runtime.transport.registry import get_plane

            if get_plane(cfg.transport).collective:
                from dcoord.runtime.coordinator.collective import CollectiveRun

                self.collective = CollectiveRun(self)

    # -- the job's data plane (cfg.transport, a registered plane) ---------------------------------------
    def start_data_plane(self, host: str, ssl_context=None):
        """Start the coordinator's side of the job's data plane beside the control plane; returns the
        PayloadMatcher that pairs results with their payloads, or None when payloads ride the control plane.

        ``ssl_context`` (an ssl.SSLContext, server side): TLS on every data connection, as on the control
        plane. Peers refused there (TLS, key) are counted in ``refused``, like the control plane's."""
        from dcoord.runtime.transport.base import CoordinatorEnd
        from dcoord.runtime.transport.registry import resolve_plane

        # the launch paths chose already (resolve_plane); a coordinator made directly gets the same default
        self.cfg, plane, _ = resolve_plane(self.cfg, "none")
        loop = asyncio.get_running_loop()

        def fail(worker: int, msg: str) -> None:
            loop.call_soon_threadsafe(self.reject, "data-plane", msg)

        def refuse(reason: str) -> None:
            loop.call_soon_threadsafe(self.refuse, reason, "data-plane peer")

        side = plane.start_coordinator_side(CoordinatorEnd(
            job_id=self.job_id, host=host, port=self.cfg.runtime.data_port, max_count=4 * max(self.num_params, 1),
            max_workers=self.n, results=self.results, loop=loop, fail=fail, refuse=refuse, ssl_context=ssl_context))
        if side is None:
            return None
        matcher, self.data_server = side
        return matcher

    def new_data_key(self, worker: int) -> bytes:
        """A fresh data-plane key for this registration of ``worker`` (its older connections are void)."""
        return self.data_server.new_key(worker)

    def close_data_plane(self) -> None:
        if self.data_server is not None:
            self.data_server.close()

    # -- membership (membership.py) ------------------------------------------------------------------
    @property
    def conns(self) -> MappingProxyType:
        """The workers registered so far, by id (read-only)."""
        return MappingProxyType(self._members.conns)

    @property
    def lost_ids(self) -> set[int]:
        return set(self._members.lost_ids)

    def free_worker_id(self, requested: int = -1, claim_s: float = math.inf) -> int | None:
        return self._members.free_worker_id(requested, claim_s)

    def register_worker(self, requested: int, hostname: str, session: str, reserve_s: float,
                        claim_s: float = math.inf) -> tuple[int, list[int]] | None:
        """Give a registering worker an id (held ``reserve_s`` for its stream; when every id is held, one that
        waited ``claim_s`` without a stream is taken over) and the data parts of its current tasks; None when
        the job is full or over."""
        wid = self.free_worker_id(requested, claim_s)
        if wid is None or self.state in ("done", "failed"):
            return None
        # the parts of its current tasks (a resumed or running job is past round 0: never re-plan it); round 0's
        # plan is made once per scheme, not once per Register (O(n) each: O(n^2) for a job registering)
        if self.round < 0 and self.state != "done":
            if self._first_tasks[0] is not self.scheme:
                self._first_tasks = (self.scheme, self.scheme.tasks(0))
            tasks = self._first_tasks[1]
        else:
            tasks = self.round_tasks
        parts = sorted({p for t in tasks.get(wid, []) for p in t.parts})
        now = time.monotonic()
        self._members.reserve(WorkerConn(wid, asyncio.Queue(), hostname=hostname, session=session,
                                         reserved_until=now + reserve_s, reserved_at=now))
        return wid, parts

    def heard_from(self, conn: WorkerConn) -> bool:
        """A heartbeat or message from ``conn``; False once the coordinator has let it go."""
        return self._members.heard_from(conn)

    def attach(self, conn: WorkerConn) -> None:
        """A worker's stream is up: remember it and, mid-round, hand it the current round's tasks."""
        self._members.attach(conn)
        if self.alive_count() >= self.n:
            self._registered.set()
        pending = self.state == "running" and self.round >= 0 and conn.worker_id not in self.arrived
        pending = pending and (self.byz is None or conn.worker_id not in self.byz.excluded)
        if pending and conn.outbox.empty() and self.collective is None:
            conn.outbox.put_nowait(self._assignment(self.round, conn.worker_id))

    def detach(self, conn: WorkerConn) -> None:
        self._members.detach(conn)

    def _known_slow(self) -> set[int]:
        """Workers the config makes slow for the whole run (inject: fixed)."""
        inj = self.cfg.inject
        return set(inj.workers) if inj.model == "fixed" and inj.slowdown > 1 else set()

    def add_worker_observer(self, observe) -> None:
        """``observe(event: WorkerEvent)`` when a worker is lost or back (the progress bar prints it)."""
        self._members.observers.append(observe)

    def worker_events(self) -> list[WorkerEvent]:
        return list(self._members.events)

    def _log_event(self, record: dict) -> None:
        """A membership change, as a line in metrics.jsonl (it has an "event" key, not a "round")."""
        try:
            self.rundir.log_event(record)
        except (OSError, DcoordError) as exc:  # e.g. a full disk: the round path reports it, not this
            log.warning("could not log %s: %s", record.get("event"), exc)

    def alive_ids(self) -> frozenset[int]:
        """Workers whose stream is up and who were heard from recently (heartbeats or results); O(1)."""
        return self._members.alive_ids()

    def alive_count(self) -> int:
        return self._members.alive_count()

    # -- what the servicer and the data planes feed in -------------------------------------------------
    @property
    def results(self) -> asyncio.Queue:
        """The queue of (result, conn[, arrays]) the round loop reads: data planes put complete results
        here (transport.base.PayloadMatcher); the servicer goes through admit_result/submit_result."""
        return self._results

    def admit_result(self, round: int, worker: int, digests: list[bytes] | None = None) -> bool:
        """Cheap checks before a result may wait in the round loop's queue (which they keep bounded).

        ``digests`` (coding.byzantine): the result's payload digests; a late one is still checked against the
        value its round accepted."""
        if self.state in ("done", "failed"):
            return False  # a straggler's result after the last round: nothing to count
        if self.state != "running":
            self.reject("not-running", f"worker {worker} sent a result while the job is {self.state}")
        elif round < self.round:
            self._counts.dropped_late += 1
            if self.byz is not None and digests is not None and 0 <= worker < self.n:
                self.byz.late(round, worker, digests)
        elif round > self.round:
            self.reject("future-round", f"round {round} while at {self.round}")
        elif self._results.qsize() >= self.results_limit:
            self.reject("queue-full", f"worker {worker}: {self._results.qsize()} results already wait")
        else:
            return True
        return False

    def submit_result(self, res: Result, conn: WorkerConn | None, arrays: list[np.ndarray] | None = None) -> None:
        """Queue one admitted result (payloads inline, or ``arrays`` from a data plane) for the round loop."""
        self._results.put_nowait((res, conn) if arrays is None else (res, conn, arrays))

    def count_bytes_in(self, n: int) -> None:
        """Tensor bytes received on the gRPC work stream."""
        self._counts.bytes_in += n

    def count_bytes_out(self, n: int) -> None:
        """Tensor bytes sent on the gRPC work stream."""
        self._counts.bytes_out += n

    @property
    def bytes_in(self) -> int:
        return self._counts.bytes_in

    @property
    def bytes_out(self) -> int:
        return self._counts.bytes_out

    @property
    def rejected(self) -> Counter[str]:
        """Results rejected by the job, by reason (a copy)."""
        return Counter(self._counts.rejected)

    @property
    def refused(self) -> Counter[str]:
        """Peers refused before reaching the job, by reason (a copy)."""
        return Counter(self._counts.refused)

    def use_model_sender(self, sender) -> None:
        """Models go down a launcher's data plane (transport.models_down.ModelSender) instead of gRPC."""
        if sender is not None:
            self.data_server = sender

    def add_round_observer(self, observe) -> None:
        """``observe(record, coord)`` after each round's record is written (metrics.py)."""
        self._round_observers.append(observe)

    async def wait_round_closed(self) -> None:
        """Until the next round closes (or the run ends)."""
        await self._round_closed.wait()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    # -- the round path ----------------------------------------------------------------------------
    def _assignment(self, r: int, worker: int) -> Assignment:
        specs, needed = [], {}
        for t in self.round_tasks.get(worker, []):
            version, params = self.job_params[t.job]
            m = self.scheme.model_of(t.job)
            specs.append(TaskSpec(job=t.job, slot=t.slot, parts=list(t.parts), coeffs=list(t.coeffs),
                                  kind=t.kind, model=m, model_version=version))
            needed[(m, version)] = params
            if self.privacy is not None and self.privacy.needs_previous(t.job):
                needed[(m, version - 1)] = self.privacy.prev  # DIFF2 differences need x_(t-1) too
        if self.collective is not None:
            models = []  # every worker holds its replica at the version the tasks name
        elif self.data_server is not None and self.data_server.connected(worker):
            models = []  # the bytes go on the worker's data connection, ahead of this assignment
            for (m, v), p in needed.items():
                self.data_server.send_model(worker, m, v, p)
                models.append(ModelState(model=m, version=v, on_data_plane=True,
                                         params=TensorData(tuple(p.shape), str(p.dtype))))
        else:
            models = [ModelState(model=m, version=v, params=TensorData.of(p)) for (m, v), p in needed.items()]
        return Assignment(job_id=self.job_id, round=r, tasks=specs, models=models,
                          deadline_unix=time.time() + self.cfg.runtime.round_timeout_s)

    def _start_round(self, r: int) -> None:
        self.scheme_snapshot = self.scheme.state_dict()  # a checkpoint taken mid-round restores this
        self.phase = "collect"
        self.round = r
        self._plan_seq += 1
        self.arrived = set()
        self.compute_round: dict[int, float] = {}
        self.busy_round: dict[int, float] = {}  # compute plus injected delay: what a speed estimate sees
        self.bytes_round = 0
        self.cpu_s = Counter()
        self.round_tasks = self.scheme.tasks(r)
        excluded: set[int] = set()
        if self.byz is not None:
            self.byz.start(r)
            excluded = self.byz.excluded
        t_flat = time.thread_time()  # flattening the model versions to send counts as sending
        for tasks in self.round_tasks.values():
            for t in tasks:
                if t.job not in self.job_params:
                    m = self.scheme.model_of(t.job)
                    if self.collective is not None:
                        self.job_params[t.job] = (self.steps[m], None)  # the replicas hold the parameters
                        continue
                    buf = self.param_pool.take(self.num_params, np.float32)
                    self.job_params[t.job] = (self.steps[m], flat_params(self.models[m], out=buf))
        alive = self.alive_ids()
        for w in range(self.n):
            if not self.round_tasks.get(w):
                self.arrived.add(w)  # nothing to do this round counts as delivered
            elif w in alive and w not in excluded:
                self.conns[w].outbox.put_nowait(self._assignment(r, w))
        # timed once per round, not per worker: a thread CPU clock read costs tens of microseconds on
        # loaded or virtualised hosts, as much as the work it would time
        self.cpu_s["send"] += time.thread_time() - t_flat

    def reject(self, reason: str, detail: str = "") -> None:
        self._counts.reject(reason, detail)

    def refuse(self, reason: str, detail: str = "") -> None:
        """A peer refused before it reached the job (counted apart from rejected results)."""
        self._counts.refuse(reason, detail)

    def handle_result(self, res: Result, conn: WorkerConn | None, arrays: list[np.ndarray] | None = None) -> bool:
        """Validate one result message; store it and return True when it counts for the current round.

        ``arrays``: the task payloads when they came on a data plane (then ``res`` carries none). Its CPU time
        is counted as ``receive`` by the round loop, per batch of queued results."""
        return self._handle_result(res, conn, arrays)

    def _handle_result(self, res: Result, conn: WorkerConn | None, arrays: list[np.ndarray] | None) -> bool:
        if res.job_id != self.job_id:
            self.reject("wrong-job", f"job_id {res.job_id!r}")
            return False
        if not 0 <= res.worker_id < self.n:
            self.reject("unknown-worker", f"worker_id {res.worker_id}")
            return False
        if conn is not None and res.worker_id != conn.worker_id:
            self.reject("worker-id-mismatch", f"stream of worker {conn.worker_id} sent worker_id {res.worker_id}")
            return False
        if res.round < self.round:
            self._counts.dropped_late += 1
            return False
        if res.round > self.round:
            self.reject("future-round", f"round {res.round} while at {self.round}")
            return False
        if res.worker_id in self.arrived:
            self.reject("duplicate", f"worker {res.worker_id} round {res.round}")
            return False
        expected = self.round_tasks.get(res.worker_id, [])
        if len(res.tasks) != len(expected):
            self.reject("task-mismatch", f"{len(res.tasks)} task results, expected {len(expected)}")
            return False
        decoded = []
        for k, (tr, t) in enumerate(zip(res.tasks, expected)):
            version = self.job_params[t.job][0]
            if (tr.job, tr.slot, tr.model_version) != (t.job, t.slot, version):
                self.reject("task-mismatch", f"got (job, slot, version)={(tr.job, tr.slot, tr.model_version)}")
                return False
            if self.collective is not None:  # the payload stays with the worker: its shape must still fit
                size = math.prod(tr.payload.shape) if tr.payload.shape else 0
                if not res.payload_held or size != self.num_params or tr.payload.data:
                    self.reject("wrong-shape", f"worker {res.worker_id}: transport: allreduce results hold their "
                                f"payloads ({self.num_params} values) and send none")
                    return False
                decoded.append((t, tr, None))
                continue
            try:
                arr = (from_proto(tr.payload, expect_size=self.num_params) if arrays is None
                       else check_array(arrays[k], expect_size=self.num_params))
            except PayloadError as exc:
                reason = "wrong-shape" if "shape" in str(exc) or "bytes" in str(exc) else "non-finite"
                if "dtype" in str(exc):
                    reason = "bad-dtype"
                self.reject(reason, f"worker {res.worker_id}: {exc}")
                return False
            decoded.append((t, tr, arr.reshape(-1)))
        if self.byz is not None:
            why = self.byz.note(res.worker_id, [tr.digest for tr in res.tasks])
            if why is not None:
                self.reject(why, f"worker {res.worker_id} round {res.round}")
                return False
        for t, tr, arr in decoded:
            self.stored.setdefault(t.job, {})[ResultRef(self.round, res.worker_id, t.slot)] = arr
            self.bytes_round += arr.nbytes if arr is not None else 0
            losses = self.part_losses.setdefault(t.job, {})
            for pl in tr.losses:
                if math.isfinite(pl.loss):
                    losses.setdefault(pl.part, pl.loss)
        self.arrived.add(res.worker_id)
        self.compute_round[res.worker_id] = res.compute_s
        self.busy_round[res.worker_id] = res.compute_s + res.injected_delay_s
        if self.collective is not None:
            model = res.tasks[0].model if res.tasks else 0
            self.collective.note_digest(res.worker_id, model, res.replica_version, res.replica_digest)
        return True

    async def _collect(self, r: int) -> frozenset[int]:
        """Wait for results until the scheme may close the round; never waits on one worker in particular."""
        rt = self.cfg.runtime
        start = time.monotonic()
        first: float | None = None
        fallback = False  # sequential codes: straggler set did not conform -> wait for all
        starving_since: float | None = None
        # coding.close = earliest: sequential codes too close at the first arrival the scheme accepts (the late
        # set fits the (B, W, lambda) model and the due job decodes), like the plain codes
        use_rule = self.scheme.uses_straggler_rule() and self.cfg.coding.close == "straggler-rule"
        mu = self.cfg.coding.mu
        checked = 0.0
        possible_key, possible, can_finish = None, frozenset(), False
        while True:
            now = time.monotonic()
            if now - checked > 0.25:  # silent workers are declared lost (and said so) while the round waits
                self._members.check()
                checked = now
                if self.collective is not None:
                    self.collective.check_members(self.alive_ids())
            arrived = self.arrived  # not copied per result: the schemes only read it
            if self.byz is not None:  # a group's value is accepted once a + 1 digests agree
                ok = self.byz.check(self.byz.agreement())
            elif len(arrived) == self.n:
                return frozenset(arrived)
            else:
                ok = self.scheme.accepts(r, arrived)
            if not use_rule:
                if ok:
                    return frozenset(arrived)
            elif first is not None and now >= start + (1 + mu) * (first - start):
                if not fallback and not ok and self.cfg.coding.wait == "all":
                    fallback = True
                    self._counts.wait_all_fallbacks += 1
                if ok and not fallback:
                    return frozenset(arrived)
            # can the workers still alive finish this round? (asked again only when liveness, the plan or
            # the fallback changed, or a worker outside the last answer delivered: O(n) per change, not per result)
            key = (self._members.version, self._plan_seq, fallback)
            if key != possible_key:
                possible = arrived | self.alive_ids()
                can_finish = len(possible) == self.n if fallback else self.scheme.accepts(r, possible)
                possible_key = key
            if not can_finish and self._reroute(r):
                continue
            if not can_finish:
                starving_since = starving_since or now
                if now - starving_since > rt.worker_wait_s and rt.elastic and self._shrink(r):
                    start, first, starving_since = time.monotonic(), None, None
                    continue
                if now - starving_since > rt.worker_wait_s:
                    raise RunFailed(
                        f"round {r}: only {self.alive_count()} of {self.n} workers alive and "
                        f"{self.scheme.name} cannot finish the round without more (tolerates "
                        f"{self.scheme.s} stragglers); no replacement registered within "
                        f"{rt.worker_wait_s:g} s (start one with `dcoord worker --coordinator ADDRESS`)"
                    )
            else:
                starving_since = None
            if now - start > rt.round_timeout_s:
                raise RunFailed(
                    f"round {r}: not decodable after {rt.round_timeout_s:g} s (runtime.round_timeout_s); "
                    f"{len(arrived)} of {self.n} workers delivered"
                )
            if self._results.empty():
                try:
                    item = await asyncio.wait_for(self._results.get(), timeout=0.05)
                except asyncio.TimeoutError:
                    continue
                self._results.put_nowait(item)  # (back at the front: the queue was empty)
            # everything already queued is handled before the scheme is asked again (one check per batch)
            t_recv = time.thread_time()
            while not self._results.empty():
                res, conn, *arrays = self._results.get_nowait()
                if self.handle_result(res, conn, *arrays):
                    first = time.monotonic() if first is None else first
                    if res.worker_id not in possible:
                        possible_key = None  # it was not counted as able to deliver
            self.cpu_s["receive"] += time.thread_time() - t_recv

    def _reroute(self, r: int) -> bool:
        """Token mode: hand tokens held by lost workers to live ones (restored from the last hop)."""
        if not self.scheme.reroute(r, frozenset(self.alive_ids())):
            return False
        before, self.round_tasks = self.round_tasks, self.scheme.tasks(r)
        self._plan_seq += 1
        for w, tasks in self.round_tasks.items():
            if tasks == before.get(w, []):
                continue
            self.arrived.discard(w)  # its work changed: it must deliver the new task list
            self.compute_round.pop(w, None)
            if tasks and w in self.alive_ids():
                self.conns[w].outbox.put_nowait(self._assignment(r, w))
            elif not tasks:
                self.arrived.add(w)
        log.warning("round %d: token(s) restored on live workers", r)
        return True

    # -- elastic membership (runtime.elastic): shrink the code to the workers present, grow it back ----------
    def _replan(self, r: int, workers: list[int], why: str) -> bool:
        """Re-plan round ``r`` (and later ones) over ``workers`` (a line in metrics.jsonl); False if unchanged."""
        cfg = self.cfg
        new = replan(self.scheme, workers, self.n, cfg.coding.scheme, cfg.workers, cfg.coding.stragglers,
                     cfg.rounds)
        if new is None:
            return False
        self.scheme = new
        self.stored.pop(r, None)  # results of the abandoned plan for this round are not used
        self.part_losses.pop(r, None)
        log.warning("round %d: re-planned %s over %d workers (s=%d): %s", r, new.name, len(new.members), new.s, why)
        self.rundir.log_event({"event": "replan", "from_round": r, "why": why, "workers": new.members,
                               "n": len(new.members), "s": new.s, "scheme": new.name, "epoch": new.epoch,
                               "time": time.time()})
        return True

    def _observe_speeds(self, r: int) -> None:
        """Hand the closed round's busy times to the scheme; a speed re-plan is a ``replan`` line as elastic's."""
        rec = self.scheme.observe_times(r, dict(self.busy_round))
        if rec is None:
            return
        log.warning("round %d: re-planned %s from %s: %d of %d grid parts move", r, self.scheme.name,
                    rec.get("why", "speeds"), rec.get("moved_parts", 0), rec.get("parts", 0))
        self.rundir.log_event({"event": "replan", "scheme": self.scheme.name, **rec, "time": time.time()})

    def _grow(self, r: int) -> None:
        """Before round ``r``: take workers that came back (or joined) into the plan."""
        alive = self.alive_ids()
        if alive - set(plan_members(self.scheme, self.n)):
            self._replan(r, sorted(alive), "workers back")

    def _shrink(self, r: int) -> bool:
        """Round ``r`` cannot finish with the workers left: re-plan it over them; False if none are left."""
        if self._replan(r, sorted(self.alive_ids()), "too many workers gone"):
            self._start_round(r)
            return True
        return False

    def _decode_and_step(self, job: int) -> dict:
        t_dec = time.thread_time()
        coeffs = self.scheme.decode(job)
        msgs = self.stored.pop(job, {})
        m = self.scheme.model_of(job)
        version, version_params = self.job_params.pop(job)
        if version != self.steps[m]:
            raise RuntimeError(f"job {job}: model {m} is at version {self.steps[m]}, job used {version}")
        if self.collective is not None:  # every replica decodes by all-reduce and steps itself
            self.collective.send_decode(job, m, version, coeffs, keep_from_job=min(self.job_params, default=job + 1))
            self.steps[m] += 1
            self.cpu_s["decode"] += time.thread_time() - t_dec
            return self._job_record(job, m)
        # without privacy the decoded gradient is only the model's gradient: accumulated in float64 and
        # rounded straight into p.grad's memory (or, for mixed-dtype models, into one reused float64
        # buffer, then copied). DIFF2's estimator may keep what it is given, so private runs get a fresh one.
        grads = self._grad_vectors[m].array() if self.privacy is None else None
        if grads is None and self.privacy is None and self._grad_buf is None:
            self._grad_buf = np.empty(self.num_params, dtype=np.float64)
        out = grads if grads is not None else self._grad_buf if self.privacy is None else None
        if self.cfg.coding.aggregate != "sum":
            g = self._robust(coeffs, msgs)
            if grads is not None:
                grads[:] = g
        else:
            g = combine(coeffs, msgs, self.num_params, out=out)
        t_step = time.thread_time()
        self.cpu_s["decode"] += t_step - t_dec
        if self.privacy is not None:
            g = self.privacy.direction(job, g, version_params)
        if grads is None:
            flat_grads_to_model(self.models[m], g)
        self.optimizers[m].step()
        self.steps[m] += 1
        self.cpu_s["step"] += time.thread_time() - t_step
        return self._job_record(job, m)

    def _robust(self, coeffs: dict, msgs: dict) -> np.ndarray:
        """coding.aggregate (APPROXIMATE, uncoded): a robust estimate of the gradient from the delivered part
        gradients, each scaled by the number of parts (so each alone estimates the whole gradient)."""
        from dcoord.coding.robust import aggregate

        rows = np.stack([np.asarray(msgs[ref], dtype=np.float64) for ref in coeffs]) * self.scheme.num_parts()
        center = self._robust_center
        tau = float(np.linalg.norm(center)) if center is not None else 0.0
        g = aggregate(self.cfg.coding.aggregate, rows, f=self.cfg.coding.byzantine, center=center,
                      tau=tau or float(np.median(np.linalg.norm(rows, axis=1))))
        self._robust_center = g
        return g

    def _job_record(self, job: int, m: int) -> dict:
        """What metrics.jsonl says of one decoded job."""
        residual = float(self.scheme.last_residual)
        self._counts.max_residual = max(self._counts.max_residual, residual)
        losses = self.part_losses.pop(job, {})
        nparts = self.scheme.num_parts()
        loss = sum(losses.values()) if len(losses) == nparts else None  # private runs send no losses
        out = {"job": job, "model": m, "loss": loss, "residual": residual}
        if self.privacy is not None:
            out.update(self.privacy.round_info(job))
        return out

    # -- checkpoints (what runtime.resume writes and puts back) -------------------------------------------
    def save_checkpoint(self) -> None:
        """Checkpoint the state as of the last closed round (atomic; the newest K are kept)."""
        got = self.checkpoint_state()
        if self.collective is not None and got is not None and got[1] != self.collective.synced_round:
            # the models are a replica's as of an earlier round: the checkpoint of that round stands
            log.warning("no checkpoint of round %d: the replicas' state was last fetched at round %d",
                        got[1], self.collective.synced_round)
            return
        if got is not None and got[1] >= 0:
            self.rundir.checkpoint(*got)

    def checkpoint_state(self) -> tuple[dict, int] | None:
        """The state as of the last closed round and that round, or None while a round is being applied.

        The models and optimizers, the model versions still needed by pending jobs (sequential codes) and the
        messages already delivered for them, the scheme's state, DIFF2's running estimate, counters, RNG
        states, and how long metrics.jsonl was then (a resumed run cuts it back to that length)."""
        from dcoord.runtime.coordinator.sessions import (
            public_config_yaml,  # no secret reaches the run directory
        )

        if self.phase == "closing":
            return None
        mid = self.phase == "collect"
        done = self.round - 1 if mid else self.round
        scheme_state = self.scheme_snapshot if mid else self.scheme.state_dict()
        stored = {job: [(ref.round, ref.worker, ref.slot, arr) for ref, arr in msgs.items() if ref.round <= done]
                  for job, msgs in self.stored.items()}
        state = {
            "version": 1, "job_id": self.job_id, "round": done, "config": public_config_yaml(self.cfg),
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "steps": list(self.steps),
            "job_params": {j: [v, p] for j, (v, p) in self.job_params.items()},
            "stored": {j: v for j, v in stored.items() if v},
            "part_losses": {j: dict(v) for j, v in self.part_losses.items()},
            "scheme": scheme_state,
            "privacy": self.privacy.state_dict() if self.privacy is not None else None,
            "byzantine": self.byz.state_dict() if self.byz is not None else None,
            "counters": {**self._counts.state_dict(), "elapsed_s": time.monotonic() - self.started},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "metrics_offset": self.rundir.round_offset,
        }
        return state, done

    def load_checkpoint_state(self, state: dict) -> None:
        """Put a checkpoint back into this freshly built coordinator (same config)."""
        if len(state["models"]) != len(self.models):
            raise DcoordError(f"checkpoint has {len(state['models'])} models, the config {len(self.models)}")
        self.job_id = state["job_id"]
        for m, sd in zip(self.models, state["models"]):
            m.load_state_dict(sd)
        for o, sd in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(sd)
        self.steps = [int(s) for s in state["steps"]]
        self.round = int(state["round"])
        # parameters keep the dtype they were saved with (the model's): workers load them into the model as is
        self.job_params = {int(j): (int(v), np.asarray(p)) for j, (v, p) in state["job_params"].items()}
        self.stored = {int(j): {ResultRef(int(r), int(w), int(s)): np.asarray(a) for r, w, s, a in refs}
                       for j, refs in state["stored"].items()}
        self.part_losses = {int(j): {int(p): float(x) for p, x in v.items()}
                            for j, v in state["part_losses"].items()}
        if "elastic" in state["scheme"]:  # the run had re-planned its code over fewer workers
            self.scheme = ElasticScheme.from_state(state["scheme"], self.n)
        else:
            self.scheme.load_state_dict(state["scheme"])
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])
        if self.byz is not None and state.get("byzantine") is not None:
            self.byz.load_state_dict(state["byzantine"])
        c = state["counters"]
        self._counts.load_state_dict(c)
        self.resumed_elapsed = float(c["elapsed_s"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(_tuples(state["rng"]["python"]))

    async def wait_for_workers(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._registered.wait(), timeout)
        except asyncio.TimeoutError:
            raise RunFailed(
                f"only {self.alive_count()} of {self.n} workers registered within {timeout:g} s"
            ) from None

    async def run(self, progress=None, start_timeout: float = 120.0) -> dict:
        """Run every round; returns the summary (also written to the run directory)."""
        from dcoord.runtime.coordinator.sessions import public_config_yaml

        self.rundir.write_config(public_config_yaml(self.cfg))  # no secret reaches the run directory
        try:
            await self.wait_for_workers(start_timeout)
        except BaseException:
            self.rundir.close()  # releases the run directory's lock (rundir.py)
            raise
        self.state = "running"
        self.started = time.monotonic() - self.resumed_elapsed
        try:
            if self.collective is not None:
                self.collective.synced_round = self.round  # a fresh model, or the checkpoint's
                self.collective.form(sorted(self.alive_ids()))
            for r in range(self.round + 1, self.total_rounds):
                t0, cpu0 = time.monotonic(), time.process_time()
                if self.cfg.runtime.elastic:
                    self._grow(r)
                self._start_round(r)
                arrived = await self._collect(r)
                decoders = arrived
                if self.byz is not None:  # one verified payload per group decodes (before "closing": a liar
                    # found here stops the run with the checkpoint of the round before)
                    decoders = self.byz.close(self.byz.agreement(), {
                        ref.worker: a for ref, a in self.stored.get(r, {}).items() if ref.round == r})
                self.phase = "closing"
                newly = self.scheme.close_round(r, decoders)
                jobs = [self._decode_and_step(j) for j in newly]
                wall = time.monotonic() - t0
                stragglers = sorted(set(range(self.n)) - arrived)
                self._counts.stragglers_seen += len(stragglers)
                losses = [j["loss"] for j in jobs if j["loss"] is not None and not math.isnan(j["loss"])]
                if losses:
                    self._counts.last_loss = losses[-1]
                record = {
                    "round": r, "wall_s": wall, "elapsed_s": time.monotonic() - self.started,
                    "loss": losses[-1] if losses else None, "jobs": jobs,
                    "workers_returned": sorted(arrived), "stragglers": stragglers,
                    "decode_residual": max((j["residual"] for j in jobs), default=0.0),
                    "compute_s": dict(sorted(self.compute_round.items())),
                    "bytes_received": self.bytes_round, "dropped_late_results": self._counts.dropped_late,
                    "coordinator_cpu_s": self._cpu_shares(time.process_time() - cpu0),
                    "rejected": dict(self._counts.rejected), "workers_alive": self.alive_count(),
                }
                if self.privacy is not None and jobs:
                    record["epsilon"] = jobs[-1]["epsilon"]
                if self.byz is not None:
                    record["offences"] = [{k: v for k, v in e.items() if k not in ("event", "time")}
                                          for e in self.byz.round_events]
                    self.byz.round_events = []
                record.update(self.scheme.round_info(r))
                self._observe_speeds(r)
                self.rundir.log_round(record)
                ce = self.cfg.runtime.checkpoint_every
                if self.collective is not None and (r == self.total_rounds - 1 or (ce and (r + 1) % ce == 0)):
                    self.phase = "boundary"
                    await self.collective.fetch_state(self.alive_ids(), self.cfg.runtime.round_timeout_s)
                if r == self.total_rounds - 1:
                    # what the bar, the status and the summary show as the loss from now on is the final
                    # model's, not the loss its last gradient was computed at (one step behind)
                    self._final_losses = self.final_losses()
                    self._counts.last_loss = self._final_losses[0]
                for observe in self._round_observers:
                    observe(record, self)
                self.phase = "boundary"
                if ce and (r + 1) % ce == 0:
                    self.save_checkpoint()
                self._round_closed.set()
                self._round_closed.clear()
                if progress is not None:
                    progress(record, self)
        except BaseException as exc:
            self.state = "failed"
            self.message = str(exc)
            self._shutdown_all(f"run failed: {exc}")
            self.close_data_plane()
            try:
                self.save_checkpoint()
            except Exception as ckexc:  # noqa: BLE001 - e.g. the disk is full: keep the original error
                log.warning("could not write the final checkpoint: %s", ckexc)
            self.rundir.close()
            raise
        self.state = "done"
        summary = self.summary()
        self.rundir.finish(summary, self.models[0].state_dict() if len(self.models) == 1
                           else [m.state_dict() for m in self.models])
        self._shutdown_all("run complete")
        self.close_data_plane()  # after the stop messages are queued: workers waiting on it end cleanly
        return summary

    def _cpu_shares(self, process_s: float) -> dict[str, float]:
        """This round's coordinator CPU seconds by what they went to: receive, decode, step, send (timed on
        the round loop), and ``control``: the rest of the process's CPU time in the round (gRPC streams,
        message encoding, heartbeats, the event loop), so that the shares add up to what was spent."""
        shares = {k: self.cpu_s[k] for k in ("receive", "decode", "step", "send")}
        shares["control"] = max(0.0, process_s - sum(shares.values()))
        return shares

    def _shutdown_all(self, reason: str) -> None:
        for c in self.conns.values():
            if c.alive:
                c.outbox.put_nowait(Shutdown(reason=reason))
        self._round_closed.set()

    def final_losses(self) -> list[float]:
        return [evaluate.train_loss(self.workload, m) for m in self.models]

    def test_accuracy(self) -> list[float] | None:
        accs = [evaluate.test_accuracy(self.workload, m) for m in self.models]
        return None if any(a is None for a in accs) else accs  # type: ignore[return-value]

    def summary(self) -> dict:
        wall = time.monotonic() - self.started
        losses = self._final_losses if self._final_losses is not None else self.final_losses()
        accs = self.test_accuracy()
        return {
            "name": self.cfg.name, "job_id": self.job_id,
            "rounds_completed": self.round + 1, "jobs": self.cfg.rounds, "wall_s": wall,
            "rounds_per_s": (self.round + 1) / wall if wall > 0 else None,
            "final_loss": losses[0], "final_losses": losses, "test_accuracy": accs,
            "per_model": [{"model": i, "lr": self.cfg.lr_for(i), "final_loss": loss,
                           "test_accuracy": accs[i] if accs else None} for i, loss in enumerate(losses)],
            "scheme": self.scheme.name, "workers": self.n, "models": len(self.models),
            "load": self.scheme.load(), "max_decode_residual": self._counts.max_residual,
            "dropped_late_results": self._counts.dropped_late, "rejected_results": dict(self.rejected),
            "refused": dict(self.refused),
            "stragglers_seen": self._counts.stragglers_seen,
            "membership": self._members.report(),
            "decode_precision": self._decode_precision(),
            **self.scheme.report(),
            **(self.privacy.summary(self.steps[0]) if self.privacy is not None else {}),
            **(self.byz.report() if self.byz is not None else {}),
            **({"aggregate": self.cfg.coding.aggregate, "approximate": True}
               if self.cfg.coding.aggregate != "sum" else {}),
            **({"collective": self.collective.report()} if self.collective is not None else {}),
        }

    def _decode_precision(self) -> dict | None:
        """The searched worst decode error the job ran under, and the bound it is held to (coding/precision.py)."""
        from dcoord.coding.precision import precision_record
        from dcoord.runtime.transport.registry import get_plane

        summed = self.cfg.transport is not None and get_plane(self.cfg.transport).sums_in_payload_dtype
        return precision_record(self.cfg, summed)

    def snapshot(self) -> CoordinatorView:
        """What metrics, progress and status show, as of now (a frozen copy)."""
        dp_in, dp_out = self._data_plane_bytes()
        tolerated, left = self._members.slack()
        return CoordinatorView(
            name=self.cfg.name, job_id=self.job_id, scheme=self.scheme.name, state=self.state, round=self.round,
            total_rounds=self.total_rounds, workers_total=self.n, workers_alive=self.alive_count(),
            last_loss=self._counts.last_loss, stragglers_seen=self._counts.stragglers_seen,
            wait_all_fallbacks=self._counts.wait_all_fallbacks, max_residual=self._counts.max_residual,
            payload_bytes_in=self._counts.bytes_in + dp_in, payload_bytes_out=self._counts.bytes_out + dp_out,
            dropped_late=self._counts.dropped_late, elapsed_s=time.monotonic() - self.started, message=self.message,
            private=self.privacy is not None, stragglers_tolerated=tolerated, slack_left=left,
            lost_workers=tuple(sorted(self._members.lost_ids)),
            rejected=dict(self._counts.rejected), refused=dict(self._counts.refused),
            offences=dict(self.byz.offences) if self.byz is not None else {},
            excluded=tuple(sorted(self.byz.excluded)) if self.byz is not None else (),
        )

    def _data_plane_bytes(self) -> tuple[int, int]:
        """(received, sent) payload bytes on the data plane: tcp (standalone), or torch/mpi under a launcher
        once models go down it too; (0, 0) without one. The gRPC work stream's share is count_bytes_in/out."""
        server = self.data_server
        if server is None:
            return 0, 0
        return int(getattr(server, "bytes_in", 0)), int(getattr(server, "bytes_out", 0))

    def status(self) -> StatusInfo:
        v = self.snapshot()
        return StatusInfo(
            job_id=v.job_id, name=v.name, state=v.state, round=max(v.round, 0),
            rounds_total=v.total_rounds, workers_alive=v.workers_alive, workers_total=v.workers_total,
            last_loss=v.last_loss, stragglers_seen=v.stragglers_seen,
            dropped_late_results=v.dropped_late, rejected=v.rejected,
            elapsed_s=v.elapsed_s, scheme=v.scheme, message=v.message, refused=v.refused,
            offences={str(w): c for w, c in sorted(v.offences.items())}, excluded=list(v.excluded),
        )


def _tuples(x):
    """random.setstate needs tuples where a checkpoint may hold lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
