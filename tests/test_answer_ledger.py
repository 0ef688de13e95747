"""The trust: workers answer ledger (dcoord/runtime/worker/private.py): what a worker answers a coordinator that may
be compromised, and what it answers a coordinator resumed from its checkpoint that it re-registered with.

Rules: one parameter vector per (job, partition) for the worker's whole life; within one session rounds
never go back; digests are kept for a window of recent jobs and anything older is refused for good.
"""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest
from rogue import fake_coordinator

from dcoord.config import load_config
from dcoord.privacy.mechanisms import NoiseKey, PrivacyError, params_digest
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.privacy_glue import answer_window
from dcoord.runtime.tensors import from_proto
from dcoord.runtime.worker.private import AnswerLedger, WorkerPrivacy
from dcoord.wire import to_proto

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def _cfg(**over):
    data = {"name": "ledger", "workload": "logreg-digits", "seed": 0, "workers": 3, "rounds": 6,
            "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5},
            "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "privacy": {"mechanism": "diff2", "noise_multiplier": 1.0, "clip": 1.0, "clip_diff": 10.0,
                        "restart_every": 2},
            "runtime": {"progress": False}}
    data.update(over)
    return load_config(None, data=data)


def test_one_parameter_vector_per_job_and_partition_across_sessions():
    led = AnswerLedger(window=8)
    led.begin_round(0, "s1")
    led.check(0, 0, A)
    led.check(0, 1, A)
    led.check(0, 0, A)  # the same question again (a replica task of the same round): the identical answer
    with pytest.raises(PrivacyError, match="round 0 partition 0 was already answered for other parameters"):
        led.check(0, 0, B)
    led.answered_round(0)
    led.begin_round(1, "s1")
    led.check(1, 0, C)
    led.answered_round(1)
    # a coordinator resumed from its checkpoint (the worker re-registered: a new session) runs round 0 again
    led.begin_round(0, "s2")
    led.check(0, 0, A)  # same parameters: allowed (identical message, nothing new)
    with pytest.raises(PrivacyError, match="other parameters"):
        led.check(0, 1, B)  # other parameters: never, in any session
    with pytest.raises(PrivacyError, match="other parameters"):
        led.check(1, 0, A)
    assert led.refused == 3


def test_rounds_never_go_back_within_a_session():
    led = AnswerLedger()
    led.begin_round(3, "s")
    led.answered_round(3)
    led.begin_round(3, "s")  # the round in progress (a later assignment of it)
    with pytest.raises(PrivacyError, match="round 2 is older than round 3, already answered in this session"):
        led.begin_round(2, "s")
    led.begin_round(2, "t")  # a new registration starts its own order
    led.answered_round(2)
    with pytest.raises(PrivacyError, match="older than round 2"):
        led.begin_round(1, "t")
    # each change of session starts a new order; within it, rounds still never go back
    led.begin_round(5, "s")
    led.answered_round(5)
    with pytest.raises(PrivacyError):
        led.begin_round(4, "s")


def test_window_bounds_memory_and_refuses_older_jobs_for_good():
    led = AnswerLedger(window=5)
    for job in range(1000):
        for part in range(3):
            led.check(job, part, bytes([job % 251]) * 32)
        assert len(led.digests) <= 5 and sum(len(p) for p in led.digests.values()) <= 15
    assert sorted(led.digests) == [995, 996, 997, 998, 999] and led.floor == 995
    # a job that left the window is refused even with the parameters it was answered for
    with pytest.raises(PrivacyError, match="older than the 5 newest rounds"):
        led.check(994, 0, bytes([994 % 251]) * 32)
    with pytest.raises(PrivacyError, match="older than the 5 newest rounds"):
        led.check(10, 0, b"x" * 32)  # and with any other: a forgotten digest cannot be bypassed
    # going back inside the window does not lower the floor; new jobs inside it are fine
    led.check(996, 0, bytes([996 % 251]) * 32)
    led.check(997, 7, C)
    assert led.floor == 995
    led.check(1003, 0, A)  # jumps ahead: the floor rises, older digests are dropped
    assert led.floor == 999 and sorted(led.digests) == [999, 1003]
    with pytest.raises(PrivacyError):
        led.check(998, 0, bytes([998 % 251]) * 32)
    with pytest.raises(ValueError):
        AnswerLedger(window=0)


def test_answer_window_covers_the_rounds_a_resumed_coordinator_runs_again():
    assert answer_window(_cfg()) == 64  # 10 x 3 + 2: the minimum
    assert answer_window(_cfg(runtime={"checkpoint_every": 100, "keep_checkpoints": 5})) == 502
    assert answer_window(_cfg(runtime={"checkpoint_every": 100000, "keep_checkpoints": 50})) == 4096  # capped
    assert answer_window(_cfg(runtime={"checkpoint_every": 0})) == 64  # checkpoints only at the end


