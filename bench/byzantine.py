"""coding.byzantine: what exact detection costs, and what the approximate robust aggregators lose.

1. ``--timing``: real local runs (12 worker processes, logreg-digits), gc-fr with replication 3 both ways:
   detection off (stragglers 2) and on (byzantine 1, stragglers 0), no attack. Median round time of each
   and the ratio (goal: within 5%), and the coordinator's receive+decode CPU per round (the check's own
   cost). The round time also holds what the guarantee costs: off, a group is done at its fastest replica;
   on, at its second (a + 1 = 2 must agree).
2. ``--accuracy`` (default): in one process, full-batch GD on logreg-digits with n = 12 parts, one liar
   running each attack; the update from repetition with agreement (4 groups of 3, digests, exact) against
   the plain mean, coordinate-wise median, Krum and centered clipping over the 12 uncoded messages. Test
   accuracy after the rounds, and the aggregation time per round.

    python bench/byzantine.py [--accuracy] [--timing] [--rounds R] [--plot]
Writes bench/results/byzantine.json (and byzantine.png with --plot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import RESULTS, print_table, write_json  # noqa: E402

from dcoord.coding.byzantine import agree, digest  # noqa: E402
from dcoord.coding.robust import aggregate  # noqa: E402
from dcoord.runtime.tensors import flat_params, load_flat_params  # noqa: E402
from dcoord.runtime.worker.compute import TaskComputer  # noqa: E402
from dcoord.runtime.worker.lie import Liar  # noqa: E402
from dcoord.workloads import evaluate, load  # noqa: E402

N, GROUP = 12, 3
ATTACKS = ("none", "scaled", "constant", "noise", "alie")
METHODS = ("repetition", "mean", "median", "krum", "centered-clipping")


def _lie(attack: str, honest_msgs: np.ndarray, mine: np.ndarray, r: int) -> np.ndarray:
    """The liar's message. ALIE (Baruch et al. 2019): the honest mean shifted by 1.5 honest standard
    deviations per coordinate, inside the spread the robust aggregators accept."""
    if attack == "alie":
        return honest_msgs.mean(axis=0) - 1.5 * honest_msgs.std(axis=0)
    return Liar(0, attack, 1).tamper(r, mine)


def accuracy(rounds: int, lr: float = 0.5, liar: int = 0) -> tuple[list[dict], dict]:
    wl = load("logreg-digits", seed=0)
    comp = TaskComputer(wl, np.full(N, 1.0 / N), None, 0)
    x0 = flat_params(wl.model).astype(np.float64).copy()
    rows, curves = [], {}
    for attack in ATTACKS:
        for method in METHODS:
            x = x0.copy()
            center = np.zeros_like(x)
            agg_s = 0.0
            curve = []
            for r in range(rounds):
                load_flat_params(comp.model, x.astype(np.float32))
                parts = np.stack([comp.coded(r, [j], [1.0])[0].astype(np.float64) for j in range(N)])
                t0 = time.perf_counter()
                if method == "repetition":  # 4 groups of 3 replicas, each sends its group's part sum
                    msgs = {w: parts[(w // GROUP) * GROUP:(w // GROUP + 1) * GROUP].sum(axis=0) for w in range(N)}
                    if attack != "none":
                        msgs[liar] = _lie(attack, np.stack(list(msgs.values())), msgs[liar], r)
                    groups = [list(range(g * GROUP, (g + 1) * GROUP)) for g in range(N // GROUP)]
                    ag = agree({w: digest(m) for w, m in msgs.items()}, groups, 1)
                    g = sum(msgs[next(w for w in groups[k] if digest(msgs[w]) == d.value)]
                            for k, d in ag.groups.items())
                else:
                    msgs = N * parts  # each worker's uncoded message, scaled to estimate the whole gradient
                    if attack != "none":
                        msgs[liar] = _lie(attack, msgs[1:], msgs[liar], r)
                    g = aggregate(method, msgs, f=1, center=center, tau=float(np.linalg.norm(center)) or 1.0)
                    center = g
                agg_s += time.perf_counter() - t0
                x = x - lr * g
                if r % 10 == 9 or r == rounds - 1:
                    curve.append(_acc(wl, x))
            rows.append({"attack": attack, "method": method, "test_accuracy": curve[-1],
                         "aggregate_ms_per_round": 1e3 * agg_s / rounds})
            curves[f"{attack}/{method}"] = curve
            print(f"  {attack:9s} {method:18s} acc {curve[-1]:.3f}", flush=True)
    return rows, curves


def _acc(wl, x: np.ndarray) -> float:
    model = wl.model
    load_flat_params(model, x.astype(np.float32))
    return float(evaluate.test_accuracy(wl, model))


def timing(rounds: int) -> dict:
    """Median round time of real local runs, detection off and on (same replication, no attack)."""
    from dcoord.config import load_config
    from dcoord.runtime.local import run_local

    base = {"name": "byz-bench", "workload": "logreg-digits", "seed": 0, "workers": N, "rounds": rounds,
            "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5},
            "runtime": {"progress": False, "checkpoint_every": 0}}
    out = {}
    for label, coding in (("off", {"scheme": "gc-fr", "stragglers": 2}),
                          ("on", {"scheme": "gc-fr", "stragglers": 0, "byzantine": 1})):
        with tempfile.TemporaryDirectory() as tmp:
            run_local(load_config(None, data={**base, "coding": coding}), Path(tmp) / "run", progress=False)
            recs = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
                    if '"wall_s"' in x][5:]  # the first rounds include warm-up
        out[label] = statistics.median(r["wall_s"] for r in recs)
        # the coordinator's own CPU per round on the round loop (receive: results and the digest agreement;
        # decode: choosing and hashing one payload per group, then the sum): what the check itself costs
        out[f"{label}_coordinator_cpu"] = statistics.median(
            r["coordinator_cpu_s"]["receive"] + r["coordinator_cpu_s"]["decode"] for r in recs)
        print(f"  detection {label}: median round {1e3 * out[label]:.2f} ms, coordinator receive+decode "
              f"{1e3 * out[f'{label}_coordinator_cpu']:.3f} ms", flush=True)
    out["ratio_on_off"] = out["on"] / out["off"]
    out["cpu_ratio_on_off"] = out["on_coordinator_cpu"] / out["off_coordinator_cpu"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--timing-rounds", type=int, default=300)
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not (args.accuracy or args.timing):
        args.accuracy = True
    result: dict = {"n": N, "replication": GROUP, "rounds": args.rounds}
    if args.accuracy:
        rows, curves = accuracy(args.rounds)
        print_table(["attack", "method", "test accuracy", "aggregate ms/round"],
                    [[r["attack"], r["method"], r["test_accuracy"], r["aggregate_ms_per_round"]] for r in rows])
        result["accuracy"], result["curves"] = rows, curves
        if args.plot:
            _plot(rows)
    if args.timing:
        t = timing(args.timing_rounds)
        print_table(["", "detection off (ms)", "detection on (ms)", "on / off"],
                    [["round wall time", 1e3 * t["off"], 1e3 * t["on"], t["ratio_on_off"]],
                     ["coordinator receive+decode CPU", 1e3 * t["off_coordinator_cpu"],
                      1e3 * t["on_coordinator_cpu"], t["cpu_ratio_on_off"]]])
        result["timing"] = t
    print(f"wrote {write_json('byzantine', result)}")
    return 0


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    w = 0.8 / len(METHODS)
    for k, m in enumerate(METHODS):
        vals = [next(r["test_accuracy"] for r in rows if r["attack"] == a and r["method"] == m) for a in ATTACKS]
        ax.bar(np.arange(len(ATTACKS)) + k * w, vals, w, label=m)
    ax.set_xticks(np.arange(len(ATTACKS)) + 0.4 - w / 2, ATTACKS)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"logreg-digits, n = {N}, one liar")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(RESULTS / "byzantine.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
