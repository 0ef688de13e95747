"""Nobody can starve a job: real runs (real worker processes) finish while an outsider floods the tcp data
plane with half-open connections, and while a token holder keeps re-registering every worker id."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest
import torch
from reference import full_batch_gd, max_rel_diff

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.local import run_local
from dcoord.runtime.transport.tcp_dp import MAX_HANDSHAKES_PER_PEER, HandshakeBudget, peer_key

TOKEN = "starve-token-" + "0123abcd" * 4
ATTACKER = "127.0.0.2"  # another loopback address: the outsider is a different peer than the workers


def _cfg(**over):
    data = {"name": "starve", "workload": "logreg-digits", "seed": 0, "workers": 3, "rounds": 4,
            "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5},
            "coding": {"scheme": "gc-cyclic", "stragglers": 1}, "transport": "tcp", "runtime": {"progress": False}}
    data.update(over)
    return load_config(None, data=data)


def _half_open(port: int, stop: threading.Event, counts: dict) -> None:
    """Hold one unauthenticated connection to the data plane: read the server's hello, answer nothing, and
    connect again as soon as the server closes it."""
    while not stop.is_set():
        try:
            s = socket.socket()
            s.bind((ATTACKER, 0))
            s.settimeout(0.5)
            s.connect(("127.0.0.1", port))
            counts["connected"] = counts.get("connected", 0) + 1
            while not stop.is_set():
                try:
                    if s.recv(64) == b"":
                        break
                except TimeoutError:
                    continue
        except OSError:
            stop.wait(0.05)
        finally:
            s.close()
        stop.wait(0.1)


@pytest.mark.slow
def test_half_open_data_connections_from_an_outsider_do_not_keep_workers_out(tmp_path):
    """40 half-open connections from one address, re-opened as soon as they close, for the whole run: the
    workers still open their data planes and the job ends with full-batch GD's model."""
    stop, counts, box = threading.Event(), {}, {}

    def started(coord, procs, address):
        box["coord"] = coord
        port = coord.data_server.port
        box["threads"] = [threading.Thread(target=_half_open, args=(port, stop, counts), daemon=True)
                          for _ in range(40)]
        for t in box["threads"]:
            t.start()

    try:
        summary = run_local(_cfg(), tmp_path, progress=False, on_started=started, token=TOKEN, respawn=False)
    finally:
        stop.set()
        for t in box.get("threads", []):
            t.join(10)
    assert summary["rounds_completed"] == 4
    ref = full_batch_gd("logreg-digits", seed=0, rounds=4, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5
    refused = summary["refused"]
    assert refused.get("data-plane-peer-busy", 0) >= 1, refused  # the outsider was turned away at the door
    assert counts["connected"] > MAX_HANDSHAKES_PER_PEER


def test_handshake_budget_is_per_peer_address():
    budget = HandshakeBudget(total=10, per_peer=3)
    a, b = peer_key(("10.0.0.1", 5)), peer_key(("10.0.0.2", 5))
    assert [budget.take(a) for _ in range(4)] == [None, None, None, "data-plane-peer-busy"]
    assert [budget.take(b) for _ in range(3)] == [None] * 3
    budget.give(a)
    assert budget.take(a) is None
    # one IPv6 host picks source addresses from its /64: one budget; an IPv4-mapped address is the IPv4 one
    assert peer_key(("2001:db8::1", 1, 0, 0)) == peer_key(("2001:db8::ffff", 1, 0, 0)) != peer_key(("2001:db9::1", 1))
    assert peer_key(("::ffff:10.0.0.1", 1, 0, 0)) == a


def _squat(address: str, n: int, stop: threading.Event, counts: dict) -> None:
    """A token holder that registers every id it can, every second, and never opens a Work stream."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.CoordinatorStub(channel)
    meta = (("authorization", f"Bearer {TOKEN}"),)
    try:
        while not stop.is_set():
            for i in range(n):
                try:
                    stub.Register(pb.RegisterRequest(hostname="squatter", requested_id=i), metadata=meta, timeout=5)
                    counts["held"] = counts.get("held", 0) + 1
                except grpc.RpcError as exc:
                    counts[exc.code().name] = counts.get(exc.code().name, 0) + 1
            stop.wait(1.0)
    finally:
        channel.close()


@pytest.mark.slow
def test_a_token_holder_re_registering_every_id_does_not_keep_the_job_from_starting(tmp_path):
    """The squatter takes every id before the workers come up and re-registers them every second; its
    reservations never attach, so the workers take them over and the job ends with full-batch GD's model."""
    stop, counts, box = threading.Event(), {}, {}

    def started(coord, procs, address):
        box["thread"] = threading.Thread(target=_squat, args=(address, coord.n, stop, counts), daemon=True)
        box["thread"].start()

    try:
        summary = run_local(_cfg(transport=None), tmp_path, progress=False, on_started=started, token=TOKEN,
                            respawn=False)
    finally:
        stop.set()
        if "thread" in box:
            box["thread"].join(10)
    assert summary["rounds_completed"] == 4
    ref = full_batch_gd("logreg-digits", seed=0, rounds=4, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5
    assert counts["held"] >= 3  # the squatter did hold ids (every one, at first)
    assert summary["refused"].get("job-full", 0) >= 1  # and once the workers had them, it was refused
