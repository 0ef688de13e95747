"""Run-directory integrity and what the coordinator exposes: a forged checkpoint is refused on --resume when
checkpoints are signed, and the metrics and health ports stay on loopback unless given an address."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from dcoord.runtime.store import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
JOB = {"name": "integrity", "workload": "logreg-digits", "seed": 0, "batch_size": None, "workers": 3,
       "rounds": 4, "optimizer": {"lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
       "runtime": {"progress": False, "checkpoint_every": 2}}
TOKEN = "integrity-token-" + "9f8e7d6c" * 4


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _dcoord(*args: str) -> list[str]:
    return [sys.executable, "-m", "dcoord", *args]


def _forge(path: Path) -> None:
    """What a writer of the run directory without the key can do: change the weights, recompute the sha256,
    keep the header's HMAC (it cannot make a new one)."""
    head, _, payload = path.read_bytes().partition(b"\n")
    state = ckpt.from_plain(torch.load(__import__("io").BytesIO(payload), weights_only=True))
    forged = ckpt.encode(_scaled(state), int(re.search(rb"round=(-?\d+)", head).group(1)))
    fhead, _, fpayload = forged.partition(b"\n")
    mac = re.search(rb" hmac=[0-9a-f]{64}", head)
    assert fpayload != payload  # the weights did change
    path.write_bytes(fhead + (mac.group(0) if mac else b"") + b"\n" + fpayload)


def _scaled(obj):
    import numpy as np

    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f" or isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj * -3.0
    if isinstance(obj, dict):
        return {k: _scaled(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_scaled(v) for v in obj)
    return obj


def _files(run: Path) -> dict:
    """Every file of the run and its digest (the lock file only records who last held it)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*")
            if p.is_file() and p.name != ".dcoord.lock"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_forged_checkpoint_is_refused_on_resume_when_checkpoints_are_signed(tmp_path):
    job, key = tmp_path / "job.yaml", tmp_path / "ckpt.key"
    job.write_text(yaml.safe_dump({**JOB, "workers": 2, "rounds": 2, "coding": {"scheme": "uncoded"},
                                   "runtime": {"progress": False, "checkpoint_every": 1}}))
    key.write_text("operator-held-checkpoint-key-0123456789")
    run = tmp_path / "run"
    subprocess.run(_dcoord("run", str(job), "--out", str(run), "--quiet", "--checkpoint-key-file", str(key)),
                   env=_env(), check=True, capture_output=True, timeout=400)
    newest = ckpt.list_checkpoints(run / "checkpoints")[-1]
    assert b" hmac=" in newest.read_bytes().partition(b"\n")[0]
    assert key.read_bytes() not in b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())
    _forge(newest)
    head, _, payload = newest.read_bytes().partition(b"\n")
    assert hashlib.sha256(payload).hexdigest().encode() in head  # the sha256 matches: integrity alone would load it
    job.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "rounds": 4}))
    before = _files(run)
    res = subprocess.run(_dcoord("run", str(job), "--resume", str(run), "--quiet", "--checkpoint-key-file", str(key)),
                         env=_env(), capture_output=True, text=True, timeout=400)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1, res.stderr
    assert "HMAC does not match" in lines[0] and "--checkpoint-key-file" in lines[0], lines
    assert _files(run) == before  # the finished run's model and summary are still there, unchanged
    # no key at all: a signed run is not resumed either (the key is asked for, in one line)
    res = subprocess.run(_dcoord("run", str(job), "--resume", str(run), "--quiet"), env=_env(),
                         capture_output=True, text=True, timeout=400)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "is signed" in lines[0], res.stderr


def test_checkpoint_hmac_round_trip_and_refusals(tmp_path):
    key, other = ckpt.signing_key("k" * 20), ckpt.signing_key("o" * 20)
    path = ckpt.save(tmp_path, {"w": torch.ones(3).numpy()}, 2, keep=2, key=key)
    state, _ = ckpt.load_latest(tmp_path, key)
    assert state["w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ckpt.CheckpointForged, match="HMAC does not match"):
        ckpt.load_latest(tmp_path, other)
    with pytest.raises(ckpt.CheckpointForged, match="is signed"):
        ckpt.load_latest(tmp_path, None)
    path.write_bytes(ckpt.encode({"w": torch.zeros(3).numpy()}, 2))  # an unsigned one put in its place
    with pytest.raises(ckpt.CheckpointForged, match="carries no HMAC"):
        ckpt.load_latest(tmp_path, key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outward_address() -> str | None:
    """A non-loopback IPv4 address of this machine (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _coordinator(tmp_path: Path, out: str, *extra: str) -> subprocess.Popen:
    job, token = tmp_path / "job.yaml", tmp_path / "token"
    job.write_text(yaml.safe_dump(JOB))
    token.write_text(TOKEN)
    return subprocess.Popen(_dcoord("coordinator", str(job), "--out", str(tmp_path / out), "--quiet",
                                    "--listen", f"0.0.0.0:{_free_port()}", "--token-file", str(token), *extra),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_listening(p: subprocess.Popen) -> None:
    line = p.stderr.readline()
    assert "listening on port" in line, line + (p.stderr.read() if p.poll() is not None else "")


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_metrics_and_health_bind_loopback_by_default_and_metrics_can_require_the_token(tmp_path):
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    mport, hport = _free_port(), _free_port()
    p = _coordinator(tmp_path, "run-1", "--metrics-port", str(mport), "--health-port", str(hport))
    try:
        _wait_listening(p)
        deadline = time.monotonic() + 30
        while not _reachable("127.0.0.1", mport) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _reachable("127.0.0.1", mport) and _reachable("127.0.0.1", hport)
        # the job listens on 0.0.0.0, its metrics and health ports do not
        assert not _reachable(outward, mport) and not _reachable(outward, hport)
    finally:
        _stop(p)
    mport = _free_port()
    p = _coordinator(tmp_path, "run-2", "--metrics-port", str(mport), "--metrics-host", "0.0.0.0",
                     "--metrics-token-file", str(tmp_path / "token"))
    try:
        _wait_listening(p)
        url = f"http://{outward}:{mport}/metrics"
        deadline = time.monotonic() + 30
        while not _reachable(outward, mport) and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401 and b"dcoord_" not in refused.value.read()
        wrong = urllib.request.Request(url, headers={"Authorization": "Bearer not-the-token"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=5)
        good = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert b"dcoord_workers_expected" in urllib.request.urlopen(good, timeout=5).read()
    finally:
        _stop(p)
