"""Soak: a long `dcoord run` with random worker kills and one coordinator kill + resume (not in the suite).

Real processes on loopback. A worker is SIGKILLed at random whenever all are up (at most s down; `dcoord
run` restarts it with the same id and it rejoins); halfway, the coordinator itself is SIGKILLed and the run
continued with `--resume`. Reports the coordinator's resident memory early and late in each of its two
lives (it should stay flat), rounds per second, and the final model's largest relative difference to an
uninterrupted run of the same job.

    python bench/soak.py            # 2000 rounds
    python bench/soak.py --quick    # 300 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _util import print_table, write_json

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def metrics(run: Path) -> tuple[int, int]:
    """(rounds logged, workers currently lost) from metrics.jsonl."""
    rounds = down = 0
    try:
        text = (run / "metrics.jsonl").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "round" in rec:
            rounds += 1
        elif rec.get("event") == "worker-lost":
            down += 1
        elif rec.get("event") == "worker-rejoined":
            down -= 1
        elif rec.get("event") == "resume":
            down = 0
    return rounds, down


def dcoord(*args: str) -> list[str]:
    return [sys.executable, "-m", "dcoord", *args]


def life(cmd: list[str], run: Path, stop_at: int | None, rng: random.Random, kill_p: float, env: dict) -> dict:
    """One coordinator process: kill workers at random; SIGKILL it at ``stop_at`` rounds (None: to the end)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss: list[tuple[int, float]] = []
    kills = 0
    last_kill_round = -1
    t0 = time.monotonic()
    first_round = metrics(run)[0]
    while proc.poll() is None:
        time.sleep(0.05)
        done, down = metrics(run)
        m = rss_mb(proc.pid)
        if m is not None and done > first_round:
            rss.append((done, m))
        if stop_at is not None and done >= stop_at:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        if down == 0 and done > last_kill_round + 3 and rng.random() < kill_p:
            kids = children(proc.pid)
            if kids:
                os.kill(rng.choice(kids), signal.SIGKILL)
                kills += 1
                last_kill_round = done
    err = proc.stderr.read() if proc.stderr else ""
    wall = time.monotonic() - t0
    done = metrics(run)[0]
    early = [m for r, m in rss if r >= first_round + 20][:20]
    late = [m for _, m in rss][-20:]
    return {"rc": proc.returncode, "rounds": done - first_round, "wall_s": wall, "worker_kills": kills,
            "rss_start_mb": sum(early) / len(early) if early else None,
            "rss_end_mb": sum(late) / len(late) if late else None, "stderr": err.strip()[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 rounds instead of 2000")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill-p", type=float, default=0.05, help="chance per poll (20/s) to kill a worker when all are up")
    ap.add_argument("--emulate-part-s", type=float, default=0.02,
                    help="sleep per part per round in each worker (runtime.emulate_part_s): rounds of a tiny model "
                         "otherwise keep every core busy, and a restarted worker then needs ~20 s to start and "
                         "rejoin on a 2-core machine, so few kills and rejoins would happen")
    args = ap.parse_args()
    rounds = args.rounds or (300 if args.quick else 2000)
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        job = t / "soak.yaml"
        job.write_text(yaml.safe_dump({
            "name": "soak", "workload": "logreg-digits", "seed": 0, "workers": 5, "rounds": rounds,
            "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5},
            "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "runtime": {"progress": False, "checkpoint_every": 25, "worker_wait_s": 120,
                        "restart_workers": True, "emulate_part_s": args.emulate_part_s}}))
        ref = t / "ref"
        t0 = time.monotonic()
        subprocess.run(dcoord("run", str(job), "--out", str(ref), "--quiet"), env=env, check=True,
                       capture_output=True)
        ref_wall = time.monotonic() - t0
        run = t / "run"
        first = life(dcoord("run", str(job), "--out", str(run), "--quiet"), run, rounds // 2, rng, args.kill_p, env)
        second = life(dcoord("run", str(job), "--resume", str(run), "--quiet"), run, None, rng, args.kill_p, env)
        if second["rc"] != 0:
            raise SystemExit(f"resumed run failed: {second['stderr']}")
        a, b = torch.load(run / "model.pt"), torch.load(ref / "model.pt")
        diff = max(float((a[k].double() - b[k].double()).norm() / max(b[k].double().norm(), 1e-12)) for k in a)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        logged = [r["round"] for r in lines if "round" in r]
        events = {e: sum(1 for r in lines if r.get("event") == e) for e in ("worker-lost", "worker-rejoined", "resume")}
    total_wall = first["wall_s"] + second["wall_s"]
    result = {
        "rounds": rounds, "seed": args.seed, "emulate_part_s": args.emulate_part_s,
        "rounds_each_once": logged == list(range(rounds)),
        "final_model_max_rel_diff_vs_uninterrupted": diff,
        "rounds_per_s_with_faults": rounds / total_wall, "rounds_per_s_uninterrupted_incl_startup": rounds / ref_wall,
        "coordinator_lives": [{k: v for k, v in x.items() if k != "stderr"} for x in (first, second)],
        "events": events,
    }
    print_table(["life", "rounds", "wall s", "worker kills", "RSS start MB", "RSS end MB"],
                [[i + 1, x["rounds"], x["wall_s"], x["worker_kills"], x["rss_start_mb"] or 0.0, x["rss_end_mb"] or 0.0]
                 for i, x in enumerate((first, second))])
    print(f"rounds/s with faults {result['rounds_per_s_with_faults']:.2f}; final model vs uninterrupted: "
          f"max rel diff {diff:.2e}; every round logged once: {result['rounds_each_once']}; events {events}")
    print(f"wrote {write_json('soak' + ('-quick' if args.quick else ''), result)}")


if __name__ == "__main__":
    main()
