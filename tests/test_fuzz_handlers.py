"""Fuzzing every coordinator message handler (hypothesis; bounded: a fixed number of examples, no deadline).

Arbitrary bytes (parsed as the wire messages, as gRPC would) and structurally valid but hostile messages
go through Register, Heartbeat, GetStatus, the Work stream (hello, chunks, results) and the round's
result validation. The coordinator must never raise anything but a deliberate gRPC abort, never change
a model, and keep its round state consistent (only finite, full-size messages stored; ids in range).
"""

import asyncio

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.runtime.coordinator.coordinator import Coordinator
from dcoord.runtime.coordinator.service import CoordinatorService
from dcoord.runtime.tensors import flat_params
from dcoord.wire import result_from_proto

LOOP = asyncio.new_event_loop()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


class Abort(Exception):
    """What grpc.aio's context.abort raises: the call ends with a status, the server goes on."""


class Context:
    async def abort(self, code, details):
        raise Abort(code, details)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def auth_context(self) -> dict:  # no TLS
        return {}

    def invocation_metadata(self) -> tuple:  # no token
        return ()


async def _make():
    cfg = load_config(None, data={"workers": 4, "rounds": 5, "batch_size": None,
                                  "coding": {"scheme": "gc-cyclic", "stragglers": 1},
                                  "runtime": {"progress": False}})
    coord = Coordinator(cfg, None)
    coord.state = "running"
    coord._start_round(0)
    return coord


COORD = LOOP.run_until_complete(_make())
SERVICE = CoordinatorService(COORD)
for _w in range(COORD.n):  # every id registered once, so hostile streams can present a real session
    LOOP.run_until_complete(SERVICE.Register(pb.RegisterRequest(requested_id=_w), Context()))
BEFORE = [flat_params(m).copy() for m in COORD.models]
NUM = COORD.num_params


def _check_invariants():
    c = COORD
    for m, before in zip(c.models, BEFORE):
        assert np.array_equal(flat_params(m), before), "a handler changed a model"
    assert c.steps == [0] * len(c.models)
    assert c.arrived <= set(range(c.n))
    for msgs in c.stored.values():
        for ref, arr in msgs.items():
            assert 0 <= ref.worker < c.n and arr.shape == (NUM,) and np.all(np.isfinite(arr))


async def _drain():
    while not COORD.results.empty():
        res, conn, *arrays = COORD.results.get_nowait()  # (res, conn[, arrays from a data plane])
        COORD.handle_result(res, conn, *arrays)


async def _work(messages):
    async def gen():
        for m in messages:
            yield m

    try:
        async for _ in SERVICE.Work(gen(), Context()):
            pass
    except Abort:
        pass
    await _drain()


def _run(coro):
    LOOP.run_until_complete(coro)
    _check_invariants()


def _session(wid: int) -> str:
    """The session the coordinator holds for ``wid`` now (white box: what a registered worker would present)."""
    conn = COORD.conns.get(wid)
    return conn.session if conn is not None else ""


def _hello(wid: int) -> pb.WorkerMessage:
    return pb.WorkerMessage(hello=pb.Hello(job_id=COORD.job_id, worker_id=wid, session=_session(wid)))


# -- arbitrary bytes ---------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=6), st.integers(0, 3))
def test_arbitrary_bytes_on_the_work_stream(blobs, wid):
    msgs = []
    for b in blobs:
        try:
            msgs.append(pb.WorkerMessage.FromString(b))
        except DecodeError:
            continue  # gRPC's deserializer rejects it before any handler runs
    _run(_work([_hello(wid), *msgs]))


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_arbitrary_bytes_to_register_and_heartbeat(a, b):
    async def go():
        for raw, cls, handler in ((a, pb.RegisterRequest, SERVICE.Register),
                                  (b, pb.HeartbeatRequest, SERVICE.Heartbeat)):
            try:
                req = cls.FromString(raw)
            except DecodeError:
                continue
            try:
                await handler(req, Context())
            except Abort:
                pass
        await SERVICE.GetStatus(pb.StatusRequest(), Context())

    _run(go())
    # whatever registered, the ids the coordinator hands out stay within 0..n-1
    assert set(COORD.conns) <= set(range(COORD.n))


# -- structurally valid, hostile ----------------------------------------------------------------------

