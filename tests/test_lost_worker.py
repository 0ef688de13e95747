"""A worker SIGKILLed mid-run is not silent: the console says which worker, when, and the code's straggler
slack left; summary.json has a membership section; ``dcoord status RUN_DIR`` shows it.

One real ``dcoord run`` (gc-cyclic, s = 1, four workers, no restarts) is started in a subprocess; the test
kills worker 1 (a child of that process, found in /proc) once a few rounds are in metrics.jsonl, so the
run is still going, and then reads each output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROUNDS = 120
JOB = {
    "name": "lostw", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": ROUNDS,
    "optimizer": {"name": "sgd", "lr": 0.5},
    "coding": {"scheme": "gc-cyclic", "stragglers": 1},
    # rounds take a little while (so the run goes on after the kill); short heartbeats; a killed worker
    # stays dead
    "runtime": {"heartbeat_s": 0.2, "restart_workers": False, "emulate_part_s": 0.02, "checkpoint_every": 0},
}
KILLED = 1


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _worker_pid(run_pid: int, worker: int) -> int | None:
    """The pid of ``dcoord worker --id WORKER`` among the run's own child processes."""
    for child in _children(run_pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and b"--id" in argv and argv[argv.index(b"--id") + 1] == str(worker).encode():
            return child
    return None


def _rounds_logged(out: Path) -> int:
    try:
        return sum('"round"' in line for line in (out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """(console output, run directory) of a run whose worker 1 was SIGKILLed after round 3."""
    tmp = tmp_path_factory.mktemp("lost")
    job, out = tmp / "job.yaml", tmp / "run"
    job.write_text(yaml.safe_dump(JOB))
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while _rounds_logged(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _worker_pid(proc.pid, KILLED)
        assert pid is not None and proc.poll() is None, "the run ended before a worker could be killed"
        os.kill(pid, signal.SIGKILL)
        killed_after = _rounds_logged(out)
        text, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text.decode(errors="replace")
    assert killed_after < ROUNDS, "the run had finished when the worker was killed"
    return text.decode(errors="replace"), out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_console_names_the_lost_worker_and_the_slack_left(killed_run):
    text, _ = killed_run
    lines = [ln for ln in text.splitlines() if f"worker {KILLED} lost at round" in ln]
    assert len(lines) == 1, text
    line = lines[0]
    assert "connection closed" in line and "tolerates 1 straggler" in line, line
    assert "none left: every round now waits for its slowest worker" in line, line
    # the summary table says it too
    assert "workers lost" in text and f"worker {KILLED} at round" in text, text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_summary_json_has_the_membership_section(killed_run):
    _, out = killed_run
    summary = json.loads((out / "summary.json").read_text())
    ms = summary["membership"]
    assert ms["lost"] == [KILLED] and ms["alive_at_end"] == 3, ms
    assert (ms["stragglers_tolerated"], ms["slack_left"]) == (1, 0), ms
    (ev,) = ms["events"]
    assert (ev["kind"], ev["worker"], ev["reason"]) == ("lost", KILLED, "its connection closed"), ev
    assert 0 <= ev["round"] < ROUNDS and ev["slack_left"] == 0 and ev["alive"] == 3, ev
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    alive = [r["workers_alive"] for r in rounds if "round" in r]
    assert alive[0] == 4 and alive[-1] == 3 and sorted(alive, reverse=True) == alive, alive
    lost = [r for r in rounds if r.get("event") == "worker-lost"]
    assert [(r["worker"], r["slack_left"]) for r in lost] == [(KILLED, 0)], lost


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dcoord_status_of_the_run_directory_shows_it(killed_run):
    _, out = killed_run
    res = subprocess.run([sys.executable, "-m", "dcoord", "status", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert f"done: round {ROUNDS}/{ROUNDS}" in line and "workers 3/4" in line, line
    assert f"lost: worker {KILLED} at round" in line and "none left" in line, line
    res = subprocess.run([sys.executable, "-m", "dcoord", "status", str(out), "--json"], capture_output=True,
                         text=True, timeout=120)
    st = json.loads(res.stdout)
    assert [e["worker"] for e in st["lost_workers"]] == [KILLED] and st["slack_left"] == 0, st


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_silent_worker_is_lost_after_the_heartbeat_timeout_and_back_when_heard_again(tmp_path):
    """SIGSTOP keeps a worker's connection open but silences it: it is declared lost once nothing was heard
    from it for max(5 s, 10 heartbeats), and back once it is heard from again (SIGCONT); both are said."""
    job, out = tmp_path / "job.yaml", tmp_path / "run"
    job.write_text(yaml.safe_dump({**JOB, "name": "silent", "rounds": 100000}))
    proc = subprocess.Popen([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, COLUMNS="200"))

    def events() -> list[dict]:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(x) for x in lines[:-1] if '"event"' in x]  # the last line may be half written

    def wait_for(pred) -> None:
        deadline = time.monotonic() + 240
        while not pred() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and pred(), "the run ended or nothing happened"

    pid = None
    try:
        wait_for(lambda: _rounds_logged(out) >= 3)
        pid = _worker_pid(proc.pid, KILLED)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: any(e["event"] == "worker-lost" for e in events()))
        # dcoord status RUN_DIR while the run goes on
        st = subprocess.run([sys.executable, "-m", "dcoord", "status", str(out)], capture_output=True, text=True,
                            timeout=120)
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: any(e["event"] == "worker-rejoined" for e in events()))
        proc.send_signal(signal.SIGINT)  # the run stops (checkpoint, exact resume command)
        text, _ = proc.communicate(timeout=120)
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = text.decode(errors="replace")
    got = [(e["event"], e["worker"], e["reason"]) for e in events() if e["event"].startswith("worker-")]
    assert got == [("worker-lost", KILLED, "no heartbeat for 5 s"), ("worker-rejoined", KILLED, "heard from again")]
    assert f"worker {KILLED} lost at round" in text and "(no heartbeat for 5 s)" in text, text
    assert f"worker {KILLED} back at round" in text and "all 1 left" in text, text
    assert st.returncode == 0 and " running: round " in st.stdout, st
    assert f"lost: worker {KILLED} at round" in st.stdout and "(no heartbeat for 5 s)" in st.stdout, st.stdout
