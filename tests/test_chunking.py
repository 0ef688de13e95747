"""Chunked payloads on the gRPC stream: exact reassembly, bounded memory, bad byte counts rejected."""

import numpy as np
import pytest
import torch
from reference import full_batch_gd, max_rel_diff

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.runtime.local import run_local
from dcoord.runtime.tensors import PayloadError, from_proto
from dcoord.wire.chunking import ChunkAssembler, pack_result


def _pack(arrays: list[np.ndarray], chunk: int) -> list[pb.WorkerMessage]:
    r = pb.Result(job_id="j", round=3, worker_id=1)
    for k in range(len(arrays)):
        r.tasks.add(job=k)
    return pack_result(r, arrays, chunk)


def _replay(msgs: list[pb.WorkerMessage], max_bytes: int = 1 << 30) -> tuple[pb.Result, bool]:
    asm = ChunkAssembler(max_bytes)
    for m in msgs[:-1]:
        assert m.HasField("chunk")
        asm.add(m.chunk)
    res = pb.Result()
    res.ParseFromString(msgs[-1].result.SerializeToString())  # as received off the wire
    return res, (asm.attach(res) if res.payload_chunked else True)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 10_000])
def test_chunks_reassemble_exactly(chunk):
    rng = np.random.default_rng(chunk)
    arrays = [rng.standard_normal(123), rng.standard_normal(77).astype(np.float32), rng.standard_normal(500)]
    msgs = _pack(arrays, chunk)
    total = sum(a.nbytes for a in arrays)
    assert (len(msgs) > 1) == (chunk < total)
    res, ok = _replay(msgs)
    assert ok
    for tr, a in zip(res.tasks, arrays):
        np.testing.assert_array_equal(from_proto(tr.payload), a)


def test_small_payloads_stay_inline():
    msgs = _pack([np.ones(10)], 1 << 20)
    assert len(msgs) == 1 and not msgs[0].result.payload_chunked


def test_missing_or_extra_chunk_bytes_are_caught_by_validation():
    msgs = _pack([np.ones(100), np.ones(100)], 128)
    res, ok = _replay(msgs[:3] + msgs[-1:])  # chunks lost
    assert ok
    with pytest.raises(PayloadError):
        for tr in res.tasks:
            from_proto(tr.payload)
    extra = [pb.WorkerMessage(chunk=pb.PayloadChunk(data=b"x" * 8))]
    res, ok = _replay(msgs[:-1] + extra + msgs[-1:])
    with pytest.raises(PayloadError):
        from_proto(res.tasks[-1].payload)


def test_a_rogue_stream_cannot_buffer_without_bound():
    msgs = _pack([np.ones(1000)], 100)
    res, ok = _replay(msgs, max_bytes=4000)
    assert not ok
    asm = ChunkAssembler(10)
    asm.add(pb.PayloadChunk(data=b"x" * 11))
    assert asm.size == 0  # nothing kept past the bound


@pytest.mark.slow
def test_chunked_run_equals_full_batch_gd(tmp_path):
    cfg = load_config(None, data={
        "name": "chunked", "workload": "logreg-digits", "workers": 4, "rounds": 10,
        "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
        "inject": {"model": "fixed", "workers": [2], "slowdown": 5},
        "runtime": {"progress": False, "stream_chunk_bytes": 1000},  # 650 float64 values: 6 chunks a task
    })
    summary = run_local(cfg, tmp_path, progress=False)
    assert summary["rejected_results"] == {}
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), full_batch_gd("logreg-digits", 0, 10, 0.5)) < 1e-5
