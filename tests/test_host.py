"""The job host's front door: ports in use, Ctrl-C during start-up, launcher errors, extending a run, and
the Python API's wording. Real subprocesses, real sockets, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = """name: tiny
workload: logreg-digits
workers: 2
rounds: 2
coding: {scheme: uncoded}
"""


def dcoord(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcoord", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line(p: subprocess.CompletedProcess, needle: str) -> str:
    """The run failed with exactly one line on stderr (and no traceback or finalizer noise)."""
    assert p.returncode != 0, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
    return lines[0]


@pytest.fixture
def taken_port():
    """A port something else listens on, for as long as the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_coordinator_on_a_taken_port_is_one_line_and_leaves_no_run_directory(tmp_path, taken_port):
    (tmp_path / "job.yaml").write_text(TINY)
    p = dcoord("coordinator", "job.yaml", "--listen", f"127.0.0.1:{taken_port}", "--out", "run", "--quiet",
               cwd=tmp_path)
    line = one_line(p, f"--listen 127.0.0.1:{taken_port}")
    assert "already in use" in line and "choose another port" in line
    assert not (tmp_path / "run").exists()


def test_health_port_in_use_is_one_line_without_finalizer_noise(tmp_path, taken_port):
    (tmp_path / "job.yaml").write_text(TINY)
    env = dict(os.environ, DCOORD_HEALTH_PORT=str(taken_port))
    p = dcoord("coordinator", "job.yaml", "--listen", "127.0.0.1:0", "--out", "run", "--quiet", cwd=tmp_path,
               env=env)
    line = one_line(p, f"--health-port {taken_port}")
    assert "DCOORD_HEALTH_PORT" in line
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_worker_start_up_stops_and_says_so(tmp_path):
    """SIGINT once the workers are being started (their log directory exists) and before they registered:
    the user is told what is waited for, every worker is gone, and no half-made run directory is left."""
    (tmp_path / "job.yaml").write_text(TINY.replace("workers: 2", "workers: 4"))
    proc = subprocess.Popen([sys.executable, "-m", "dcoord", "run", "job.yaml", "--out", "run", "--quiet"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "run" / "workers").is_dir() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    lines = err.strip().splitlines()
    stopping = next(i for i, line in enumerate(lines) if line.startswith("stopping: waiting for"))
    final = next(i for i, line in enumerate(lines) if "stopped by SIGINT before the first round" in line)
    assert stopping < final == len(lines) - 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
