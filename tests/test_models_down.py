"""Models down the launcher's data plane (transport/models_down.py), over an in-process channel.

The channel stands in for the process group: ``send(dst, arr)`` copies the array into the destination's
FIFO, ``recv(arr)`` fills the array from it (as gloo's recv and MPI's Irecv fill a posted buffer, and fail
when the sizes differ). Real launches (torchrun, mpirun) are in test_launch_models.py.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from dcoord.errors import DataPlaneError
from dcoord.runtime.transport.base import KIND_END
from dcoord.runtime.transport.models_down import (
    HEADER_LEN,
    KIND_MODEL,
    ModelReceiver,
    ModelSender,
    model_header,
)


class Channel:
    """One FIFO per destination rank; sends never block (a posted receive is always waiting)."""

    def __init__(self, ranks: range) -> None:
        self.q = {r: queue.Queue() for r in ranks}

    def send(self, dst: int, arr: np.ndarray) -> None:
        self.q[dst].put(np.array(arr, copy=True))

    def recv_for(self, rank: int):
        def recv(arr: np.ndarray) -> None:
            got = self.q[rank].get(timeout=10)
            if got.size != arr.size or got.dtype != arr.dtype:
                raise RuntimeError(f"size mismatch: {got.size} {got.dtype} into {arr.size} {arr.dtype}")
            arr[...] = got
        return recv


def test_models_arrive_in_order_bit_for_bit_and_end_wakes_a_waiting_worker():
    ch = Channel(range(1, 3))
    sender = ModelSender(ch.send, workers=[0, 1])
    recv = [ModelReceiver(ch.recv_for(w + 1), max_count=100) for w in (0, 1)]
    rng = np.random.default_rng(0)
    sent = {}
    for v in range(5):
        p = rng.standard_normal(50).astype(np.float32)
        sent[v] = p
        for w in (0, 1):
            assert sender.connected(w)
            assert sender.send_model(w, 0, v, p)
    for w in (0, 1):
        for v in range(5):
            got = recv[w].model(0, v, timeout=5)
            assert got.dtype == np.float32 and np.array_equal(got, sent[v])
    assert sender.bytes_out == 2 * 5 * 50 * 4
    assert [r.received for r in recv] == [5, 5] and [r.bytes_in for r in recv] == [1000, 1000]
    # a straggler waiting for a model the coordinator never sends: END (job over) wakes it at once
    waiter: list = []

    def wait() -> None:
        try:
            recv[1].model(0, 99, timeout=30)
        except DataPlaneError as exc:
            waiter.append(str(exc))

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    sender.close()
    assert not sender.connected(0)  # after close, models go nowhere (and send_model says so)
    assert not sender.send_model(0, 0, 9, sent[0])
    t.join(25)
    # woken by END, not by its own 30 s timeout (that would say "not received within 30 s")
    assert not t.is_alive() and waiter and "job is over" in waiter[0]
    assert sender.join(5) and all(r.join(5) for r in recv)
    assert all(r.ended for r in recv)


def test_keep_models_never_drops_newer_versions():
    """A straggler's superseded assignments brought later models: keeping round r's must not drop them."""
    ch = Channel(range(1, 2))
    sender = ModelSender(ch.send, workers=[0])
    r = ModelReceiver(ch.recv_for(1), max_count=10)
    for v in range(6):
        sender.send_model(0, 0, v, np.full(3, float(v)))
    sender.send_model(0, 1, 2, np.full(3, -1.0))  # another model's version 2
    r.model(1, 2, timeout=5)
    r.keep_models({(0, 3)})
    assert sorted(r.models) == [(0, 3), (0, 4), (0, 5), (1, 2)]
    assert float(r.model(0, 5, timeout=1)[0]) == 5.0
    with pytest.raises(DataPlaneError, match="model 0 version 1: not received within 0.2 s"):
        r.model(0, 1, timeout=0.2)
    sender.close()
    assert r.join(5)


def test_send_model_never_blocks_the_caller():
    """The coordinator's event loop queues; a slow peer only holds its own sender thread."""
    gate = threading.Event()
    got: list[int] = []

    def slow_send(dst: int, arr: np.ndarray) -> None:
        if dst == 1:
            gate.wait(120)
        got.append(dst)

    sender = ModelSender(slow_send, workers=[0, 1])
    for v in range(20):
        sender.send_model(0, 0, v, np.zeros(1000, np.float32))
        sender.send_model(1, 0, v, np.zeros(1000, np.float32))
    # every call returned while rank 1's first send is still held at the gate: none waited for the peer
    assert got.count(1) == 0 and not gate.is_set()
    deadline = time.monotonic() + 5
    while got.count(2) < 40 and time.monotonic() < deadline:  # worker 1 (rank 2) goes on while rank 1 waits
        time.sleep(0.01)
    assert got.count(2) == 40 and got.count(1) == 0
    gate.set()
    sender.close()
    assert sender.join(5)
    assert got.count(1) == 41  # 20 headers + 20 models + END


