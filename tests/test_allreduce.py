"""The collective plane (transport: allreduce): exact coded rounds by one SUM all-reduce among the workers.

Real worker processes and a real gloo group, formed through the coordinator's authenticated store. Every
scheme is checked against plain full-batch GD (tests/reference.py, plain torch) with stragglers injected;
the coordinator's counters show that no gradient or model byte reached it during a round; a raw client
cannot use the group's store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference import full_batch_gd, max_rel_diff
from test_security import SC, TOKEN, WRONG, _code, _stub, serving

from dcoord.config import load_config
from dcoord.errors import ConfigError, PayloadError, RunFailed
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.runtime.local import run_local
from dcoord.runtime.replica_state import digest, load_state, state_arrays, to_message
from dcoord.runtime.security.auth import ServerSecurity
from dcoord.runtime.transport.registry import choose_plane
from dcoord.runtime.transport.rendezvous import KEYS_PER_RANK, MAX_VALUE, RendezvousStore, StoreRefused
from dcoord.wire.messages import TensorData
from dcoord.workloads import load

BASE = {
    "name": "ar", "workload": "logreg-digits", "seed": 0, "workers": 6, "rounds": 20, "batch_size": None,
    "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
    "inject": {"model": "fixed", "workers": [1, 4], "slowdown": 20},
    "transport": "allreduce", "coding": {"payload_dtype": "float64"},
    "runtime": {"progress": False, "digest_every": 2, "checkpoint_every": 5},
}


def _cfg(**over):
    data = {**BASE, **over}
    data["coding"] = {**BASE["coding"], **over.get("coding", {})}
    data["runtime"] = {**BASE["runtime"], **over.get("runtime", {})}
    return load_config(None, data=data)


def _records(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "round" in r], [r for r in lines if "event" in r]


# ------------------------------------------------------------------------------------------- the pure parts
def test_rendezvous_store_serves_only_the_current_group_within_bounds():
    st = RendezvousStore()
    with pytest.raises(StoreRefused, match="outside every group"):
        st.handle("set", ["g1/x"], b"v", 0)
    st.open_group("g1/", 2)
    assert st.handle("set", ["g1/a"], b"v", 0) == (True, b"", 0)
    assert st.handle("get", ["g1/a"], b"", 0) == (True, b"v", 0)
    assert st.handle("check", ["g1/a", "g1/b"], b"", 0)[0] is False
    assert st.handle("add", ["g1/n"], b"", 3)[2] == 3 and st.handle("add", ["g1/n"], b"", 2)[2] == 5
    with pytest.raises(StoreRefused, match="larger than"):
        st.handle("set", ["g1/big"], b"x" * (MAX_VALUE + 1), 0)
    with pytest.raises(StoreRefused, match="key longer"):
        st.handle("set", ["g1/" + "k" * 600], b"v", 0)
    with pytest.raises(StoreRefused, match="unknown store operation"):
        st.handle("list", ["g1/a"], b"", 0)
    for i in range(2 * KEYS_PER_RANK - 2):  # a and n are there already
        st.handle("set", [f"g1/k{i}"], b"v", 0)
    with pytest.raises(StoreRefused, match="too many keys"):
        st.handle("set", ["g1/one-more"], b"v", 0)
    st.open_group("g2/", 2)  # a re-formed group: the old one's keys are gone and closed
    with pytest.raises(StoreRefused, match="outside every group"):
        st.handle("get", ["g1/a"], b"", 0)


def test_replica_state_round_trips_and_refuses_what_does_not_fit():
    wl = load("logreg-digits", 0)
    model = wl.model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    wl.loss_fn(model(wl.X), wl.y).backward()
    opt.step()
    arrays = state_arrays(model, opt)
    assert any(k.endswith("momentum_buffer") for k in arrays)
    other = load("logreg-digits", 1).model
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    assert digest(state_arrays(other, other_opt)) != digest(arrays)
    load_state(other, other_opt, to_message(0, 3, arrays))
    assert digest(state_arrays(other, other_opt)) == digest(arrays)
    bad = to_message(0, 3, arrays)
    bad.tensors["opt.0.momentum_buffer"] = TensorData.of(np.zeros(7, dtype=np.float32))
    with pytest.raises(PayloadError, match="shape"):
        load_state(other, other_opt, bad)
    bad = to_message(0, 3, arrays)
    bad.tensors["opt.0.__reduce__"] = TensorData.of(np.zeros(1, dtype=np.float32))
    with pytest.raises(PayloadError, match="unknown tensor"):
        load_state(other, other_opt, bad)
    bad = to_message(0, 3, {**arrays, "params": np.full_like(arrays["params"], np.nan)})
    with pytest.raises(PayloadError, match="non-finite"):
        load_state(other, other_opt, bad)


@pytest.mark.parametrize("over,match", [
    ({"mode": "token", "token": {}, "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {}}, "token mode"),
    ({"privacy": {"mechanism": "dp-gd", "clip": 1.0, "noise_multiplier": 2.0}}, "private jobs"),
    ({"runtime": {"elastic": True}}, "runtime.elastic"),
    ({"runtime": {"restart_workers": True}}, "runtime.restart_workers"),
])
def test_what_the_plane_cannot_guarantee_is_a_config_error(over, match):
    cfg = _cfg(**over)
    with pytest.raises(ConfigError, match=match):
        choose_plane(cfg, "none")


def test_the_cli_refuses_it_in_one_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("workload: logreg-digits\nworkers: 6\nmode: token\ntoken: {}\ntransport: allreduce\n"
                   "optimizer: {name: sgd, lr: 0.5}\n")
    r = subprocess.run([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "transport: allreduce" in r.stderr and "token mode" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- the endpoint
def test_an_outsider_cannot_use_the_groups_store():
    cfg = _cfg(workers=2, inject={"model": "none"})
    with serving(cfg, ServerSecurity(token=TOKEN)) as (address, coord, loop):
        req = pb.StoreRequest(job_id=coord.job_id, worker_id=0, op="get", keys=["g1-x/0"])
        for token in (None, WRONG):  # no token, a wrong one: refused before anything else
            assert _code(lambda t=token: _stub(address, t).Rendezvous(req, timeout=10)) == SC.UNAUTHENTICATED
        stub = _stub(address)
        # the token but no registered worker's session
        assert _code(lambda: stub.Rendezvous(req, timeout=10)) == SC.PERMISSION_DENIED
        reg = stub.Register(pb.RegisterRequest(hostname="h"), timeout=10)
        wrong = pb.StoreRequest(job_id=coord.job_id, worker_id=reg.worker_id, session="x" * len(reg.session),
                                op="set", keys=["g1-x/0"], value=b"v")
        assert _code(lambda: stub.Rendezvous(wrong, timeout=10)) == SC.PERMISSION_DENIED
        # a registered worker, before any group is formed, or outside the group's prefix: refused
        mine = pb.StoreRequest(job_id=coord.job_id, worker_id=reg.worker_id, session=reg.session, op="set",
                               keys=["anything"], value=b"v")
        assert _code(lambda: stub.Rendezvous(mine, timeout=10)) == SC.INVALID_ARGUMENT
        status = stub.GetStatus(pb.StatusRequest(), timeout=10)
        assert status.refused["bad-session"] == 2 and status.refused["bad-rendezvous"] == 1
        assert status.refused["no-token"] == 1 and status.refused["wrong-token"] == 1


# ------------------------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def reference():
    return full_batch_gd("logreg-digits", seed=0, rounds=20, lr=0.5, momentum=0.9)


@pytest.mark.slow
def test_gc_cyclic_equals_full_batch_gd_with_no_gradient_through_the_coordinator(tmp_path, reference):
    """Stragglers held out by the code, replicas identical, no gradient into the coordinator."""
    cfg = _cfg(coding={"scheme": "gc-cyclic", "stragglers": 2})
    summary = run_local(cfg, tmp_path, progress=False)
    assert summary["rounds_completed"] == 20
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), reference) < 1e-6
    rounds, events = _records(tmp_path)
    assert [e["epoch"] for e in events if e["event"] == "group"] == [1]
    # the slow workers were left out of (nearly) every decode: the collective did not wait for them
    assert sum(1 for r in rounds if {1, 4} <= set(r["stragglers"])) >= 15
    ar = summary["collective"]
    assert all(r["bytes_received"] == 0 for r in rounds)
    # every tensor byte into the coordinator was a replica state it asked for (checkpoints at rounds 5, 10,
    # 15 and the end: 4 states); none was a gradient
    arrays = state_arrays(*_model_and_opt(cfg))
    size = sum(v.nbytes for v in arrays.values())  # parameters and momentum
    assert ar["payload_bytes_in"] == ar["replica_state_bytes_in"] == 4 * size
    assert ar["payload_bytes_out"] == 6 * arrays["params"].nbytes  # each replica's starting state (no momentum yet)
    assert ar["digest_checks"] >= 5  # versions 0, 2, 4, ... compared across all six replicas


def _model_and_opt(cfg):
    """The model and optimizer with the state they have after a few steps (for sizes)."""
    wl = load(cfg.workload, cfg.seed)
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.5, momentum=0.9)
    wl.loss_fn(wl.model(wl.X), wl.y).backward()
    opt.step()
    return wl.model, opt


@pytest.mark.slow
@pytest.mark.parametrize("coding", [
    {"scheme": "uncoded"},
    {"scheme": "gc-fr", "stragglers": 2},
    {"scheme": "gc-binary", "stragglers": 2},
])
def test_every_plain_code_equals_full_batch_gd(tmp_path, reference, coding):
    inject = BASE["inject"] if coding["scheme"] != "uncoded" else {"model": "none"}
    summary = run_local(_cfg(coding=coding, inject=inject), tmp_path, progress=False)
    assert summary["rounds_completed"] == 20
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), reference) < 1e-6
    assert summary["collective"]["digest_checks"] >= 5


@pytest.mark.slow
def test_uncoded_is_bit_for_bit_the_same_run_after_run(tmp_path):
    states = []
    for k in range(2):
        run_local(_cfg(coding={"scheme": "uncoded"}, inject={"model": "none"}, rounds=8), tmp_path / str(k),
                  progress=False)
        states.append(torch.load(tmp_path / str(k) / "model.pt"))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
@pytest.mark.parametrize("coding", [
    {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1},
    {"scheme": "sr-sgc", "B": 1, "W": 2, "lambda": 2},
])
def test_sequential_codes_keep_messages_until_their_deadline_and_stay_exact(tmp_path, coding):
    lrs = [0.5, 0.25]
    cfg = _cfg(workers=4, rounds=16, optimizer={"name": "sgd", "lr": lrs}, coding=coding,
               inject={"model": "gilbert-elliott", "p_good_to_bad": 0.15, "p_bad_to_good": 0.5, "slowdown": 10},
               runtime={"emulate_part_s": 0.004, "checkpoint_every": 0})
    delay = cfg.make_scheme().delay
    summary = run_local(cfg, tmp_path, progress=False)
    assert summary["rounds_completed"] == 16 + delay
    assert summary["stragglers_seen"] > 0
    states = torch.load(tmp_path / "model.pt")
    for m, lr in enumerate(lrs):
        steps = len([j for j in range(16) if j % 2 == m])
        assert max_rel_diff(states[m], full_batch_gd("logreg-digits", seed=0, rounds=steps, lr=lr)) < 1e-6, m
    assert summary["collective"]["payload_bytes_in"] == summary["collective"]["replica_state_bytes_in"]


@pytest.mark.slow
def test_control_traffic_per_round_does_not_grow_with_the_model(tmp_path):
    per_round = {}
    for d in (10, 20000):
        cfg = _cfg(workload="linreg-synthetic", workload_args={"d": d}, rounds=6, inject={"model": "none"},
                   coding={"scheme": "gc-cyclic", "stragglers": 1}, optimizer={"name": "sgd", "lr": 0.01},
                   runtime={"digest_every": 1})
        ar = run_local(cfg, tmp_path / str(d), progress=False)["collective"]
        per_round[d] = (ar["control_bytes_in"] + ar["control_bytes_out"]) / 6
    # 2000x the parameters; the control messages (results with shapes, assignments, decodes) the same size
    assert per_round[20000] < 1.05 * per_round[10], per_round


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_at_its_checkpoint_and_resume_is_exact(tmp_path, reference):
    cfg = _cfg(coding={"scheme": "gc-cyclic", "stragglers": 2}, inject={"model": "none"},
               runtime={"emulate_part_s": 0.01})
    procs = {}

    def started(coord, ps, address):
        procs["list"] = ps

    def each_round(record, coord):
        if record["round"] == 7:
            os.kill(procs["list"][3].pid, signal.SIGKILL)

    with pytest.raises(RunFailed, match=r"left the all-reduce group.*round 4"):
        run_local(cfg, tmp_path, progress=False, on_started=started, on_round=each_round)
    summary = run_local(cfg, tmp_path, progress=False, mode="resume")
    assert summary["rounds_completed"] == 20
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), reference) < 1e-6
    _, events = _records(tmp_path)
    assert [e["epoch"] for e in events if e["event"] == "group"] == [1, 1]  # one group per coordinator


# ------------------------------------------------------------------------------------ under the launchers
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_under_torchrun_and_mpirun_the_workers_group_equals_gd(tmp_path, launcher):
    from test_launch import JOB, ROUNDS, _have_mpi, mpirun, run, torchrun, write_job

    if launcher == "mpirun" and _have_mpi() is not None:
        pytest.skip(f"MPI launch: {_have_mpi()}")
    job = write_job(tmp_path, transport="allreduce", optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9})
    out = tmp_path / "out"
    cmd = (torchrun if launcher == "torchrun" else mpirun)(5, "-m", "dcoord.launch", str(job), "--out", str(out),
                                                           "--quiet")
    proc = run(cmd, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS and summary["rejected_results"] == {}
    rounds, _ = _records(out)
    assert sum(2 in r["stragglers"] for r in rounds) >= ROUNDS - 2 and all(r["bytes_received"] == 0 for r in rounds)
    assert summary["collective"]["payload_bytes_in"] == summary["collective"]["replica_state_bytes_in"]
    ref = full_batch_gd(JOB["workload"], seed=0, rounds=ROUNDS, lr=0.5, momentum=0.9)
    assert max_rel_diff(torch.load(out / "model.pt"), ref) < 1e-6


def test_replicas_decode_by_all_reduce_and_a_straggler_joins_with_zeros():
    """Three in-process replicas on one gloo group (the coordinator's store served in-process): worker 2
    holds no message (a straggler), the others' shares sum to the decoded gradient, every replica steps
    to the same bits, equal to one SGD step on the sum."""
    from dcoord.runtime.worker.replica import Replica
    from dcoord.wire.messages import Decode, Group

    cfg = _cfg(workers=3, inject={"model": "none"})
    wl = load(cfg.workload, cfg.seed)
    store = RendezvousStore()
    store.open_group("g1-t/", 3)
    sent = []
    reps = [Replica(cfg, wl, 1, store.handle, sent.append, ("127.0.0.1", 1), timeout_s=60) for _ in range(3)]
    state = to_message(0, 0, state_arrays(wl.model, torch.optim.SGD(wl.model.parameters(), lr=0.5)))
    n = sum(p.numel() for p in wl.model.parameters())
    rng = np.random.default_rng(0)
    msgs = [rng.standard_normal(n), rng.standard_normal(n)]
    try:
        for rank, r in enumerate(reps):
            r.submit(Group(epoch=1, rank=rank, size=3, prefix="g1-t/"))
            r.submit(state)
        for r in reps:
            assert r.snapshot(0, 0, timeout=60) is not None
        reps[0].hold(0, 0, 0, msgs[0])
        reps[1].hold(0, 0, 0, msgs[1])
        for w, r in enumerate(reps):
            terms = [(0, 0, 1.0 if w == 0 else 0.5)] if w < 2 else []
            r.submit(Decode(job=0, model=0, version=0, terms=terms, group_epoch=1, keep_from_job=1))
        snaps = [r.snapshot(0, 1, timeout=60, with_digest=True) for r in reps]
    finally:
        for r in reps:
            r.close()
    assert len({s[1] for s in snaps}) == 1  # identical replicas (parameters and optimizer state)
    expected = state_arrays(wl.model, torch.optim.SGD(wl.model.parameters(), lr=0.5))["params"].astype(np.float64) \
        - 0.5 * (msgs[0] + 0.5 * msgs[1])
    assert np.allclose(snaps[0][0], expected.astype(np.float32), rtol=0, atol=1e-6)
    assert all(not r.held for r in reps)  # the decoded job's messages are dropped
