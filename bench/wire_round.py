"""Whole rounds at real model sizes: how much of a round is the wire, gRPC payloads vs the tcp data plane.

The case from the issue: a 12.5M-parameter float32 model (50 MB) whose gradient costs almost nothing,
2 workers, uncoded, `dcoord run` on this machine. Each round moves 2 models out and 2 results in
(4 x 50 MB). For each transport we report the median round wall time, the workers' compute inside it, and
the rest ("overhead": the wire, serialisation, validation, decode and step). The baseline is a raw loopback
socket moving the same 4 x 50 MB between two processes, measured right before each tcp run (--trials
runs, the median ratio is reported with each one's): the goal is a round's time beyond compute within 2x of
it. Results: bench/results/wire_round.json.

    python bench/wire_round.py [--rounds 8] [--params 12500000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def big_linear(seed: int):
    """A workload whose model is big and whose gradient is cheap: Linear(IN, OUT) on 8 samples."""
    import torch
    import torch.nn.functional as F

    from dcoord.workloads.base import Workload

    params = int(os.environ.get("DCOORD_BENCH_PARAMS", "12500000"))
    out = 250
    inp = max(1, params // out - 1)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(8, inp, generator=gen)
    y = torch.randn(8, out, generator=gen)
    torch.manual_seed(seed)
    return Workload(torch.nn.Linear(inp, out), X, y, F.mse_loss, name="big-linear")


def raw_socket_seconds(nbytes: int, messages: int, reps: int) -> float:
    """Median time for ``messages`` messages of ``nbytes`` over a raw loopback socket, two processes."""
    code = f"""
import socket, sys
srv = socket.create_server(("127.0.0.1", 0)); print(srv.getsockname()[1], flush=True)
c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = bytearray({nbytes}); view = memoryview(buf)
while True:
    got = 0
    while got < {nbytes}:
        k = c.recv_into(view[got:], {nbytes} - got)
        if k == 0: sys.exit(0)
        got += k
    c.sendall(b"k")
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = memoryview(np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8))
    times = []
    for k in range(reps + 1):
        t0 = time.perf_counter()
        for _ in range(messages):
            s.sendall(data)
            s.recv(1)
        if k:
            times.append(time.perf_counter() - t0)
    s.close()
    p.wait(timeout=30)
    return statistics.median(times)


def run_transport(transport: str, rounds: int, params: int, workdir: Path) -> dict:
    job = {
        "name": f"wire-{transport}", "workload": "wire_round:big_linear", "workers": 2, "rounds": rounds,
        "transport": transport, "coding": {"scheme": "uncoded", "payload_dtype": "float32"},
        "optimizer": {"name": "sgd", "lr": 0.01}, "runtime": {"progress": False, "round_timeout_s": 300},
    }
    path = workdir / f"{transport}.yaml"
    path.write_text(json.dumps(job))
    out = workdir / f"{transport}-{time.monotonic_ns()}"
    env = dict(os.environ, DCOORD_BENCH_PARAMS=str(params),
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "dcoord", "run", str(path), "--out", str(out), "--quiet"],
                       env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{transport}: dcoord run failed: {r.stderr[-2000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    recs = recs[1:]  # the first round includes connection set-up and first-touch allocation
    wall = [x["wall_s"] for x in recs]
    compute = [max(x["compute_s"].values()) for x in recs]
    over = [w - c for w, c in zip(wall, compute)]
    cpu = {k: statistics.median(x["coordinator_cpu_s"][k] for x in recs) for k in ("receive", "decode", "step", "send")}
    return {"round_s": statistics.median(wall), "compute_s": statistics.median(compute),
            "overhead_s": statistics.median(over), "rounds": len(recs), "coordinator_cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--params", type=int, default=12_500_000)
    ap.add_argument("--trials", type=int, default=3, help="tcp runs, each beside its own raw-socket measurement")
    ap.add_argument("--quick", action="store_true", help="2.5M parameters, 5 rounds")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    if args.quick:
        args.params, args.rounds = 2_500_000, 5
    if args.trials < 1 or args.rounds < 2 or args.params < 1000:
        ap.error("--trials must be >= 1, --rounds >= 2 (the first is warm-up), --params >= 1000")
    sys.path.insert(0, str(HERE))
    from _util import print_table, write_json

    nbytes = 4 * args.params
    results, trials = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        results["grpc"] = run_transport("grpc", args.rounds, args.params, Path(tmp))
        results["grpc"]["raw_socket_s"] = raw_socket_seconds(nbytes, 4, reps=5)
        for t in range(args.trials):  # tcp and the raw socket back to back, trial after trial
            raw = raw_socket_seconds(nbytes, 4, reps=5)
            r = run_transport("tcp", args.rounds, args.params, Path(tmp))
            r["raw_socket_s"] = raw
            r["overhead_x_raw_socket"] = r["overhead_s"] / raw
            trials.append(r)
            print(f"trial {t + 1}/{args.trials}: tcp beyond compute {r['overhead_s'] * 1e3:.0f} ms, raw socket "
                  f"{raw * 1e3:.0f} ms: {r['overhead_x_raw_socket']:.2f}x", flush=True)
    results["grpc"]["overhead_x_raw_socket"] = results["grpc"]["overhead_s"] / results["grpc"]["raw_socket_s"]
    ratios = [r["overhead_x_raw_socket"] for r in trials]
    mid = sorted(trials, key=lambda r: r["overhead_x_raw_socket"])[len(trials) // 2]  # the median trial
    results["tcp"] = {**mid, "ratios_by_trial": ratios}
    rows = [[tr, r["round_s"], r["compute_s"], r["overhead_s"], r["raw_socket_s"], r["overhead_x_raw_socket"]]
            for tr, r in results.items()]
    print(f"model {args.params / 1e6:.1f}M float32 params ({nbytes / 1e6:.0f} MB), 2 workers, uncoded; the raw "
          f"socket moves the same 4 x {nbytes / 1e6:.0f} MB, measured right before each run; tcp: the median "
          f"of {len(trials)} trials")
    print_table(["transport", "round s", "compute s", "beyond compute s", "raw socket s", "x raw socket"], rows)
    c = results["tcp"]["coordinator_cpu_s"]
    print("coordinator CPU s/round (tcp): " + ", ".join(f"{k} {v:.4f}" for k, v in c.items()))
    speedup = results["grpc"]["overhead_s"] / results["tcp"]["overhead_s"]
    met = statistics.median(ratios) <= 2.0
    print(f"tcp vs raw socket by trial: {', '.join(f'{x:.2f}x' for x in ratios)}; tcp vs grpc, time beyond "
          f"compute: {speedup:.1f}x less; goal (tcp within 2x of raw socket, median): {'met' if met else 'NOT met'}")
    data = {"params": args.params, "bytes_per_message": nbytes, "results": results,
            "tcp_x_raw_socket_median": statistics.median(ratios), "tcp_x_raw_socket_by_trial": ratios,
            "tcp_speedup_over_grpc": speedup, "goal_met": met, "cpu_count": os.cpu_count()}
    print(f"wrote {write_json('wire_round', data, Path(args.out) if args.out else None)}")


if __name__ == "__main__":
    main()
