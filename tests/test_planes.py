"""Which data plane a job gets: the fastest that runs where it runs, unless the config names one; said once.

The choice is ``dcoord.runtime.transport.registry.choose_plane``'s alone; these tests check it from the
outside (a real ``dcoord run`` and real worker processes) and its refusals (one line, nothing left behind).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcoord.config import load_config
from dcoord.errors import ConfigError
from dcoord.runtime.local import run_local
from dcoord.runtime.transport.registry import choose_plane

ROOT = Path(__file__).resolve().parents[1]

JOB = {"name": "planes", "workload": "logreg-digits", "seed": 0, "workers": 3, "rounds": 3,
       "optimizer": {"name": "sgd", "lr": 0.5}, "runtime": {"progress": False}}


def _run(tmp_path, data: dict) -> tuple[dict, object]:
    seen = {}
    summary = run_local(load_config(None, data=data), tmp_path, progress=True,  # (the bar: runtime.progress)
                        on_started=lambda coord, procs, address: seen.setdefault("coord", coord))
    return summary, seen["coord"]


@pytest.mark.slow
def test_dcoord_run_without_transport_uses_tcp_and_an_explicit_grpc_still_runs(tmp_path, capfd):
    summary, coord = _run(tmp_path / "default", JOB)
    err = capfd.readouterr().err
    assert summary["rounds_completed"] == 3
    assert err.count("data plane: tcp (default for dcoord run") == 1, err
    saved = yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())
    assert saved["transport"] == "tcp"  # what the workers were told, and what a resume compares
    # the payloads and models went over the tcp plane's sockets, not the gRPC stream
    assert coord.data_server is not None and coord.data_server.bytes_in > 0 and coord.data_server.bytes_out > 0
    assert coord.bytes_in == 0

    summary, coord = _run(tmp_path / "grpc", {**JOB, "transport": "grpc"})
    err = capfd.readouterr().err
    assert summary["rounds_completed"] == 3
    assert err.count("data plane: grpc (set by transport: in the config)") == 1, err
    assert coord.data_server is None and coord.bytes_in > 0  # payloads inside the gRPC messages

    run_local(load_config(None, data=JOB), tmp_path / "quiet", progress=False)  # dcoord run --quiet
    assert "data plane" not in capfd.readouterr().err


def test_the_default_is_the_launchers_plane_and_an_explicit_one_must_run_there():
    cfg = load_config(None, data=JOB)
    assert [choose_plane(cfg, where)[0].name for where in ("none", "torchrun", "mpirun")] == ["tcp", "torch", "mpi"]
    plane, reason = choose_plane(load_config(None, data={**JOB, "transport": "grpc"}), "torchrun")
    assert plane.name == "grpc" and "set by transport" in reason
    for transport, where in (("torch", "none"), ("tcp", "mpirun"), ("mpi", "torchrun")):
        with pytest.raises(ConfigError, match=f"transport: {transport} cannot run under .*leave it out"):
            choose_plane(load_config(None, data={**JOB, "transport": transport}), where)
    with pytest.raises(ConfigError, match="transport: carrier-pigeon is not a data plane; choose one of grpc, tcp"):
        choose_plane(load_config(None, data={**JOB, "transport": "carrier-pigeon"}), "none")


@pytest.mark.parametrize("transport", ["torch", "carrier-pigeon"])
@pytest.mark.slow
def test_a_transport_that_cannot_run_is_one_line_and_leaves_nothing(tmp_path, transport):
    """Before: ``transport: torch`` under ``dcoord run`` ran silently over gRPC; an unknown name failed in
    the config's validator, which had to import the runtime to know the names."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "transport": transport}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"transport: {transport}" in lines[0] and "grpc" in lines[0], proc.stderr
    assert not out.exists()


def test_a_run_resumes_whichever_plane_carried_it():
    """A run's config.yaml names the plane it ran on (runs made while gRPC was the default say grpc); the
    payload path changes nothing of the math, so resuming it where another plane is the default (or with
    another transport) is allowed, as a changed port is."""
    from dcoord.runtime.coordinator.resume import config_difference

    saved = load_config(None, data={**JOB, "transport": "grpc"}).to_yaml()
    assert config_difference(saved, load_config(None, data={**JOB, "transport": "tcp"})) is None
    assert "seed" in config_difference(saved, load_config(None, data={**JOB, "transport": "tcp", "seed": 7}))


def test_private_jobs_default_to_the_control_plane_until_tcp_carries_a_resumed_private_run():
    """A private run (trust: workers) resumed while its workers stay up hangs on tcp
    (tests/test_private_rejoin.py, which passes on gRPC): the default for private jobs is gRPC, said in the
    printed reason; asking for tcp by name still gets it."""
    from dcoord.runtime.transport.registry import choose_plane

    private = load_config(ROOT / "examples" / "private.yaml")
    plane, reason = choose_plane(private, "none")
    assert plane.name == "grpc" and "private" in reason
    assert choose_plane(load_config(None, data={**private.model_dump(by_alias=True), "transport": "tcp"}),
                        "none")[0].name == "tcp"
    assert choose_plane(load_config(ROOT / "examples" / "quickstart.yaml"), "none")[0].name == "tcp"
