"""A worker: register, then compute whatever the coordinator assigns, newest round first.

The worker never holds the coordinator up: it streams results back as they are ready; if it falls
behind (a straggler), it skips assignments that a newer one has superseded. Injected straggler delays
(config ``inject``) are slept after computing, as if the machine were that much slower.

Reading order: ``run_worker`` (a job's life: join, serve, rejoin), ``_join`` (registration and the job's
setup), ``_serve`` (one registration's work stream), and the steps of one round it calls: ``_load_models``,
``_compute``, ``_send``, ``_finish_round``. gRPC lives in link.py, protobuf in dcoord.wire.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml

from dcoord.config import JobConfig, load_config
from dcoord.errors import EXIT_LOST_COORDINATOR, DataPlaneError, DcoordError, KeyRefused, PayloadError
from dcoord.runtime.security.auth import ClientSecurity, data_plane_client_context
from dcoord.runtime.tensors import from_proto, load_flat_params
from dcoord.runtime.transport.base import WorkerEnd
from dcoord.runtime.transport.registry import get_plane
from dcoord.runtime.worker.compute import TaskComputer
from dcoord.runtime.worker.guard import (
    BadAssignment,
    allowed_from_env,
    check_assignment,
    check_noise_floor,
    check_plugins,
    check_privacy,
    check_workload,
)
from dcoord.runtime.worker.link import ControlLink, Inbox, WorkStream
from dcoord.wire.chunking import mark_payloads, replica_messages, result_messages, send_payloads
from dcoord.wire.messages import Assignment, PartLoss, Registration, Result, Shutdown, TaskResult, TensorData
from dcoord.workloads.data import load_checked

log = logging.getLogger("dcoord.worker")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DcoordError("device: cuda was asked for but no CUDA device is visible")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local % torch.cuda.device_count()}")
    return torch.device("cpu")


def computer_size(workload) -> int:
    """Largest tensor the data plane may carry to this worker (a model's parameter count, with room)."""
    return 4 * max(workload.num_params(), 1)


class LostCoordinator(DcoordError):
    """The coordinator went away without telling this worker to stop (crash, kill, network)."""

    exit_code = EXIT_LOST_COORDINATOR


@dataclass
class WorkerState:
    """What a worker keeps while it serves one job, across registrations (a rejoin replaces ``reg`` and
    the standalone ``plane``; everything else stays)."""

    link: ControlLink
    security: ClientSecurity | None
    cfg: JobConfig
    computer: TaskComputer
    privacy: Any  # runtime.worker.private.WorkerPrivacy, or None
    stragglers: Any  # the job's injected-straggler model
    device: torch.device
    reg: Registration
    max_count: int  # largest tensor the data plane may carry to this worker (computer_size)
    plane: Any = None  # transport.DataPlane for payloads (and models), or None: both ride the control plane
    launched: bool = False  # ``plane`` is the launcher's (torchrun/mpirun): it outlives this worker's stream
    cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (model, version) -> params
    computed: int = 0
    cache_digest: tuple[int, bytes] = (-1, b"")  # (version, digest) of the replica the cache was taken from
    replica: Any = None  # transport: allreduce -- runtime.worker.replica.Replica (this worker steps a replica)
    stream: Any = None  # the current registration's WorkStream
    liar: Any = None  # TEST ONLY: runtime.worker.lie.Liar from $DCOORD_TEST_LIE, or None
    refused: dict[str, int] = field(default_factory=dict)  # assignments refused, by reason (privacy, malformed)

    def refuse(self, reason: str, a: Assignment, exc: Exception) -> None:
        """One line on stderr (shown whatever the log level) and a count: the worker sends nothing for ``a``
        and goes on with the next assignment."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        print(f"worker {self.wid} refuses round {a.round} ({reason}): {exc}", file=sys.stderr, flush=True)

    @property
    def wid(self) -> int:
        return self.reg.worker_id

    @property
    def job_id(self) -> str:
        return self.reg.job_id


def run_worker(address: str, requested_id: int = -1, device: str | None = None,
               connect_timeout: float = 60.0, data_plane=None, security: ClientSecurity | None = None,
               allow_workloads: list[str] | None = None, noise_secret_file: str | None = None,
               max_epsilon: float | None = None, rejoin: bool = True, min_noise_multiplier: float | None = None,
               refusals: dict[str, int] | None = None, privacy_account: str | None = None) -> int:
    """Serve one job until the coordinator says stop; returns the number of rounds computed.

    A worker that loses its coordinator (stream gone without a shutdown) registers again, with its id and
    the same backoff, for up to ``connect_timeout``, so it rejoins a coordinator restarted with --resume
    (same job id); after that, or at once with ``rejoin=False``, it raises LostCoordinator.

    With ``data_plane`` (a transport.DataPlane, under torchrun/mpirun) payloads go to rank 0 over the
    process group / MPI and the gRPC Result only points at them (``payload_on_data_plane``, ``data_seq``);
    without one the worker opens the side of the plane the coordinator chose (its config's ``transport``).
    ``security``: token and TLS (runtime/security/auth.py); ``allow_workloads``: ``package.module:function``
    patterns this worker may run (None: $DCOORD_ALLOW_WORKLOADS); ``noise_secret_file``: this worker's
    noise secret (default $DCOORD_NOISE_SECRET_FILE, then $DCOORD_NOISE_SECRET); ``max_epsilon``: refuse
    jobs less private than this against a compromised coordinator (runtime/worker/guard.py), and any answer
    past it by the worker's own account (runtime/worker/budget.py); ``min_noise_multiplier``: refuse jobs
    whose messages carry less noise. ``refusals`` (a dict) gets the assignments refused, by reason.
    ``privacy_account``: a file that keeps the worker's own account of what it released across restarts.
    """
    torch.set_num_threads(1)
    link = ControlLink(address, security)
    w: WorkerState | None = None
    try:
        w = _join(link, security, requested_id, device, connect_timeout, data_plane, allow_workloads,
                  noise_secret_file, max_epsilon, min_noise_multiplier, privacy_account)
        while True:  # one pass per registration: a coordinator restarted from its checkpoint is rejoined
            told_to_stop, closed = _serve(w)
            if told_to_stop:
                return w.computed
            _rejoin(w, closed, rejoin, connect_timeout)
    finally:
        if w is not None and refusals is not None:
            refusals.update(w.refused)
        if w is not None and w.refused:
            print(f"worker {w.wid} refused {sum(w.refused.values())} assignments: "
                  + ", ".join(f"{n} {k}" for k, n in sorted(w.refused.items())), file=sys.stderr, flush=True)
        if w is not None and w.plane is not None and not w.launched:
            w.plane.close(clean=True)
        if w is not None and w.replica is not None:
            w.replica.close()
        link.close()


def _join(link: ControlLink, security: ClientSecurity | None, requested_id: int, device: str | None,
          connect_timeout: float, launched_plane, allow_workloads: list[str] | None,
          noise_secret_file: str | None, max_epsilon: float | None,
          min_noise_multiplier: float | None = None, privacy_account: str | None = None) -> WorkerState:
    """Register, then set the job up as its config says, checked against what this worker allows first
    (the plugins before anything is imported, the workload, the privacy level): the config comes from the
    coordinator, which the worker need not trust."""
    dev = pick_device(device or "auto")
    reg = link.register(requested_id, str(dev), connect_timeout)
    allowed = allowed_from_env() if allow_workloads is None else allow_workloads
    try:
        data = yaml.safe_load(reg.job_config_yaml)
    except yaml.YAMLError as exc:
        raise DcoordError(f"the coordinator's job config is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DcoordError("the coordinator's job config is not a mapping of settings; refusing it")
    check_plugins(data, allowed)  # validating the config imports them
    cfg = load_config(None, data=data)
    check_workload(cfg.workload, allowed)
    check_noise_floor(cfg, min_noise_multiplier)
    if device is None and cfg.device != "auto":
        dev = pick_device(cfg.device)  # no --device flag: the job config's device
    if launched_plane is not None and reg.worker_id != launched_plane.rank - 1:
        raise DcoordError(f"rank {launched_plane.rank} was given worker id {reg.worker_id}, not "
                          f"{launched_plane.rank - 1}; its data-plane payloads could not be paired with its results")
    if _checked(cfg) and dev.type == "cuda":
        _deterministic_gpu()
    scheme = cfg.make_scheme()
    workload = load_checked(cfg)
    check_privacy(cfg, workload, max_epsilon)
    privacy = _worker_privacy(cfg, workload, scheme.num_parts(), noise_secret_file, max_epsilon, privacy_account)
    computer = TaskComputer(workload, scheme.part_fractions(), cfg.batch_size,
                            cfg.seed, models=scheme.models, device=dev, shards=cfg.shards, privacy=privacy,
                            loader_workers=cfg.runtime.loader_workers)
    w = WorkerState(link, security, cfg, computer, privacy, cfg.straggler_model(), dev, reg, computer_size(workload),
                    plane=launched_plane, launched=launched_plane is not None)
    if w.launched and hasattr(w.plane, "start_models"):
        w.plane.start_models(w.max_count)  # rank 0 may send models down the launcher's plane
    elif not w.launched:
        w.plane = _open_plane_registered(w, connect_timeout)
    if cfg.transport is not None and get_plane(cfg.transport).collective:
        w.replica = _make_replica(w, workload)
    from dcoord.runtime.worker.lie import liar_from_env

    w.liar = liar_from_env(w.wid)  # test only
    print(f"worker {w.wid} of job {w.job_id} on {dev}", file=sys.stderr, flush=True)
    return w


def _make_replica(w: WorkerState, workload):
    """transport: allreduce -- this worker's replica and its communication thread (worker/replica.py)."""
    from dcoord.runtime.worker.replica import Replica

    def store_call(op: str, keys: list[str], value: bytes, amount: int):
        return w.link.store_call(w.reg)(op, keys, value, amount)  # the current registration's session

    def send_state(state) -> None:
        state.session = w.reg.session
        w.stream.send(replica_messages(state, w.cfg.runtime.stream_chunk_bytes))

    host, _, port = w.link.address.rpartition(":")
    return Replica(w.cfg, workload, w.cfg.make_scheme().models, store_call, send_state,
                   (host.strip("[]"), int(port or 0)), timeout_s=w.cfg.runtime.round_timeout_s)


def _worker_privacy(cfg: JobConfig, workload, parts: int, noise_secret_file: str | None,
                    max_epsilon: float | None = None, privacy_account: str | None = None):
    """The worker's side of a private job (its noise and answer ledger), or None for a plain job."""
    if cfg.privacy is None:
        return None
    from dcoord.privacy.mechanisms import PrivacyError, load_worker_noise_key
    from dcoord.runtime.worker.private import WorkerPrivacy

    try:
        needs_key = cfg.privacy.trust == "workers" or cfg.privacy.sampling == "poisson"  # noise, batches
        key = load_worker_noise_key(noise_secret_file) if needs_key else None
        return WorkerPrivacy(cfg, workload, parts, key=key, max_epsilon=max_epsilon, account_file=privacy_account)
    except (PrivacyError, OSError) as exc:
        raise DcoordError(f"worker: {exc}") from None


def _open_plane(w: WorkerState):
    """This registration's end of the job's data plane (None: payloads ride the control plane).

    Which plane is the coordinator's choice (its config's ``transport``); a fresh key per registration. TLS
    exactly when the control plane has it (--tls-ca), with the same server name. A config without one
    (a coordinator that chose none) keeps payloads on the control plane."""
    if w.cfg.transport is None:
        return None
    host = w.link.address.rpartition(":")[0].strip("[]")
    end = WorkerEnd(host=host, port=w.reg.data_port, worker_id=w.wid, key=w.reg.data_key, job_id=w.job_id,
                    max_count=w.max_count, ssl_context=data_plane_client_context(w.security),
                    server_hostname=(w.security.server_name if w.security else None) or host)
    try:
        return get_plane(w.cfg.transport).open_worker_side(end)
    except KeyRefused:
        raise
    except (OSError, DcoordError) as exc:
        raise DcoordError(f"worker {w.wid}: cannot open the data plane at {host}:{w.reg.data_port}: {exc}") from None


def _open_plane_registered(w: WorkerState, connect_timeout: float):
    """``_open_plane``; when the data plane refuses this registration's key (its id was taken over before
    its stream opened: a registration that does not attach does not hold its id), register again and retry,
    until ``connect_timeout``."""
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            return _open_plane(w)
        except KeyRefused as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DcoordError(f"worker {w.wid}: cannot open the data plane: {exc}") from None
            log.warning("worker %d: %s; registering again", w.wid, exc)
            w.reg = w.link.register(w.wid, str(w.device), left)


def _rejoin(w: WorkerState, closed: str | None, rejoin: bool, connect_timeout: float) -> None:
    """The stream ended without a shutdown: register again (same id, same job) or raise LostCoordinator.

    Under a launcher, or with ``rejoin=False``, there is no coordinator to wait for: the launcher (or the
    process that started this worker) ends every rank with the coordinator."""
    address = w.link.address
    lost = (f"worker {w.wid}: lost the coordinator at {address} ({closed}) after {w.computed} rounds "
            "computed; the job did not tell this worker to stop")
    if w.launched or not rejoin:
        raise LostCoordinator(lost)
    log.warning("%s; re-registering for up to %g s (--connect-timeout)", lost, connect_timeout)
    if w.plane is not None:
        w.plane.close(clean=False)
        w.plane = None
    try:
        reg = w.link.register(w.wid, str(w.device), connect_timeout)
    except DcoordError as exc:
        raise LostCoordinator(f"{lost}; no coordinator took it back within {connect_timeout:g} s "
                              f"(--connect-timeout): {exc}") from None
    if reg.job_id != w.job_id:
        raise LostCoordinator(f"{lost}; the coordinator at {address} now runs job {reg.job_id}, not "
                              f"{w.job_id} (resume the run with --resume to continue it)")
    w.reg = reg
    w.plane = _open_plane_registered(w, connect_timeout)
    print(f"worker {w.wid} of job {w.job_id} rejoined the coordinator at {address}", file=sys.stderr, flush=True)


def _serve(w: WorkerState) -> tuple[bool, str | None]:
    """Serve one registration's work stream until it ends: (told to stop?, why the stream closed).

    Each pass takes the newest assignment (a straggler skips superseded ones), computes it and streams the
    result back; the round path never waits on anything but this worker's own compute."""
    stream = WorkStream(w.link, w.reg, collective=w.replica.submit if w.replica is not None else None)
    w.stream = stream
    inbox = stream.inbox
    try:
        while True:
            a = inbox.latest()
            if a is None or isinstance(a, Shutdown):
                return a is not None, inbox.closed
            try:
                if not _load_models(w, a):
                    continue  # superseded while it waited for its model version
                _check(w, a)
            except (BadAssignment, PayloadError) as exc:
                w.refuse("malformed", a, exc)
                continue
            except DataPlaneError:
                # the job may have ended while this straggler waited for a model: the coordinator closes its
                # data plane right after telling every worker to stop; that is a normal end, not a failure
                if inbox.wait_closed_or_shutdown(timeout=5.0):
                    last = inbox.latest()  # a shutdown if one came (it wins over assignments), else None
                    return isinstance(last, Shutdown), inbox.closed
                raise
            done = _compute(w, a, inbox)
            if done is None:
                continue
            try:
                _send(w, stream, *done)
            except OSError:
                # a straggler's late payload met the data plane the coordinator closed as the job ended (seen
                # as SSLEOFError in the emulated cluster): a normal end when the stream says so, as above
                if inbox.wait_closed_or_shutdown(timeout=5.0):
                    last = inbox.latest()
                    return isinstance(last, Shutdown), inbox.closed
                raise
            stream.last_round = a.round
            _finish_round(w, a)
    finally:
        stream.close()


def _check(w: WorkerState, a: Assignment) -> None:
    """BadAssignment unless the assignment has all the round's compute takes from it (guard.check_assignment)."""
    c = w.computer
    check_assignment(a, w.cache, num_parts=len(c.fractions), models=c.models, num_params=c.num_params,
                     needs_previous=w.privacy.needs_previous if w.privacy is not None else None)


def _load_models(w: WorkerState, a: Assignment) -> bool:
    """Every (model, version) the assignment names into the cache: from the message, or from the data
    plane when the coordinator sent the bytes there (waiting for them up to the round timeout), or from
    this worker's replica (transport: allreduce); False when the replica is already past the version."""
    if w.replica is not None:
        w.cache.clear()
        for t in a.tasks:
            every = w.cfg.runtime.digest_every
            snap = w.replica.snapshot(t.model, t.model_version, w.cfg.runtime.round_timeout_s,
                                      with_digest=bool(every) and t.model_version % every == 0)
            if snap is None:
                return False
            w.cache[(t.model, t.model_version)], w.cache_digest = snap[0], (t.model_version, snap[1])
        return True
    for ms in a.models:
        if ms.on_data_plane:
            if not hasattr(w.plane, "model"):
                raise DcoordError("the coordinator sent models on a data plane this worker does not have")
            w.cache[(ms.model, ms.version)] = w.plane.model(ms.model, ms.version, w.cfg.runtime.round_timeout_s)
        else:
            w.cache[(ms.model, ms.version)] = from_proto(ms.params)
    return True


def _compute(w: WorkerState, a: Assignment, inbox: Inbox) -> tuple[Result, list[np.ndarray]] | None:
    """The round's coded results and their payloads on the host, after any emulated or injected delay;
    None when this worker must not answer (privacy refused the round) or the job ended during the delay."""
    from dcoord.privacy.mechanisms import PrivacyError

    c, dtype = w.computer, w.cfg.coding.payload_dtype
    t0 = time.perf_counter()
    result = Result(job_id=w.job_id, round=a.round, worker_id=w.wid, session=w.reg.session)
    payloads = []
    try:
        if w.privacy is not None:
            w.privacy.ledger.begin_round(a.round, w.reg.session)
        for t in a.tasks:
            params = w.cache[(t.model, t.model_version)]
            load_flat_params(c.model, params)
            payload, losses = c.coded_device(t.job, list(t.parts), list(t.coeffs), dtype, params=params,
                                             prev=w.cache.get((t.model, t.model_version - 1)))
            result.tasks.append(TaskResult(job=t.job, slot=t.slot, model=t.model, model_version=t.model_version,
                                           losses=[PartLoss(p, v) for p, v in losses.items()]))
            payloads.append(payload)
    except PrivacyError as exc:  # trust: workers: never a second answer the coordinator could subtract
        w.refuse("privacy", a, exc)
        return None
    if w.privacy is not None:
        w.privacy.ledger.answered_round(a.round)
    # GPU: one pinned copy per result, into a buffer reused by the next result. Safe on every path:
    # result_messages copies the bytes into protobuf messages; send_payloads (tcp: sendall returns with
    # the bytes in the kernel; mpi/torch: wait_sent in _send) is done with the arrays before the next
    # compute writes the buffer again.
    payloads = c.to_host(payloads, dtype)
    if _checked(w.cfg) or w.liar is not None:
        payloads = _digests(w, a.round, result, payloads)
    if w.replica is not None:  # the payloads stay here until their decode (to_host's buffer is reused: copy)
        for t, p in zip(a.tasks, payloads):
            w.replica.hold(t.job, a.round, t.slot, p if c.device.type == "cpu" else p.copy())
        version, digest = w.cache_digest
        if digest:  # every runtime.digest_every versions
            result.replica_digest, result.replica_version = digest, version
    emulated = w.cfg.runtime.emulate_part_s * sum(len(t.parts) for t in a.tasks)
    emulated += w.cfg.runtime.emulate_job_s * sum(float(c.fractions[list(t.parts)].sum()) for t in a.tasks)
    if emulated > 0:
        time.sleep(emulated)
    compute_s = time.perf_counter() - t0
    delay = float(w.stragglers.extra_delay(a.round, np.full(w.cfg.workers, compute_s))[w.wid])
    # an injected straggler delay (emulating a slow machine) still ends when the coordinator goes away
    # or says stop: a killed coordinator's workers must exit, not sleep out the delay first
    if delay > 0 and inbox.wait_closed_or_shutdown(timeout=delay):
        return None
    result.compute_s, result.injected_delay_s = compute_s, delay
    return result, payloads


def _deterministic_gpu() -> None:
    """coding.byzantine compares replicas bit for bit: deterministic kernels, and cuBLAS's fixed workspace
    (read when cuBLAS starts, so set before the first GPU matmul; a value already set is kept)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def _checked(cfg: JobConfig) -> bool:
    """Do this job's replicas compare digests (coding.byzantine with the exact decode)?"""
    return bool(cfg.coding.byzantine) and cfg.coding.aggregate == "sum"


def _digests(w: WorkerState, r: int, result: Result, payloads: list[np.ndarray]) -> list[np.ndarray]:
    """coding.byzantine: each task's payload digest (what its group's replicas compare); a test liar's
    payloads replaced by its lie here, with their digests (or, attack ``payload``, the honest ones)."""
    from dcoord.coding.byzantine import digest

    lie = w.liar is not None and w.liar.lies_in(r)
    if lie:  # the tests read the rounds a liar lied in from its log
        print(f"test liar: worker {w.wid} lies in round {r} ({w.liar.attack})", file=sys.stderr, flush=True)
    out = []
    for tr, p in zip(result.tasks, payloads):
        sent = w.liar.tamper(r, p) if lie else p
        if _checked(w.cfg):
            tr.digest = digest(p if lie and w.liar.attack == "payload" else sent)
        out.append(sent)
    return out


def _send(w: WorkerState, stream: WorkStream, result: Result, payloads: list[np.ndarray]) -> None:
    """Stream the result back: with a data plane the small Result goes first and travels while the payload
    bytes stream point-to-point, in order; without, payloads inline, or over ~1 MB as chunks on the stream."""
    if w.replica is not None:  # transport: allreduce: shapes only; the payloads wait for their Decode
        for tr, arr in zip(result.tasks, payloads):
            tr.payload = TensorData(tuple(int(d) for d in arr.shape), str(arr.dtype), b"")
        result.payload_held = True
        stream.send(result_messages(result))
        return
    if w.plane is None:
        stream.send(result_messages(result, payloads, w.cfg.runtime.stream_chunk_bytes))
        return
    mark_payloads(result, payloads, w.plane)
    stream.send(result_messages(result))
    send_payloads(result, payloads, w.plane)
    w.plane.wait_sent()  # MPI moves data only while the sender calls into it


def _finish_round(w: WorkerState, a: Assignment) -> None:
    """Count the round and forget the models no later assignment needs (x_(t-1) for DIFF2 comes with each
    assignment, so only this one's are kept; the plane keeps newer versions it already received)."""
    w.computed += 1
    keep = {(t.model, t.model_version) for t in a.tasks}
    for k in [k for k in w.cache if k not in keep]:
        del w.cache[k]
    if hasattr(w.plane, "keep_models"):
        w.plane.keep_models(keep)
