"""A whole coded job in one process: the job host (``dcoord run``'s path with no local worker processes)
and three workers on threads that speak the real protocol over loopback (gRPC control plane with the
job's token, the default tcp data plane), one of them injected slow; the model must equal plain
full-batch gradient descent, and ``dcoord status``'s client reads the live coordinator.

This is the fast tier's end-to-end run: it exercises the host, the servicer, the round loop, the worker
and the data plane inside the test process in about a second."""

from __future__ import annotations

import threading

import torch
from reference import full_batch_gd, max_rel_diff

from dcoord.config import load_config
from dcoord.runtime.client import watch_status
from dcoord.runtime.local import run_local
from dcoord.runtime.security.auth import ClientSecurity
from dcoord.runtime.worker.worker import run_worker

TOKEN = "in-process-token-" + "x" * 24


def test_a_job_on_worker_threads_equals_full_batch_gd(tmp_path):
    cfg = load_config(None, data={
        "name": "in-process", "workers": 3, "rounds": 6, "seed": 0, "workload": "logreg-digits",
        "optimizer": {"lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
        "inject": {"model": "fixed", "workers": [2], "slowdown": 10},
        "runtime": {"emulate_part_s": 0.02},  # 40 ms of compute a round, 400 ms more for the slow worker
    })
    security = ClientSecurity(token=TOKEN)
    computed: list[int] = []
    failures: list[BaseException] = []
    statuses: list[dict] = []
    threads: list[threading.Thread] = []

    def worker(i: int, address: str) -> None:
        try:
            computed.append(run_worker(address, requested_id=i, security=security, rejoin=False,
                                       allow_workloads=[cfg.workload]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    def read_status(address: str) -> None:
        try:
            statuses.extend(watch_status(address, security=security))
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    def started(coord, procs, address: str) -> None:
        assert procs == []  # spawn=0: no local worker processes
        threads.extend(threading.Thread(target=worker, args=(i, address), daemon=True) for i in range(3))
        threads.append(threading.Thread(target=read_status, args=(address,), daemon=True))
        for t in threads:
            t.start()

    summary = run_local(cfg, tmp_path / "run", progress=False, spawn=0, token=TOKEN, on_started=started)
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert summary["rounds_completed"] == 6
    assert len(computed) == 3 and sorted(computed)[1:] == [6, 6]  # the two fast workers answered every round
    assert summary["stragglers_seen"] > 0  # rounds closed without the slow one
    assert statuses and statuses[0]["job_id"] == summary["job_id"]
    ref = full_batch_gd("logreg-digits", seed=0, rounds=6, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "run" / "model.pt"), ref) < 1e-5
    # each round reports the batch's mean loss at the model it stepped from: round 0's is the initial loss
    import json

    from dcoord.workloads import load

    wl = load("logreg-digits", 0)
    with torch.no_grad():
        initial = float(wl.loss_fn(wl.model(wl.X), wl.y))
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "round" in r]
    assert len(losses) == 6 and abs(losses[0] - initial) < 1e-5 * initial
    assert all(b < a for a, b in zip(losses, losses[1:]))  # full-batch GD with a small step: falls each round


def test_a_private_job_on_worker_threads_equals_the_single_process_diff2():
    """DIFF2 with the coordinator's noise (trust: coordinator, seeded) on four worker threads, one injected
    slow: equals the single-process DIFF2-GD reference written from the spec (tests/test_e2e_privacy.py)."""
    from test_e2e_privacy import WORKERS, _cfg, reference_run

    cfg = _cfg("gc-cyclic", trust="coordinator", coordinator_seed=7)
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []

    def worker(i: int, address: str) -> None:
        try:
            run_worker(address, requested_id=i, security=ClientSecurity(token=TOKEN), rejoin=False,
                       allow_workloads=[cfg.workload])
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    def started(coord, procs, address: str) -> None:
        threads.extend(threading.Thread(target=worker, args=(i, address), daemon=True) for i in range(WORKERS))
        for t in threads:
            t.start()

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        summary = run_local(cfg, Path(tmp) / "run", progress=False, spawn=0, token=TOKEN, on_started=started)
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures
        assert summary["privacy"]["trust"] == "coordinator" and summary["epsilon"] > 0
        ref = reference_run(trust="coordinator", coordinator_seed=7)
        assert max_rel_diff(torch.load(Path(tmp) / "run" / "model.pt"), ref) < 1e-5
