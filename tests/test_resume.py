"""Coordinator crash and resume, end to end with real processes and signals.

`dcoord run` is started as a process, SIGKILLed at a random round (no chance to clean up), then
`dcoord run --resume` finishes the job; the final model must equal an uninterrupted run with the same seed
(to 1e-6 relative for coded runs, whose rounds may decode from different survivor sets; bit for bit for
an uncoded run), every round must appear exactly once in metrics.jsonl, and private runs must report the
same epsilon. The killed run's workers must exit by themselves (none left orphaned).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from reference import max_rel_diff
from run_metrics import round_numbers

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECRET = "resume-test-secret-0123456789abcdef"
BASE = {"workload": "logreg-digits", "seed": 0, "batch_size": None,
        # heartbeat_s 3: a worker counts as gone only after 30 s of silence, so a heavily loaded test box does
        # not make token mode reroute a token (that changes the walk, legitimately, but not identically)
        "runtime": {"progress": False, "checkpoint_every": 3, "keep_checkpoints": 2, "heartbeat_s": 3}}
JOBS = {
    "uncoded": {"workers": 4, "rounds": 30, "coding": {"scheme": "uncoded"}, "optimizer": {"lr": 0.5}},
    "gc-cyclic": {"workers": 5, "rounds": 30, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
                  "optimizer": {"lr": 0.5, "momentum": 0.5},
                  "inject": {"model": "fixed", "workers": [2], "slowdown": 5}},
    "m-sgc": {"workers": 4, "rounds": 24, "coding": {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1},
              "optimizer": {"lr": [0.5, 0.25]}, "runtime": {"emulate_part_s": 0.002},
              "inject": {"model": "gilbert-elliott", "p_good_to_bad": 0.15, "p_bad_to_good": 0.5, "slowdown": 10}},
    "token-srrw": {"mode": "token", "workers": 8, "rounds": 60, "shards": "label-skew", "optimizer": {"lr": 1.0},
                   "token": {"chain": "srrw", "base": "mhrw", "alpha": 5, "tokens": 2, "lr": 0.5,
                             "graph": {"kind": "watts-strogatz", "k": 4, "p": 0.1, "seed": 1}}},
    "diff2": {"workers": 4, "rounds": 24, "optimizer": {"lr": 0.5},
              "coding": {"scheme": "gc-cyclic", "stragglers": 1},
              "inject": {"model": "fixed", "workers": [2], "slowdown": 5},
              "privacy": {"mechanism": "diff2", "noise_multiplier": 2.0, "clip": 1.0, "clip_diff": 10.0,
                          "restart_every": 4}},
}


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), DCOORD_NOISE_SECRET=SECRET)


def _job(tmp_path: Path, kind: str) -> Path:
    data = {"name": kind, **BASE, **JOBS[kind]}
    data["runtime"] = {**BASE["runtime"], **JOBS[kind].get("runtime", {})}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dcoord(*args: str) -> list[str]:
    return [sys.executable, "-m", "dcoord", *args]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _load(run: Path):
    m = torch.load(run / "model.pt")
    return m if isinstance(m, list) else [m]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("kind", list(JOBS))
def test_sigkill_coordinator_then_resume_equals_uninterrupted(tmp_path, kind):
    job = _job(tmp_path, kind)
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_dcoord("run", str(job), "--out", str(ref), "--quiet"), env=_env(), check=True,
                   capture_output=True, timeout=400)
    total = len(round_numbers(ref))
    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randint(5, total - 6)
    proc = subprocess.Popen(_dcoord("run", str(job), "--out", str(run), "--quiet"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    workers: set[int] = set()
    while len(round_numbers(run)) < kill_at and proc.poll() is None and time.monotonic() < deadline:
        workers |= set(_children(proc.pid))
        time.sleep(0.01)
    workers |= set(_children(proc.pid))
    assert proc.poll() is None, f"run finished before the kill at round {kill_at} (seed {seed})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = len(round_numbers(run))
    # the workers notice the coordinator is gone and exit on their own (the limit is only a hang guard; that
    # an injected straggler's delay ends when the stream closes, rather than being slept out, is
    # test_a_closed_stream_ends_an_injected_delay)
    end = time.monotonic() + 180
    while any(_alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers of the killed coordinator did not exit"
    assert not (run / "summary.json").exists()

    res = subprocess.run(_dcoord("run", str(job), "--resume", str(run), "--quiet"), env=_env(),
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr
    rounds = round_numbers(run)
    assert rounds == list(range(total)), f"rounds not each exactly once after a kill at {killed_after} (seed {seed})"
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events if e["event"] == "resume"] == ["resume"]
    a, b = _load(run), _load(ref)
    for x, y in zip(a, b, strict=True):
        if kind == "uncoded":
            assert all(torch.equal(x[k], y[k]) for k in x), f"uncoded resume not bit for bit (seed {seed})"
        else:
            assert max_rel_diff(x, y) < 1e-6, f"{kind}: resumed model differs (kill after {killed_after}, seed {seed})"
    s_run = json.loads((run / "summary.json").read_text())
    s_ref = json.loads((ref / "summary.json").read_text())
    assert s_run["rounds_completed"] == s_ref["rounds_completed"]
    if kind == "diff2":
        assert s_run["epsilon"] == s_ref["epsilon"]
    if kind == "token-srrw":
        assert s_run["visit_counts"] == s_ref["visit_counts"]


@pytest.mark.timeout(120)
def test_a_closed_stream_ends_an_injected_delay():
    """A straggler sleeping out a 600 s injected delay wakes when its coordinator's stream closes: the wait
    says True (woken) rather than False (its timeout ran out)."""
    import threading

    from dcoord.runtime.worker.link import Inbox

    inbox, woke = Inbox(), []
    t = threading.Thread(target=lambda: woke.append(inbox.wait_closed_or_shutdown(timeout=600)))
    t.start()
    inbox.close("coordinator gone")
    t.join(100)
    assert not t.is_alive() and woke == [True]


def _start(job: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_dcoord("run", str(job), "--out", str(out), "--quiet", *extra), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_stops_workers_and_says_how_to_resume(tmp_path, sig):
    job = _job(tmp_path, "gc-cyclic")
    data = yaml.safe_load(job.read_text())
    data["rounds"] = 150
    data["runtime"]["checkpoint_every"] = 1000  # only the signal's checkpoint
    data["runtime"]["emulate_part_s"] = 0.05  # ~0.1 s rounds: the signal lands mid-run even on a loaded box
    job.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    proc = _start(job, run)
    deadline = time.monotonic() + 400
    workers: set[int] = set()
    while len(round_numbers(run)) < 8 and time.monotonic() < deadline:
        workers |= set(_children(proc.pid))
        time.sleep(0.02)
    workers |= set(_children(proc.pid))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "--resume" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not any(_alive(w) for w in workers), "a worker outlived `dcoord run`"
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts, "no checkpoint written on the signal"
    done = len(round_numbers(run))
    assert ckpts[-1].name == f"ckpt-{done:08d}.pt"
    # and the printed command continues it
    cmd = err.split("resume with: ", 1)[1].strip()
    assert cmd.endswith(f"--resume {run}")
    data["rounds"] = 150
    res = subprocess.run(_dcoord("run", str(job), "--resume", str(run), "--quiet"), env=_env(),
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr
    assert round_numbers(run) == list(range(150))


@pytest.mark.timeout(900)
def test_resume_or_new_continues_a_stopped_run_and_starts_beside_a_finished_one(tmp_path):
    """The same command line, run again (a re-applied Kubernetes Job): it resumes the newest run of the
    series when that run stopped before its end, and otherwise starts the next one, leaving finished runs."""
    job = _job(tmp_path, "gc-cyclic")
    data = yaml.safe_load(job.read_text())
    data["rounds"] = 16
    data["runtime"]["emulate_part_s"] = 0.05  # ~0.1 s rounds: the signal lands mid-run even on a loaded box
    job.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    again = _dcoord("run", str(job), "--out", str(run), "--quiet", "--resume-or-new")
    proc = subprocess.Popen(again, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while len(round_numbers(run)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and f"a new run in {run}" in err, err
    assert not (run / "summary.json").exists() and list((run / "checkpoints").glob("ckpt-*.pt"))

    res = subprocess.run(again, env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0 and f"resuming {run}" in res.stderr, res.stderr
    assert round_numbers(run) == list(range(16))
    finished = (run / "summary.json").read_bytes()

    res = subprocess.run(again, env=_env(), capture_output=True, text=True, timeout=400)
    second = tmp_path / "run-2"
    assert res.returncode == 0 and f"a new run in {second}" in res.stderr, res.stderr
    assert round_numbers(second) == list(range(16))
    assert (run / "summary.json").read_bytes() == finished  # the finished run is left as it was
    assert max_rel_diff(torch.load(second / "model.pt"), torch.load(run / "model.pt")) < 1e-6