def test_the_same_question_in_a_new_session_gets_the_identical_message():
    """Why a re-run round may be answered: the message is a deterministic function of (key, job, part,
    parameters), so the second answer equals the first bit for bit and releases nothing new."""
    from dcoord.runtime.tensors import flat_params
    from dcoord.workloads import load

    cfg = _cfg()
    wl = load("logreg-digits", 0)
    wp = WorkerPrivacy(cfg, wl, 3, key=NoiseKey("k" * 40))
    x0 = flat_params(wl.model)
    rng = np.random.default_rng(1)
    x1 = (x0 + 0.05 * rng.standard_normal(x0.size)).astype(x0.dtype)
    X, y = wl.X[:100], wl.y[:100]

    def ask(job, params, prev):
        return wp.part_message(wl.model, wl.loss_fn, X, y, job=job, part=1, params=params, prev=prev)

    wp.ledger.begin_round(0, "first")
    m0 = ask(0, x0, None)  # a restart round
    m1 = ask(1, x1, x0)  # a difference round
    wp.ledger.begin_round(0, "after-rejoin")
    assert np.array_equal(ask(0, x0.copy(), None), m0)
    assert np.array_equal(ask(1, x1.copy(), x0.copy()), m1)
    other = (x1 + np.float32(1e-6)).astype(x1.dtype)  # one rounding step away: refused
    with pytest.raises(PrivacyError, match="other parameters"):
        ask(1, other, x0)
    with pytest.raises(PrivacyError, match="other parameters"):
        ask(1, x1, other)  # x_(t-1) is bound too on a difference round
    assert wp.ledger.digests[1][1] == params_digest(x1, x0)


# --------------------------------------------------------------- a real worker against a restarting coordinator


class _RestartingCoordinator(pb_grpc.CoordinatorServicer):
    """Serves the sessions' plans in turn; a session's stream ends without a shutdown (a crash) except the
    last one's, so the worker re-registers with a new session each time."""

    def __init__(self, config_yaml: str, sessions: list[list[pb.Assignment]]):
        self.config_yaml = config_yaml
        self.sessions = sessions
        self.registered = 0
        self.results: list[list[pb.Result | None]] = []

    def Register(self, request, context):
        self.registered += 1
        return pb.RegisterReply(worker_id=0, job_id="job", job_config_yaml=self.config_yaml,
                                session=f"s{self.registered}", heartbeat_interval_s=30)

    def Heartbeat(self, request, context):
        return pb.HeartbeatReply(ok=True)

    def Work(self, request_iterator, context):
        got: queue.Queue = queue.Queue()
        plan = self.sessions[len(self.results)]
        results: list[pb.Result | None] = []
        self.results.append(results)

        def read():
            for m in request_iterator:
                if m.HasField("result"):
                    got.put(m.result)

        threading.Thread(target=read, daemon=True).start()
        for a in plan:
            yield pb.CoordinatorMessage(assignment=a)
            try:
                results.append(got.get(timeout=6))
            except queue.Empty:
                results.append(None)  # refused: the worker sent nothing
        if len(self.results) == len(self.sessions):
            yield pb.CoordinatorMessage(shutdown=pb.Shutdown(reason="done"))
        else:
            context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator killed")


def _assignment(rnd: int, params: np.ndarray, prev: np.ndarray | None = None) -> pb.Assignment:
    models = [pb.ModelState(model=0, version=rnd, params=to_proto(params))]
    if prev is not None:
        models.append(pb.ModelState(model=0, version=rnd - 1, params=to_proto(prev)))
    return pb.Assignment(job_id="job", round=rnd, tasks=[pb.TaskSpec(job=rnd, slot=0, parts=[0], coeffs=[1.0],
                                                                     model=0, model_version=rnd)],
                         models=models)


@pytest.mark.slow
def test_a_worker_answers_a_resumed_coordinator_the_same_and_nothing_else(tmp_path):
    """Session 1 answers rounds 0..2 and its coordinator dies; the worker re-registers (session 2), which runs
    rounds 1 and 2 again from its checkpoint: identical answers for the same parameters, a refusal for round
    2 with other parameters, and a replay of round 1 after round 2 in that session is refused too."""
    from dcoord.runtime.tensors import flat_params
    from dcoord.runtime.worker.worker import run_worker
    from dcoord.workloads import load

    x0 = flat_params(load("logreg-digits", 0).model)
    rng = np.random.default_rng(0)
    x1, x2, x2b = ((x0 + k * rng.standard_normal(x0.size)).astype(np.float32) for k in (0.1, 0.2, 0.3))
    first = [_assignment(0, x0), _assignment(1, x1, x0), _assignment(2, x2, x1)]
    again = [_assignment(1, x1, x0), _assignment(2, x2b, x1), _assignment(2, x2, x1), _assignment(1, x1, x0),
             _assignment(3, x2b, x2)]
    fake = _RestartingCoordinator(_cfg().to_yaml(), [first, again])
    secret = tmp_path / "noise"
    secret.write_text("w" * 40)
    with fake_coordinator(fake) as address:
        rounds = run_worker(address, connect_timeout=30, device="cpu", noise_secret_file=str(secret))
    assert fake.registered == 2
    s1, s2 = fake.results
    assert [r is not None for r in s1] == [True, True, True]
    assert [r is not None for r in s2] == [True, False, True, False, True]
    assert rounds == 6

    def payload(r: pb.Result) -> np.ndarray:
        return from_proto(r.tasks[0].payload)

    assert np.array_equal(payload(s2[0]), payload(s1[1]))  # round 1 again: the same message, bit for bit
    assert np.array_equal(payload(s2[2]), payload(s1[2]))  # round 2 again with its first parameters
    assert s2[0].session == "s2" and s1[0].session == "s1"
