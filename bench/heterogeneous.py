"""Round time on an emulated mixed cluster: gc-hetero vs the load-balanced bound vs gc-cyclic, s = 1.

Eight real worker processes on loopback, slowed to speeds {1,1,1,1,2,2,4,4} by injection (each worker's
compute, including ``runtime.emulate_job_s`` seconds per whole batch, is stretched by 4 / speed), so a
2-core machine emulates the cluster: the sleep dominates the real gradient work. Cases, each the median over
``--trials`` runs of the median round after the warm-up:

- hetero declared: ``coding.speeds`` given;
- hetero measured: speeds measured in the first rounds, then re-planned (rounds after the re-plan);
- hetero + transient: declared, plus one random worker per round 5x slower (a trace of extra delay);
- gc-cyclic s = 1 on the same workers.

The bound is (s + 1) x the batch's compute at the fastest speed / (sum of speeds / fastest) =
2 x J / 4 = 0.5 J. Every case's final model is compared with gc-cyclic's (all decode the exact gradient).
The simulator's prediction for the same profile (``dcoord.sim``, base_comp = J plus the measured overhead
per round at load 0) is printed beside each measured case.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _util import print_table, write_json

from dcoord.coding.registry import make_scheme
from dcoord.config import load_config
from dcoord.runtime.local import run_local
from dcoord.sim import simulate_job

SPEEDS = [1, 1, 1, 1, 2, 2, 4, 4]
S = 1


def bound(job_s: float) -> float:
    c = np.array(SPEEDS, dtype=float) / max(SPEEDS)
    return (S + 1) * job_s / c.sum()


def transient_trace(path: Path, rounds: int, delay_s: float, seed: int) -> Path:
    """One random worker per round gets ``delay_s`` extra seconds (4 x its round: a 5x straggler)."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((rounds, len(SPEEDS)))
    rows[np.arange(rounds), rng.integers(0, len(SPEEDS), rounds)] = delay_s
    np.savetxt(path, rows, delimiter=",", fmt="%.4f")
    return path


def run_case(coding: dict, inject: dict, rounds: int, job_s: float, skip: int, tmp: Path) -> dict:
    data = {"name": "bench-hetero", "workload": "logreg-digits", "workers": len(SPEEDS), "rounds": rounds,
            "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5}, "seed": 0, "coding": coding,
            "inject": inject, "runtime": {"progress": False, "emulate_job_s": job_s, "checkpoint_every": 0}}
    run_local(load_config(None, data=data), tmp, progress=False)
    lines = [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]
    recs = [x for x in lines if "round" in x and "event" not in x]
    replans = [x for x in lines if x.get("event") == "replan"]
    start = max(skip, min((r["from_round"] for r in replans), default=0))  # after the warm-up's re-plan
    walls = [r["wall_s"] for r in recs[start:]]
    summary = json.loads((tmp / "summary.json").read_text())
    model = torch.load(tmp / "model.pt")
    # seconds per whole batch at the fastest speed, as the workers timed it (emulated sleep + real gradients)
    hetero = coding["scheme"] == "gc-hetero"  # the measured plan ends at the injected speeds (after its re-plan)
    sch = make_scheme(coding["scheme"], len(SPEEDS), s=coding["stragglers"], speeds=SPEEDS if hetero else None)
    loads = sch.worker_loads(0)
    per_batch = [c / loads[int(w)] for r in recs[start:] for w, c in r["compute_s"].items() if loads[int(w)] > 0]
    return {"round_s": statistics.median(walls), "residual": summary["max_decode_residual"],
            "replans": replans, "model": {k: v.double() for k, v in model.items()},
            "batch_s": statistics.median(per_batch)}


def simulate(coding: dict, inject: dict, rounds: int, job_s: float, base_s: float, tmp: Path) -> float:
    data = simulate_job(len(SPEEDS), coding, {"jobs": rounds, "base_time": base_s, "base_comp": job_s,
                                              "carry_over": True}, tmp,
                        inject=inject, plot=False)
    return next(iter(data["schemes"].values()))["runtime_s"] / rounds