def test_a_failed_send_sends_that_workers_models_back_to_grpc():
    def send(dst: int, arr: np.ndarray) -> None:
        if dst == 2:
            raise RuntimeError("Connection closed by peer")

    sender = ModelSender(send, workers=[0, 1])
    assert sender.send_model(1, 0, 0, np.zeros(4))
    deadline = time.monotonic() + 5
    while sender.connected(1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sender.connected(1) and not sender.send_model(1, 0, 1, np.zeros(4))
    assert sender.connected(0)
    with pytest.raises(DataPlaneError, match="model dtype int64"):
        sender.send_model(0, 0, 0, np.zeros(4, np.int64))
    sender.close()


@pytest.mark.parametrize("header, why", [
    ([9, 0, 4, 0, 0, 0], "unknown message kind 9"),
    ([KIND_MODEL, 1, 4, 0, 0, 0], "sequence number 1, expected 0"),
    ([KIND_MODEL, 0, 11, 0, 0, 0], "bad header (count 11"),
    ([KIND_MODEL, 0, -1, 0, 0, 0], "bad header (count -1"),
    ([KIND_MODEL, 0, 4, 7, 0, 0], "dtype code 7"),
    ([KIND_MODEL, 0, 4, 0, -3, 0], "model -3"),
])
def test_bad_headers_stop_the_stream_with_a_clear_error(header, why):
    ch = Channel(range(1, 2))
    ch.q[1].put(np.array(header, dtype=np.int64))
    r = ModelReceiver(ch.recv_for(1), max_count=10)
    assert r.join(5)
    with pytest.raises(DataPlaneError) as info:
        r.model(0, 0, timeout=5)
    assert why in str(info.value) and "model 0 version 0" in str(info.value)
    assert r.models == {}


def test_headers_and_dtypes():
    h = model_header(3, 1, 7, np.zeros(5, np.float64))
    assert h.dtype == np.int64 and h.size == HEADER_LEN and h.tolist() == [KIND_MODEL, 3, 5, 1, 1, 7]
    assert model_header(4).tolist() == [KIND_END, 4, 0, 0, 0, 0]
    with pytest.raises(DataPlaneError, match="float32/float64"):
        model_header(0, 0, 0, np.zeros(2, np.int32))


def test_large_models_land_in_reused_buffers():
    """Once a version is dropped (keep_models), its buffer receives a later one: no fresh 4 MB per round."""
    ch = Channel(range(1, 2))
    sender = ModelSender(ch.send, workers=[0])
    r = ModelReceiver(ch.recv_for(1), max_count=1 << 21)
    n = 1 << 20
    for v in range(8):
        sender.send_model(0, 0, v, np.full(n, float(v), np.float32))
        got = r.model(0, v, timeout=10)
        assert got[0] == v and got[-1] == v
        del got
        r.keep_models({(0, v)})
    sender.close()
    assert r.join(5)
    assert r.pool.allocated <= 3 and r.pool.reused >= 5
