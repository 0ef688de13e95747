"""dcoord.join(): a user's own torchrun training loop on the coded all-reduce (examples/ddp_to_dcoord).

The end-to-end tests run the two example scripts as a user would (torchrun, 4 ranks, gloo, CPU) and compare
the parameters they save: plain DDP against the dcoord version uncoded, and the uncoded run against
gc-cyclic s = 1 with one rank made 5x slow (settings through $DCOORD_SET, the script unchanged).
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import dcoord
import dcoord.loop.host  # noqa: F401 - the fast tier imports every module (rank 0 runs them in a subprocess)
import dcoord.loop.member  # noqa: F401
from dcoord.errors import ConfigError
from dcoord.loop.batches import loader_batches

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ddp_to_dcoord"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "DCOORD_SET"):
    ENV.pop(_k, None)


def changed_lines(a: Path, b: Path) -> list[str]:
    """Lines removed from ``a`` or added in ``b`` (a unified diff without context)."""
    diff = difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_the_dcoord_example_differs_from_the_ddp_one_by_at_most_15_lines():
    lines = changed_lines(EXAMPLES / "train_ddp.py", EXAMPLES / "train_dcoord.py")
    assert 0 < len(lines) <= 15, "\n".join(lines)
    assert any("dcoord.join(" in line for line in lines)


def test_the_docs_show_the_examples_diff_as_it_is():
    page = (ROOT / "docs" / "your-loop.md").read_text()
    for line in changed_lines(EXAMPLES / "train_ddp.py", EXAMPLES / "train_dcoord.py"):
        assert line in page, line


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_loaders_rounds_are_the_union_of_the_ddp_ranks_batches(drop_last):
    """job.batches(loader) gives each step the samples DDP's ranks see at that step, for a sampler that pads
    (103 samples over 4 ranks) and one that cuts (drop_last), at a later epoch."""
    data = TensorDataset(torch.arange(103), torch.arange(103))
    ranks = []
    for r in range(4):
        s = DistributedSampler(data, num_replicas=4, rank=r, shuffle=True, seed=7, drop_last=drop_last)
        s.set_epoch(3)
        ranks.append(DataLoader(data, batch_size=5, sampler=s))
    ours = list(loader_batches(ranks[0]))
    theirs = list(zip(*[[x.tolist() for x, _ in loader] for loader in ranks]))
    assert len(ours) == len(theirs) == len(ranks[0])
    for got, want in zip(ours, theirs):
        assert sorted(got.tolist()) == sorted(sum(want, []))


def test_batches_refuse_a_loader_without_a_distributed_sampler():
    from dcoord.errors import DcoordError

    loader = DataLoader(TensorDataset(torch.arange(10), torch.arange(10)), batch_size=2)
    with pytest.raises(DcoordError, match="DistributedSampler"):
        next(loader_batches(loader))


def test_join_outside_torchrun_says_how_to_start_it():
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        dcoord.join(scheme="gc-cyclic", stragglers=1)


# -- end to end (torchrun, 4 ranks) ---------------------------------------------------------------------------
def torchrun(script: Path, out: Path, env: dict | None = None, cwd: Path | None = None
             ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           "--max-restarts", "0", str(script), str(out)]
    p = subprocess.run(cmd, cwd=cwd or out.parent, env={**ENV, **(env or {})}, capture_output=True, text=True,
                       timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-5000:]
    return p


def max_diff(a: Path, b: Path) -> float:
    sa, sb = torch.load(a), torch.load(b)
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """DDP, the dcoord version uncoded, and gc-cyclic s=1 with rank 1 5x slow (each 50 steps)."""
    d = tmp_path_factory.mktemp("loop")
    torchrun(EXAMPLES / "train_ddp.py", d / "ddp.pt")
    (d / "uncoded").mkdir()
    torchrun(EXAMPLES / "train_dcoord.py", d / "uncoded" / "model.pt",
             {"DCOORD_SET": "coding.scheme=uncoded;coding.stragglers=0"})
    (d / "slow").mkdir()
    # compute here is a few ms; 20 ms per part emulated makes rank 1's 5x slowdown outlast the others' rounds
    torchrun(EXAMPLES / "train_dcoord.py", d / "slow" / "model.pt",
             {"DCOORD_SET": "inject.model=fixed;inject.workers=[1];inject.slowdown=5;runtime.emulate_part_s=0.02"})
    return d


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_uncoded_without_stragglers_equals_ddp_after_50_steps(runs):
    summary = json.loads((runs / "uncoded" / "runs" / "loop" / "summary.json").read_text())
    assert summary["rounds_completed"] == 50 and summary["scheme"] == "uncoded"
    assert summary["collective"]["digest_checks"] >= 4  # the ranks' parameters were compared, and agreed
    assert max_diff(runs / "uncoded" / "model.pt", runs / "ddp.pt") < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_slow_rank_gc_cyclic_equals_the_uncoded_run_and_its_late_work_is_dropped(runs):
    out = runs / "slow" / "runs" / "loop"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 50 and summary["scheme"] == "gc-cyclic"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"round"' in x]
    slow_rounds = [r["round"] for r in recs if 1 in r["stragglers"]]
    assert len(slow_rounds) >= 10  # the slow rank was decoded around, not waited for
    assert summary["dropped_late_results"] >= 1  # its late messages reached the coordinator and were dropped
    assert max(r["decode_residual"] for r in recs) < 1e-9
    assert max_diff(runs / "slow" / "model.pt", runs / "uncoded" / "model.pt") < 1e-5
    assert np.isfinite(summary["final_loss"])


# -- one rank, in a process of its own (a torchrun environment of world size 1: seconds, not minutes) --------
def one_rank(tmp_path: Path, scheme: str, settings: str = "") -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "TORCHELASTIC_RUN_ID": "test", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "DCOORD_SET": settings}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "loop_one_rank.py"), str(tmp_path / "run"), scheme],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_one_rank_trains_through_the_coordinator_as_plain_torch_does(tmp_path):
    """Adam, StepLR, clipping, bfloat16 autocast and a state_dict round trip around the wrapper: the same
    parameters as the plain loop (tests/loop_one_rank.py)."""
    p = one_rank(tmp_path, "uncoded")
    assert p.returncode == 0, p.stderr[-3000:]
    diff = float(p.stdout.split("max_diff=")[1].split()[0])
    assert diff < 1e-6
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 6 and summary["collective"]["digest_checks"] >= 1
    assert np.isfinite(summary["final_loss"])


def test_a_code_the_loop_cannot_run_is_one_line_and_leaves_nothing(tmp_path):
    p = one_rank(tmp_path, "m-sgc", "coding.B=1;coding.W=2;coding.lambda=1")  # a sequential code: 2 models
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "coding.scheme" in lines[0] and "gc-cyclic" in lines[0], p.stderr
    assert not (tmp_path / "run").exists()
