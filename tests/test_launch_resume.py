"""Resume under torchrun and mpirun through ``python -m dcoord.launch --resume RUN_DIR`` (real processes).

A launch with a checkpoint every round and slowed rounds is SIGKILLed as a whole (the launcher's process
group: the launcher and every rank, no chance to clean up) once metrics.jsonl has a few rounds; the same
command with ``--resume RUN_DIR`` then finishes it. The final model must equal an uninterrupted launch's
(bit for bit uncoded; 1e-6 relative for gc-cyclic, whose rounds may decode from different survivor sets)
and every round must be in metrics.jsonl exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from reference import max_rel_diff
from run_metrics import round_numbers
from test_launch import ENV, ROOT, _have_mpi, mpirun, torchrun

pytestmark = pytest.mark.slow

ROUNDS = 24
KILL_AFTER = 6  # rounds in metrics.jsonl before the kill
JOBS = {
    "uncoded": {"workers": 2, "coding": {"scheme": "uncoded"}},
    "gc-cyclic": {"workers": 3, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
                  "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5}},
}


def _job(tmp_path: Path, kind: str, rounds: int = ROUNDS) -> Path:
    data = {"name": f"launch-resume-{kind}", "workload": "logreg-digits", "seed": 0, "rounds": rounds,
            "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5}, "device": "cpu",
            # a checkpoint every round; ~0.1 s rounds so the kill lands mid-run on a loaded box
            "runtime": {"progress": False, "checkpoint_every": 1, "keep_checkpoints": 2, "emulate_part_s": 0.05},
            **JOBS[kind]}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ppid_pgid(pid: int) -> tuple[int, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), int(fields[2])) if fields[0] != "Z" else None


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (torchrun starts each rank in its own session, so the launcher's
    process group alone does not hold the ranks)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (pp := _ppid_pgid(int(d.name))) is not None:
            parents[int(d.name)] = pp[0]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _kill_everything(pid: int) -> set[int]:
    """SIGKILL the launcher's process group, every process below the launcher and their process groups, at
    once (a machine crash, as far as the run directory can tell). Returns the pids that were killed."""
    procs = _descendants(pid) | {pid}
    groups = {g for p in procs if (pg := _ppid_pgid(p)) is not None for g in [pg[1]]}
    for g in groups - {os.getpgrp()}:  # never this test's own group
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return procs


def _launch(launcher: str, nproc: int, *args: str) -> list[str]:
    return torchrun(nproc, "-m", "dcoord.launch", *args) if launcher == "torchrun" else \
        mpirun(nproc, "-m", "dcoord.launch", *args)


def _kill_and_resume(tmp_path: Path, launcher: str, kind: str, kill: str = "everything", rounds: int = ROUNDS) -> None:
    """``kill``: ``everything`` (the launcher and every rank at once) or ``launcher`` (torchrun's agent only:
    its ranks, each in a session of its own, must notice and stop by themselves)."""
    job = _job(tmp_path, kind, rounds)
    nproc = JOBS[kind]["workers"] + 1
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_launch(launcher, nproc, str(job), "--out", str(ref), "--quiet"), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert round_numbers(ref) == list(range(rounds))

    cmd = _launch(launcher, nproc, str(job), "--out", str(run), "--quiet")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: the launcher and every rank
    try:
        deadline = time.monotonic() + 90
        while len(round_numbers(run)) < KILL_AFTER:
            assert proc.poll() is None, f"the launch ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the launch did not get going"
            time.sleep(0.02)
        if kill == "everything":
            killed = _kill_everything(proc.pid)
        else:
            killed = _descendants(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert len(killed) >= nproc, f"found {len(killed)} processes of the launch, expected >= {nproc}"
        end = time.monotonic() + 30
        while any(_ppid_pgid(p) for p in killed) and time.monotonic() < end:
            time.sleep(0.1)
        assert not any(_ppid_pgid(p) for p in killed), "a process of the launch outlived the SIGKILL"
    finally:
        if proc.poll() is None:
            _kill_everything(proc.pid)
        proc.stderr.close()
    killed_after = len(round_numbers(run))
    assert killed_after < rounds and not (run / "summary.json").exists()
    assert list((run / "checkpoints").glob("ckpt-*.pt")), "no checkpoint before the kill"

    res = subprocess.run(cmd + ["--resume", str(run)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert round_numbers(run) == list(range(rounds)), f"rounds not each exactly once after a kill at {killed_after}"
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events if e["event"] == "resume"] == ["resume"]
    s_run, s_ref = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    assert s_run["rounds_completed"] == s_ref["rounds_completed"] == rounds
    a, b = torch.load(run / "model.pt"), torch.load(ref / "model.pt")
    if kind == "uncoded":
        assert all(torch.equal(a[k], b[k]) for k in b), f"uncoded resume not bit for bit (kill at {killed_after})"
    else:
        assert max_rel_diff(a, b) < 1e-6, f"resumed model differs (kill at {killed_after})"
    # a worker rank that stopped before rank 0 drained its data plane is counted there (and kept in the
    # checkpoint taken on the stop); nothing else may be rejected
    allowed = {"data-plane"} if kill == "launcher" else set()
    assert set(s_run["rejected_results"]) <= allowed, s_run["rejected_results"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", list(JOBS))
def test_torchrun_sigkill_then_resume_equals_uninterrupted(tmp_path, kind):
    _kill_and_resume(tmp_path, "torchrun", kind)


@pytest.mark.timeout(240)
def test_ranks_stop_when_torchrun_alone_is_killed_and_the_run_resumes(tmp_path):
    """SIGKILL torchrun's agent only: every rank stops within seconds (none keeps running the job next to a
    relaunch), and --resume finishes the run bit for bit."""
    # orphaned ranks notice the agent's death by polling: the job must outlast that even on a loaded machine
    # (24 rounds once finished, about 1 s after the kill, before the ranks noticed)
    _kill_and_resume(tmp_path, "torchrun", "uncoded", kill="launcher", rounds=120)


@pytest.mark.timeout(240)
@pytest.mark.skipif(_have_mpi() is not None, reason=f"MPI launch: {_have_mpi()}")
def test_mpirun_sigkill_then_resume_equals_uninterrupted(tmp_path):
    _kill_and_resume(tmp_path, "mpirun", "uncoded")
