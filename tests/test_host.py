"""The job host's front door: ports in use, Ctrl-C during start-up, launcher errors, extending a run, and
the Python API's wording. Real subprocesses, real sockets, real signals."""

from __future__ import annotations

import os
import shutil
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


@pytest.mark.slow
def test_coordinator_on_a_taken_port_is_one_line_and_leaves_no_run_directory(tmp_path, taken_port):
    (tmp_path / "job.yaml").write_text(TINY)
    p = dcoord("coordinator", "job.yaml", "--listen", f"127.0.0.1:{taken_port}", "--out", "run", "--quiet",
               cwd=tmp_path)
    line = one_line(p, f"--listen 127.0.0.1:{taken_port}")
    assert "already in use" in line and "choose another port" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_health_port_in_use_is_one_line_without_finalizer_noise(tmp_path, taken_port):
    (tmp_path / "job.yaml").write_text(TINY)
    env = dict(os.environ, DCOORD_HEALTH_PORT=str(taken_port))
    p = dcoord("coordinator", "job.yaml", "--listen", "127.0.0.1:0", "--out", "run", "--quiet", cwd=tmp_path,
               env=env)
    line = one_line(p, f"--health-port {taken_port}")
    assert "DCOORD_HEALTH_PORT" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
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


def _launch_env(*front: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               PYTHONPATH=os.pathsep.join([*map(str, front), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        env.pop(k, None)
    return env


def _no_dcoord_traceback(output: str) -> None:
    frames = [line for line in output.splitlines() if line.strip().startswith("File ") and "dcoord" in line]
    assert not frames, output[-4000:]


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_torchrun_with_too_few_processes_says_how_many_once_and_in_the_agents_summary(tmp_path):
    """The quickstart asks for 6 workers and injects worker 4; with 4 processes (3 workers) rank 0 alone
    says so and names the fix, and torchrun's failure summary carries that line instead of a hint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           "--max-restarts", "0", "-m", "dcoord.launch", str(ROOT / "examples" / "quickstart.yaml"),
           "--out", str(tmp_path / "run"), "--quiet"]
    p = subprocess.run(cmd, cwd=tmp_path, env=_launch_env(), capture_output=True, text=True, timeout=220)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    line = "dcoord.launch: config error: under torchrun with 4 processes (3 workers): inject.workers [4]"
    assert out.count(line) == 2, out[-4000:]  # rank 0's stderr, and torchrun's summary
    assert "the job asks for 6 workers: start 7 processes (torchrun --nproc-per-node 7)" in out
    summary = out.split("Root Cause (first observed failure):", 1)[1]
    assert "rank      : 0 " in summary and f"traceback : {line}" in summary, summary
    # the other ranks end quietly (exit 0, or torchrun's SIGTERM when rank 0 was first): no error of theirs
    assert "exitcode  : 2" not in out.split("Root Cause", 1)[0]
    _no_dcoord_traceback(out)
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
@pytest.mark.slow
def test_mpirun_without_mpi4py_is_one_line_once(tmp_path):
    """Where mpi4py cannot be imported (a stub that raises, first on the path), every rank fails the same
    way and rank 0 alone says what to install."""
    stub = tmp_path / "stub" / "mpi4py"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mpi4py'\", name='mpi4py')\n")
    (tmp_path / "job.yaml").write_text(TINY)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", sys.executable, "-m", "dcoord.launch",
           "job.yaml", "--out", "run", "--quiet"]
    p = subprocess.run(cmd, cwd=tmp_path, env=_launch_env(tmp_path / "stub"), capture_output=True, text=True,
                       timeout=100)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert out.count("mpirun needs mpi4py: pip install 'dcoord[mpi]'") == 1, out
    assert "Traceback" not in out and "ModuleNotFoundError" not in out, out
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_with_more_rounds_extends_a_run_to_what_a_longer_run_gives(tmp_path):
    """A finished run of R rounds, resumed with rounds 2R, ends as a 2R-round run from scratch would; fewer
    rounds than it has is one line."""
    import json

    import torch
    from reference import max_rel_diff
    from run_metrics import round_numbers

    (tmp_path / "job.yaml").write_text(TINY.replace("rounds: 2", "rounds: 4")
                                       + "runtime: {checkpoint_every: 2, progress: false}\n")
    first = dcoord("run", "job.yaml", "--out", "run", "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    low = dcoord("run", "job.yaml", "--resume", "run", "--set", "rounds=2", "--quiet", cwd=tmp_path)
    one_line(low, "rounds 2 is below the 4 rounds that run finished; give rounds > 4")
    more = dcoord("run", "job.yaml", "--resume", "run", "--set", "rounds=8", "--quiet", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    ref = dcoord("run", "job.yaml", "--out", "ref", "--set", "rounds=8", "--quiet", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    run, scratch = tmp_path / "run", tmp_path / "ref"
    assert round_numbers(run) == round_numbers(scratch) == list(range(8))
    assert json.loads((run / "summary.json").read_text())["rounds_completed"] == 8
    assert max_rel_diff(torch.load(run / "model.pt"), torch.load(scratch / "model.pt")) == 0.0


JOB = {"name": "api", "workload": "logreg-digits", "workers": 2, "rounds": 2, "coding": {"scheme": "uncoded"}}


@pytest.fixture
def no_launcher(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(k, raising=False)


def test_python_api_errors_name_its_own_arguments(tmp_path, no_launcher):
    import dcoord
    from dcoord.errors import DcoordError

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.yaml").write_text("name: other\n")  # an earlier run's
    with pytest.raises(DcoordError) as exc:
        dcoord.train(JOB, out=taken)
    msg = str(exc.value)
    assert f"out={str(taken)!r}: already holds a run; pass resume={str(taken)!r}" in msg and "overwrite=True" in msg
    assert "--" not in msg, msg
    with pytest.raises(DcoordError) as exc:
        dcoord.train(JOB, resume=tmp_path / "nothing")
    assert str(exc.value).startswith(f"resume={str(tmp_path / 'nothing')!r}: no checkpoint there"), exc.value
    with pytest.raises(DcoordError) as exc:  # the command line's own wording is unchanged
        from dcoord.runtime.store.rundir import RunDir

        RunDir(taken)
    assert str(exc.value).startswith(f"--out {taken}: already holds a run; pass --resume {taken}")


def test_python_api_says_when_a_workload_object_needs_a_launcher(tmp_path, no_launcher):
    import dcoord
    from dcoord.errors import ConfigError
    from dcoord.workloads.registry import load

    with pytest.raises(ConfigError) as exc:
        dcoord.train(JOB, workload=load("logreg-digits"), out=tmp_path / "run")
    msg = str(exc.value)
    assert "\n" not in msg and "needs a launcher" in msg, msg
    assert "torchrun --nproc-per-node 3" in msg and "workload='package.module:function'" in msg
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_dcoord_run_twice_writes_a_second_numbered_directory(tmp_path):
    """`./dev.sh run` twice (the README's first command) ran the quickstart into runs/quickstart and then
    exited 1 because it exists. Without --out the second run goes to runs/NAME-2 and says so; a directory
    named with --out is still refused."""
    job = tmp_path / "job.yaml"
    job.write_text("name: twice\nworkers: 2\nrounds: 2\nworkload: linreg-synthetic\n")
    first = (tmp_path / "runs" / "twice")
    first.mkdir(parents=True)
    (first / "config.yaml").write_text("name: twice\n")  # an earlier run's directory
    run = [sys.executable, "-m", "dcoord", "run", str(job), "--quiet"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "runs/twice holds an earlier run; this one writes runs/twice-2" in proc.stderr
    assert (tmp_path / "runs" / "twice-2" / "summary.json").is_file()
    assert (first / "config.yaml").read_text() == "name: twice\n"  # the earlier run is untouched
    named = subprocess.run(run + ["--out", str(first)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert named.returncode != 0 and "already holds a run" in named.stderr, named.stderr
