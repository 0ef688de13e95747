"""torchrun and mpirun launches (real processes, no mocks): same model as `dcoord run`, DDP and plain GD.

Every launch here starts 5 processes on a small machine, so models are tiny and runs are ~12 rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import full_batch_gd, max_rel_diff

from dcoord.config import load_config
from dcoord.launch import LaunchEnv, detect_launcher, resolve_config
from dcoord.runtime.local import run_local
from dcoord.runtime.transport.base import KIND_DATA, DataPlaneError, PayloadMatcher, make_header
from dcoord.wire.messages import Result, TaskResult

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ROUNDS = 12
JOB = {
    "name": "launch", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": ROUNDS,
    "optimizer": {"name": "sgd", "lr": 0.5},
    "coding": {"scheme": "gc-cyclic", "stragglers": 1},
    # worker 2 is 4x slower: a straggler every round, whose late payloads must be received and dropped
    # (compute is mostly the emulated 20 ms per part, so the slowdown does not hinge on warm-up noise)
    "inject": {"model": "fixed", "workers": [2], "slowdown": 4},
    "device": "cpu",
    "runtime": {"progress": False, "emulate_part_s": 0.02},
}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    ENV.pop(_k, None)


def _have_mpi() -> str | None:
    if shutil.which("mpirun") is None:
        return "mpirun not found"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install 'dcoord[mpi]')"
    return None


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--max-restarts", "0", *args]


def mpirun(n: int, *args: str) -> list[str]:
    return ["mpirun", "-n", str(n), sys.executable, *args]


def run(cmd: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    return p


def write_job(tmp_path: Path, **over) -> Path:
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**JOB, **over}))
    return path


@pytest.fixture(scope="module")
def reference() -> dict:
    return full_batch_gd("logreg-digits", seed=0, rounds=ROUNDS, lr=0.5)


@pytest.fixture(scope="module")
def grpc_model(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("grpc")  # dcoord run with payloads in the gRPC messages (said: not the default)
    summary = run_local(load_config(None, data={**JOB, "transport": "grpc"}), out, progress=False)
    assert summary["rounds_completed"] == ROUNDS
    return torch.load(out / "model.pt")


def _check_run(out: Path, proc: subprocess.CompletedProcess, reference: dict, grpc_model: dict) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS and summary["workers"] == 4
    assert summary["rejected_results"] == {}  # nothing mismatched, nothing malformed
    assert summary["max_decode_residual"] < 1e-9
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == ROUNDS
    assert any(2 in r["stragglers"] for r in recs)  # the slow worker was decoded around
    # payloads really came over the data plane and were paired (bytes counted once per result)
    assert all(r["bytes_received"] >= 3 * 650 * 8 for r in recs)
    model = torch.load(out / "model.pt")
    assert max_rel_diff(model, grpc_model) < 1e-6
    assert max_rel_diff(model, reference) < 1e-6
    assert (out / "config.yaml").is_file()
    return summary


@pytest.mark.timeout(120)
def test_torchrun_gloo_same_model_as_dcoord_run_and_gd(tmp_path, reference, grpc_model):
    job = write_job(tmp_path)
    out = tmp_path / "out"
    proc = run(torchrun(5, "-m", "dcoord.launch", str(job), "--out", str(out), "--quiet"))
    summary = _check_run(out, proc, reference, grpc_model)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert cfg["transport"] == "torch"
    assert summary["dropped_late_results"] >= 1  # the straggler's late payloads: received, dropped


@pytest.mark.timeout(600)
def test_torchrun_beyond_loopback_takes_the_coordinators_token_tls_and_metrics(tmp_path, reference, grpc_model):
    """Ranks on several nodes (here: the advertised address makes rank 0 listen on 0.0.0.0) need what
    `dcoord coordinator` needs there: a token, else it refuses; with token and TLS the job runs, the worker
    ranks checking rank 0's certificate by the name the Kubernetes Secret's certificate carries."""
    import threading
    import urllib.request

    from tls_files import make_tls

    env = dict(ENV, DCOORD_ADVERTISE_HOST="127.0.0.1")
    refused = tmp_path / "refused"
    (tmp_path / "small").mkdir()
    small = write_job(tmp_path / "small", coding={"scheme": "uncoded"}, inject={"model": "none"})
    proc = subprocess.run(torchrun(2, "-m", "dcoord.launch", str(small), "--out", str(refused), "--quiet"), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "refusing to listen beyond loopback without authentication" in proc.stderr, proc.stderr[-3000:]
    assert not refused.exists()

    job = write_job(tmp_path)
    for name, data in {**make_tls("dcoord-coordinator"), "token": os.urandom(16).hex().encode()}.items():
        (tmp_path / name).write_bytes(data)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    out = tmp_path / "out"
    cmd = torchrun(5, "-m", "dcoord.launch", str(job), "--out", str(out), "--quiet",
                   f"--token-file={tmp_path / 'token'}", f"--tls-cert={tmp_path / 'tls.crt'}",
                   f"--tls-key={tmp_path / 'tls.key'}", f"--tls-ca={tmp_path / 'ca.crt'}",
                   "--tls-server-name=dcoord-coordinator")
    p = subprocess.Popen(cmd, cwd=ROOT, env=dict(env, DCOORD_METRICS_PORT=str(mport)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    scraped: list[str] = []

    def scrape() -> None:  # rank 0's metrics endpoint, while the job runs
        while p.poll() is None and not scraped:
            try:
                scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2).read().decode())
            except OSError:
                time.sleep(0.02)

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    stdout, stderr = p.communicate(timeout=300)
    t.join(timeout=10)
    _check_run(out, subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr), reference, grpc_model)
    assert scraped and 'dcoord_workers_expected{job_name="launch"} 4.0' in scraped[0], scraped


@pytest.mark.timeout(120)
@pytest.mark.skipif(_have_mpi() is not None, reason=f"MPI launch: {_have_mpi()}")
def test_mpirun_same_model_as_dcoord_run_and_gd(tmp_path, reference, grpc_model):
    job = write_job(tmp_path)
    out = tmp_path / "out"
    proc = run(mpirun(5, "-m", "dcoord.launch", str(job), "--out", str(out), "--quiet"))
    summary = _check_run(out, proc, reference, grpc_model)
    cfg = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert cfg["transport"] == "mpi"
    assert summary["dropped_late_results"] >= 1


@pytest.mark.timeout(150)
def test_api_under_torchrun_uncoded_equals_torch_ddp(tmp_path):
    """dcoord.train() from a user script (Workload object) under torchrun == DDP on the same partitions."""
    out = tmp_path / "dcoord"
    proc = run(torchrun(4, str(TESTS / "launch_api_script.py"), str(out), "10"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    roles = sorted(json.loads(m)["role"] for m in re.findall(r"DCOORD-API (\{[^}]*\})", proc.stdout))
    assert roles == ["coordinator"] + ["worker"] * 3
    ddp_out = tmp_path / "ddp.pt"  # DDP ranks 0..2 hold exactly the parts of dcoord workers 0..2
    proc = run(torchrun(3, str(TESTS / "ddp_logreg.py"), str(ddp_out), "10", "0.5", "0"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    dcoord_model, ddp_model = torch.load(out / "model.pt"), torch.load(ddp_out)
    assert max_rel_diff(dcoord_model, ddp_model) < 1e-6
    assert max_rel_diff(dcoord_model, full_batch_gd("logreg-digits", seed=0, rounds=10, lr=0.5)) < 1e-6


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker process with RANK=rank (a child of the torchrun process)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = Path(f"/proc/{d}/status").read_text()
            environ = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:")), -1)
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(d)
    return None


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's ranks through /proc")
def test_killing_a_worker_rank_under_torchrun_ends_clearly(tmp_path):
    """SIGKILL one worker (<= s): torchrun's agent stops all ranks; rank 0 writes its outputs and says why."""
    job = write_job(tmp_path, rounds=2000, inject={}, runtime={"progress": False, "emulate_part_s": 0.01})
    out = tmp_path / "out"
    proc = subprocess.Popen(torchrun(5, "-m", "dcoord.launch", str(job), "--out", str(out), "--quiet"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        pid = _rank_pid(proc.pid, 2)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=100)  # a hang guard only: the test's own limit is 120 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # the job ended because of the kill, long before its 2000 rounds
    assert len(metrics.read_text().splitlines()) < 2000
    assert "dcoord.launch: error: stopped by SIGTERM" in stderr, stderr[-3000:]
    assert "torchrun stops every rank when any rank exits" in stderr
    assert "Traceback" not in stderr.split("dcoord.launch: error:")[0][-2000:]  # no traceback from dcoord
    assert list((out / "checkpoints").glob("ckpt-*.pt"))
    assert len(metrics.read_text().splitlines()) >= 3


@pytest.mark.timeout(60)
@pytest.mark.skipif(_have_mpi() is not None, reason=f"MPI launch: {_have_mpi()}")
def test_exception_on_a_rank_under_mpirun_ends_the_job(tmp_path):
    """Rank 0 cannot build the workload: the whole job ends with its message (MPI_Abort), no hang."""
    job = write_job(tmp_path, workload="no_such_module_xyz:make", inject={}, coding={"scheme": "uncoded"})
    # no hang: a job left waiting on the failed rank would run into this limit (an error, not a pass)
    proc = run(mpirun(2, "-m", "dcoord.launch", str(job), "--out", str(tmp_path / "o"), "--quiet"), timeout=50)
    assert proc.returncode != 0
    assert "cannot import module 'no_such_module_xyz'" in proc.stderr


@pytest.mark.timeout(60)
def test_bad_config_and_args_exit_2_with_one_line(tmp_path):
    cases = [
        [str(tmp_path / "missing.yaml")],
        [str(write_job(tmp_path)), "--set", "coding.stragglers=9"],
        [],
    ]
    for args in cases:
        proc = run([sys.executable, "-m", "dcoord.launch", *args], timeout=30)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(("dcoord.launch: config error:", "python -m dcoord.launch: error:"))
    if _have_mpi() is None:  # the launcher's own transport mismatch, under mpirun: rank 0 says it once
        proc = run(mpirun(2, "-m", "dcoord.launch", str(write_job(tmp_path)), "--set", "transport=torch"))
        assert proc.returncode == 2
        assert proc.stderr.count("transport: torch cannot run under mpirun") == 1


def test_launcher_detection_and_config_resolution():
    assert detect_launcher({}).launcher == "none"
    t = detect_launcher({"RANK": "3", "WORLD_SIZE": "5", "LOCAL_RANK": "3", "TORCHELASTIC_RUN_ID": "x"})
    assert (t.launcher, t.rank, t.world_size) == ("torchrun", 3, 5)
    m = detect_launcher({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"})
    assert (m.launcher, m.rank, m.world_size) == ("mpirun", 1, 4)
    cfg = load_config(None, data=JOB)
    tcfg, notes = resolve_config(cfg, LaunchEnv("torchrun", 0, 7))
    assert (tcfg.transport, tcfg.workers) == ("torch", 6) and "workers" in notes[0]
    mcfg, notes = resolve_config(cfg, LaunchEnv("mpirun", 0, 5))
    assert (mcfg.transport, mcfg.workers, notes) == ("mpi", 4, [])
    kept, _ = resolve_config(load_config(None, data={**JOB, "transport": "grpc"}), LaunchEnv("mpirun", 0, 5))
    assert kept.transport == "grpc"  # said explicitly: payloads stay in the gRPC messages


def test_payload_matcher_pairs_in_any_order_and_never_mixes_rounds():
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        m = PayloadMatcher(q, asyncio.get_running_loop())

        class Conn:
            worker_id = 1

        def result(rnd: int, seq: int, ntasks: int = 1) -> Result:
            return Result(round=rnd, worker_id=1, payload_on_data_plane=True, data_seq=seq,
                          tasks=[TaskResult(job=rnd, slot=k) for k in range(ntasks)])

        m.on_result(result(0, 0), Conn())  # result before its payload: waits
        await asyncio.sleep(0.01)
        assert q.empty()
        m.on_payload(1, 0, np.full(3, 0.0))
        m.on_payload(1, 1, np.full(3, 1.0))  # payload before its result
        m.on_payload(1, 2, np.full(3, 2.0))
        m.on_result(result(1, 1, ntasks=2), Conn())
        await asyncio.sleep(0.01)
        got = [q.get_nowait() for _ in range(q.qsize())]
        assert [r.round for r, _, _ in got] == [0, 1]
        vals = [float(a[0]) for _, _, arrays in got for a in arrays]
        assert vals == [0.0, 1.0, 2.0]

    asyncio.run(go())


def test_header_sequence_is_checked():
    from dcoord.runtime.transport.torch_dp import TorchDataPlane

    plane = TorchDataPlane.__new__(TorchDataPlane)
    super(TorchDataPlane, plane).__init__()
    plane.max_count = 10
    arr = np.zeros(10)
    assert plane.check_header(1, make_header(KIND_DATA, 0, arr))[1] == 0
    with pytest.raises(DataPlaneError, match="sequence number 2, expected 1"):
        plane.check_header(1, make_header(KIND_DATA, 2, arr))
    with pytest.raises(DataPlaneError, match="bad header"):
        plane.check_header(1, make_header(KIND_DATA, 1, np.zeros(11)))


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                    reason="NCCL data plane: needs >= 2 GPUs (NCCL refuses two ranks on one GPU)")
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="NCCL data plane: no CUDA GPU on this machine (the path is untested without one)")
def test_torchrun_nccl_same_model(tmp_path, reference):
    n = min(torch.cuda.device_count(), 5)  # one rank per GPU: rank 0 receives on its own GPU
    job = write_job(tmp_path, coding={"scheme": "uncoded"}, inject={}, device="cuda")
    out = tmp_path / "out"
    proc = run(torchrun(n, "-m", "dcoord.launch", str(job), "--out", str(out), "--quiet"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "payloads go over gloo" not in proc.stderr
    assert json.loads((out / "summary.json").read_text())["rejected_results"] == {}
    assert max_rel_diff(torch.load(out / "model.pt"), reference) < 1e-5


@pytest.mark.timeout(120)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="workers on a GPU: no CUDA GPU on this machine")
def test_torchrun_workers_on_gpu(tmp_path, reference):
    """device: cuda under torchrun; with fewer GPUs than ranks the payloads go over gloo instead of NCCL."""
    job = write_job(tmp_path, coding={"scheme": "uncoded"}, inject={}, device="cuda")
    out = tmp_path / "out"
    proc = run(torchrun(3, "-m", "dcoord.launch", str(job), "--out", str(out), "--quiet", "-v"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "of job" in proc.stderr and " on cuda:" in proc.stderr  # the workers' log lines
    assert max_rel_diff(torch.load(out / "model.pt"), reference) < 1e-5