_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def payloads(draw):
    kind = draw(st.sampled_from(["right", "short", "long", "nonfinite", "dtype", "shape", "empty"]))
    vec = np.zeros(NUM)
    dtype, shape = "float64", [NUM]
    if kind == "short":
        vec = vec[: draw(st.integers(0, NUM - 1))]
    elif kind == "long":
        vec = np.zeros(NUM + draw(st.integers(1, 10)))
    elif kind == "nonfinite":
        vec[draw(st.integers(0, NUM - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "dtype":
        dtype = draw(st.sampled_from(["float32", "int64", "complex128", "", "x" * 50]))
    elif kind == "shape":
        shape = draw(st.lists(st.integers(0, 2**63 - 1), max_size=4))
    elif kind == "empty":
        vec = np.zeros(0)
    else:
        scale = draw(st.sampled_from([1.0, 1e-300, 1e150, 1e308]))
        vec = np.random.default_rng(draw(st.integers(0, 2**32))).uniform(-1, 1, NUM) * scale
    return pb.Tensor(shape=shape, dtype=dtype, data=vec.tobytes())


@st.composite
def results(draw):
    c = COORD
    job = draw(st.sampled_from([c.job_id, "", "other-job"]))
    wid = draw(st.one_of(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1)))
    rnd = draw(st.one_of(st.sampled_from([0, -1, 1]), st.integers(-(2**31), 2**31 - 1)))
    tasks = draw(st.lists(st.builds(
        lambda j, s, v, p, losses: pb.TaskResult(job=j, slot=s, model=0, model_version=v, payload=p,
                                                 losses=[pb.PartLoss(part=a, loss=b) for a, b in losses]),
        st.sampled_from([0, 1, -1, 2**31 - 1]), st.sampled_from([0, 1, 7]), st.sampled_from([0, 1, -5]),
        payloads(), st.lists(st.tuples(st.integers(-5, 10), _floats), max_size=3)), max_size=3))
    session = draw(st.sampled_from(["right", "", "forged"]))
    session = _session(wid) if session == "right" else session
    return pb.Result(job_id=job, round=rnd, worker_id=wid, tasks=tasks, session=session,
                     compute_s=draw(_floats), payload_chunked=draw(st.booleans()),
                     payload_on_data_plane=draw(st.booleans()))


chunks = st.builds(lambda d: pb.WorkerMessage(chunk=pb.PayloadChunk(data=d)), st.binary(max_size=2000))


@SETTINGS
@given(st.integers(0, 3), st.lists(st.one_of(results().map(lambda r: pb.WorkerMessage(result=r)), chunks),
                                   max_size=6))
def test_hostile_results_and_chunks_on_the_work_stream(wid, msgs):
    _run(_work([_hello(wid), *msgs]))


@SETTINGS
@given(results())
def test_hostile_results_straight_into_round_validation(res):
    async def go():
        conn = COORD.conns.get(res.worker_id) if 0 <= res.worker_id < COORD.n else None
        COORD.handle_result(result_from_proto(res), conn)  # the round logic sees the wire layer's dataclass

    _run(go())


@SETTINGS
@given(st.sampled_from(["", "x", "nope"]), st.integers(-(2**31), 2**31 - 1), st.booleans())
def test_hostile_hello(job_id, wid, use_job):
    hello = pb.WorkerMessage(hello=pb.Hello(job_id=COORD.job_id if use_job else job_id, worker_id=wid))
    _run(_work([hello, pb.WorkerMessage()]))


def test_a_valid_result_is_still_accepted_after_the_fuzzing():
    """The fuzzing above did not wedge the coordinator: a correct result for an open slot still counts."""
    c = COORD
    free = [w for w in range(c.n) if w not in c.arrived]
    if not free:
        pytest.skip("every worker slot of round 0 was filled by a valid fuzzed result")
    w = free[0]
    t = c.round_tasks[w][0]
    res = pb.Result(job_id=c.job_id, round=0, worker_id=w, tasks=[pb.TaskResult(
        job=t.job, slot=t.slot, model=0, model_version=c.job_params[t.job][0],
        payload=pb.Tensor(shape=[NUM], dtype="float64", data=np.ones(NUM).tobytes()))])
    assert c.handle_result(result_from_proto(res), None)
    _check_invariants()
