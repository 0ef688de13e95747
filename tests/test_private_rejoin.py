"""A private run (DIFF2, trust: workers) whose coordinator is SIGKILLed and resumed with --resume while the
SAME worker processes stay up: they re-register with the resumed coordinator and answer the rounds it runs
again (the same questions: identical messages, runtime/worker/private.py AnswerLedger), and the run ends equal to
an uninterrupted one (1e-6 relative) with the same epsilon. Real processes, loopback only."""

import json
import os
import random
import socket
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
SECRET = "rejoin-test-secret-0123456789abcdef"
ROUNDS = 24
JOB = {
    "name": "private-rejoin", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": ROUNDS,
    "batch_size": None, "optimizer": {"lr": 0.5},
    "coding": {"scheme": "gc-cyclic", "stragglers": 1},
    "inject": {"model": "fixed", "workers": [2], "slowdown": 5},
    "privacy": {"mechanism": "diff2", "noise_multiplier": 2.0, "clip": 1.0, "clip_diff": 10.0, "restart_every": 4,
                "trust": "workers"},
    # a checkpoint every round: the rounds a resumed coordinator runs again then start from checkpointed
    # parameters, the very ones the workers answered for (a longer interval re-runs rounds whose parameters
    # came from a decode that may round differently, and the workers refuse those: see the README);
    # heartbeat_s 3: a loaded box does not make the coordinator count a worker as gone
    "runtime": {"progress": False, "checkpoint_every": 1, "keep_checkpoints": 2, "heartbeat_s": 3,
                "emulate_part_s": 0.02},
}


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), DCOORD_NOISE_SECRET=SECRET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_private_workers_rejoin_a_resumed_coordinator_and_the_model_equals_an_uninterrupted_run(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    ref, run, addr = tmp_path / "ref", tmp_path / "run", f"127.0.0.1:{_free_port()}"
    subprocess.run([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(ref), "--quiet"], env=_env(),
                   check=True, capture_output=True, timeout=300)
    assert round_numbers(ref) == list(range(ROUNDS))
    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randint(5, ROUNDS - 6)

    def coordinator(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dcoord", "coordinator", str(job), *extra, "--listen", addr,
                                 "--quiet"], env=_env(), stderr=subprocess.PIPE, text=True)

    coord = coordinator("--out", str(run))
    workers: list[subprocess.Popen] = []
    try:
        coord.stderr.readline()  # listening
        workers = [subprocess.Popen([sys.executable, "-m", "dcoord", "worker", "--coordinator", addr, "--id", str(i),
                                     "--connect-timeout", "120"], env=_env(), stderr=subprocess.PIPE, text=True)
                   for i in range(JOB["workers"])]
        deadline = time.monotonic() + 300
        while len(round_numbers(run)) < kill_at:
            assert coord.poll() is None, f"the coordinator ended before the kill: {coord.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.01)
        coord.kill()
        coord.wait()
        killed_after = len(round_numbers(run))
        assert killed_after < ROUNDS and not (run / "summary.json").exists()
        time.sleep(0.5)
        assert all(w.poll() is None for w in workers), "a private worker exited instead of waiting to rejoin"
        coord = coordinator("--resume", str(run))
        _, err = coord.communicate(timeout=300)
        assert coord.returncode == 0, err
        for w in workers:
            _, werr = w.communicate(timeout=60)
            assert w.returncode == 0, werr
            assert "rejoined the coordinator" in werr, werr
            assert "refuses round" not in werr, werr  # every question asked again was the same question
    finally:
        for p in [coord, *workers]:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert round_numbers(run) == list(range(ROUNDS)), f"rounds not each exactly once (kill after {killed_after}, seed {seed})"
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events if e["event"] == "resume"] == ["resume"]
    a, b = torch.load(run / "model.pt"), torch.load(ref / "model.pt")
    assert max_rel_diff(a, b) < 1e-6, f"resumed private run differs (kill after {killed_after}, seed {seed})"
    s_run, s_ref = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    assert s_run["rounds_completed"] == s_ref["rounds_completed"] == ROUNDS
    assert s_run["epsilon"] == s_ref["epsilon"]
