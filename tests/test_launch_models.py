"""Models go down the launcher's data plane (torchrun: gloo, mpirun: MPI), not inside the gRPC Assignment.

A gc-cyclic run with a 4x straggler (whose assignments are superseded while it computes): every worker
receives exactly one model per round on the plane (rank 0 sent rounds x workers x model bytes), the
straggler computes fewer rounds than it received models for, and the final model still equals plain
gradient descent and `dcoord run` (test_launch.py's checks).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from reference import full_batch_gd, max_rel_diff
from test_launch import JOB, ROUNDS, TESTS, _have_mpi, mpirun, run, torchrun, write_job

pytestmark = pytest.mark.slow

PARAMS = 64 * 10 + 10  # logreg-digits
MODEL_BYTES = 4 * PARAMS  # float32


def _ranks(stdout: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"DCOORD-MODELS (\{.*\})", stdout)]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_models_travel_on_the_launchers_plane_with_a_straggler(tmp_path, launcher):
    if launcher == "mpirun" and _have_mpi() is not None:
        pytest.skip(f"MPI launch: {_have_mpi()}")
    job = write_job(tmp_path)
    out = tmp_path / "out"
    script = [str(TESTS / "launch_models_script.py"), str(job), str(out)]
    proc = run(torchrun(5, *script) if launcher == "torchrun" else mpirun(5, *script), timeout=140)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = _ranks(proc.stdout)
    coord = [r for r in ranks if r["role"] == "coordinator"]
    workers = sorted((r for r in ranks if r["role"] == "worker"), key=lambda r: r["worker_id"])
    assert len(coord) == 1 and [w["worker_id"] for w in workers] == [0, 1, 2, 3], proc.stdout[-2000:]
    assert coord[0]["rounds_completed"] == ROUNDS
    # one model version per worker per round, all of them on the plane (none left in the gRPC messages)
    assert coord[0]["data_plane_bytes"]["models_out"] == ROUNDS * 4 * MODEL_BYTES
    assert coord[0]["data_plane_bytes"]["payloads_in"] > 0
    for w in workers:
        assert w["models_received"] == ROUNDS and w["model_bytes_received"] == ROUNDS * MODEL_BYTES, w
    straggler = workers[JOB["inject"]["workers"][0]]
    assert straggler["rounds_computed"] < ROUNDS  # its superseded assignments' models came and were skipped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected_results"] == {} and summary["dropped_late_results"] >= 1
    assert summary["max_decode_residual"] < 1e-9
    model = torch.load(out / "model.pt")
    assert max_rel_diff(model, full_batch_gd("logreg-digits", seed=0, rounds=ROUNDS, lr=0.5)) < 1e-6
