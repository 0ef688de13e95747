"""Coordinator cost at scale: one process emulates N workers over the real protocol against a real
`dcoord coordinator` (a subprocess, with a token), linreg-synthetic, default settings.

Per (N, scheme): seconds until every worker registered, the median and p90 round wall time (after a
warm-up), the coordinator's cost per worker per round, its CPU share and peak RSS, and the shares of its CPU
by what they went to (metrics.jsonl's coordinator_cpu_s, with ``control`` = streams, encoding, event loop).
Use it to size a coordinator: the emulated workers compute nothing, so what is measured is the coordinator
plus the emulator on the same machine (the emulator's own CPU is printed too).

    python bench/control_scale.py                       # N = 128, 512, 1024; uncoded and gc-cyclic s=2
    python bench/control_scale.py --workers 256 --rounds 20 --schemes uncoded
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _util import print_table, write_json

from dcoord.runtime.worker.swarm import Swarm

TOKEN = "bench-token-0123456789abcdef"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _port(proc: subprocess.Popen, log: Path, deadline: float) -> int:
    """The port the coordinator printed ("... listening on port P; ...") into its log file."""
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text(errors="replace").splitlines():
            if "listening on port" in line:
                return int(line.split("listening on port")[1].split(";")[0])
        time.sleep(0.1)
    raise SystemExit(f"the coordinator did not start (exit {proc.poll()}); see {log}")


async def _drive(address: str, n: int, heartbeat: str, pid: int) -> dict:
    swarm = Swarm(address, n, token=TOKEN, heartbeat=heartbeat)
    cpu0, self0 = _cpu_s(pid), time.process_time()
    swarm.start()
    t0 = time.monotonic()
    while len(swarm.stats.registered_at) < n and time.monotonic() - t0 < 600:
        await asyncio.sleep(0.05)
    await swarm.wait()
    wall = time.monotonic() - t0
    await swarm.close()
    return {"register_s": max(swarm.stats.registered_at.values(), default=float("nan")),
            "register_refusals": dict(swarm.stats.refusals), "heartbeats_sent": swarm.stats.heartbeats,
            "coordinator_cpu_s": _cpu_s(pid) - cpu0, "emulator_cpu_s": time.process_time() - self0, "wall_s": wall}


def run_one(n: int, scheme: str, s: int, rounds: int, warmup: int, heartbeat: str, tmp: Path) -> dict:
    job = tmp / f"job-{n}-{scheme}.yaml"
    job.write_text(yaml.safe_dump({"name": "scale", "workload": "linreg-synthetic", "workers": n, "rounds": rounds,
                                   "coding": {"scheme": scheme, "stragglers": s}}))
    token = tmp / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    out = tmp / f"run-{n}-{scheme}"
    log = tmp / f"coordinator-{n}-{scheme}.log"  # a file, not a pipe: a full pipe would stall its event loop
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dcoord", "coordinator", str(job), "--listen", "127.0.0.1:0",
                                 "--token-file", str(token), "--out", str(out), "--quiet", "--wait-workers", "600"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        port = _port(proc, log, time.monotonic() + 900)  # a loaded machine takes minutes to build gc-cyclic n=1024
        got = asyncio.run(_drive(f"127.0.0.1:{port}", n, heartbeat, proc.pid))
        rss = _rss_mb(proc.pid)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"round"' in x]
    recs = [r for r in recs if "round" in r][warmup:]
    walls = sorted(r["wall_s"] * 1e3 for r in recs)
    shares = {k: statistics.mean(r["coordinator_cpu_s"].get(k, 0.0) for r in recs) * 1e3
              for k in ("receive", "decode", "step", "send", "control")}
    median = statistics.median(walls)
    return {"workers": n, "scheme": scheme, "s": s, "heartbeat": heartbeat, "rounds_measured": len(recs),
            "median_round_ms": median, "p90_round_ms": walls[int(0.9 * (len(walls) - 1))],
            "per_worker_us": median * 1e3 / n, "coordinator_rss_mb": rss,
            "coordinator_cpu_pct": 100 * got["coordinator_cpu_s"] / got["wall_s"],
            "emulator_cpu_pct": 100 * got["emulator_cpu_s"] / got["wall_s"],
            "cpu_ms_per_round": shares, **{k: got[k] for k in ("register_s", "register_refusals", "heartbeats_sent")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--schemes", nargs="+", default=["uncoded", "gc-cyclic"], help="gc-cyclic runs with s=2")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="first rounds left out of the statistics")
    ap.add_argument("--heartbeat", choices=["auto", "rpc", "stream"], default="auto",
                    help="auto: as the coordinator says; rpc: the Heartbeat RPC every second (the old protocol)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results, rows = [], []
    with tempfile.TemporaryDirectory(prefix="dcoord-scale-") as d:
        for n in args.workers:
            for scheme in args.schemes:
                r = run_one(n, scheme, 2 if scheme != "uncoded" else 0, args.rounds, args.warmup, args.heartbeat,
                            Path(d))
                results.append(r)
                sh = r["cpu_ms_per_round"]
                rows.append([n, scheme, f"{r['register_s']:.1f}", f"{r['median_round_ms']:.1f}",
                             f"{r['p90_round_ms']:.1f}", f"{r['per_worker_us']:.0f}",
                             f"{r['coordinator_cpu_pct']:.0f}", f"{r['emulator_cpu_pct']:.0f}",
                             f"{r['coordinator_rss_mb']:.0f}",
                             " ".join(f"{k[:3]}={v:.1f}" for k, v in sh.items()),
                             sum(r["register_refusals"].values())])
                print(f"  N={n} {scheme}: median round {r['median_round_ms']:.1f} ms", file=sys.stderr, flush=True)
                write_json("control_scale", {"results": results, "partial": True}, Path(args.out) if args.out else None)
    print_table(["N", "scheme", "register s", "round median ms", "p90 ms", "us/worker/round", "coord CPU %",
                 "emulator CPU %", "coord RSS MB", "coord CPU ms/round", "Register refusals"], rows)
    base = {r["scheme"]: r for r in results if r["workers"] == min(args.workers)}
    for r in results:
        if r["workers"] != min(args.workers):
            ratio = r["per_worker_us"] / base[r["scheme"]]["per_worker_us"]
            print(f"per-worker cost at N={r['workers']} / N={min(args.workers)} ({r['scheme']}): {ratio:.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {write_json('control_scale', {'results': results, 'emulator_rss_mb': peak}, Path(args.out) if args.out else None)}")


if __name__ == "__main__":
    main()