def report(runs: dict, cases: dict, J: float, R: int, td: str) -> tuple[float, dict, list, list]:
    """Medians, ratios to the bound and to gc-cyclic, the calibrated simulator's predictions, model checks."""
    speeds_inj = {"model": "speeds", "speeds": SPEEDS}
    ref = runs["gc-cyclic s=1"][0]["model"]
    b = bound(J)
    med = {k: statistics.median(r["round_s"] for r in v) for k, v in runs.items()}
    # the simulator, calibrated on the other scheme's runs (never on the case it predicts): seconds per
    # batch as the workers timed it, and the per-round overhead beyond the simulated compute
    def calibration(label: str, coding: dict) -> tuple[float, float]:
        js = statistics.median(r["batch_s"] for r in runs[label])
        return js, med[label] - simulate(coding, speeds_inj, R, js, 0.0, Path(td) / f"cal-{label[:6]}")

    cal = {"hetero": calibration("gc-cyclic s=1", cases["gc-cyclic s=1"][0]),
           "cyclic": calibration("hetero declared", cases["hetero declared"][0])}
    rows, out = [], []
    for name, (coding, inject, _) in cases.items():
        js, over = cal["cyclic" if name.startswith("gc-cyclic") else "hetero"]
        sim_coding = {**coding, "speeds": SPEEDS} if name == "hetero measured" else coding  # after re-plan
        pred = simulate(sim_coding, inject, R, js, 0.0, Path(td) / f"sim-{name.replace(' ', '_')}") + over
        diff = max(max(float(torch.max(torch.abs(r["model"][k] - ref[k])) / float(torch.max(torch.abs(ref[k]))))
                       for k in ref) for r in runs[name])
        m = med[name]
        b_eff = bound(statistics.median(r["batch_s"] for r in runs[name]))  # with the real gradient work too
        rows.append([name, m * 1000, m / b, m / b_eff, med["gc-cyclic s=1"] / m, pred * 1000, m / pred, diff])
        out.append({"case": name, "round_s": m, "trials": [r["round_s"] for r in runs[name]],
                    "x_bound": m / b, "x_bound_timed_batch": m / b_eff, "cyclic_over_this": med["gc-cyclic s=1"] / m, "sim_round_s": pred,
                    "measured_over_sim": m / pred, "max_rel_diff_vs_cyclic_model": diff,
                    "max_decode_residual": max(r["residual"] for r in runs[name]),
                    "replans": runs[name][0]["replans"]})
    return b, med, out, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--job-s", type=float, default=0.6, help="emulated seconds per whole batch at the fastest speed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    t0 = time.time()
    J, R = args.job_s, args.rounds
    speeds_inj = {"model": "speeds", "speeds": SPEEDS}
    with tempfile.TemporaryDirectory() as td:
        trace = transient_trace(Path(td) / "transient.csv", R, 4 * bound(J), seed=1)
        cases = {
            "hetero declared": ({"scheme": "gc-hetero", "stragglers": S, "speeds": SPEEDS}, speeds_inj, 1),
            "hetero measured": ({"scheme": "gc-hetero", "stragglers": S}, speeds_inj, 1),
            "hetero + transient 5x": ({"scheme": "gc-hetero", "stragglers": S, "speeds": SPEEDS},
                                      {"model": "trace", "path": str(trace), "speeds": SPEEDS}, 1),
            "gc-cyclic s=1": ({"scheme": "gc-cyclic", "stragglers": S}, speeds_inj, 1),
        }
        runs: dict[str, list[dict]] = {k: [] for k in cases}
        for t in range(args.trials):
            for name, (coding, inject, skip) in cases.items():
                d = Path(td) / f"{name.replace(' ', '_')}-{t}"
                d.mkdir()
                runs[name].append(run_case(coding, inject, R, J, skip, d))
                print(f"  trial {t} {name:24s} {runs[name][-1]['round_s'] * 1000:7.1f} ms/round", flush=True)
        b, med, out, rows = report(runs, cases, J, R, td)
    print()
    print(f"bound (s+1) J / sum(c/c_max) = {b * 1000:.1f} ms (J = {J} s)")
    print_table(["case", "ms/round", "x bound", "x bound (timed J)", "cyclic / this", "sim ms", "meas / sim", "model diff"], rows)
    hd, hm = med["hetero declared"], med["hetero measured"]
    print(f"\nmeasured / declared after warm-up: {hm / hd:.3f}")
    path = write_json("heterogeneous", {"speeds": SPEEDS, "s": S, "rounds": R, "trials": args.trials, "job_s": J,
                                        "bound_s": b, "measured_over_declared": hm / hd, "results": out,
                                        "bench_wall_s": time.time() - t0}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
