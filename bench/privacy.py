"""DP-GD vs DIFF2-GD in the DIFF2 paper's own setting (Murata & Suzuki, ICML 2023), and mini-batch DP-SGD.

Setting (the paper's): neighbouring relation replace-one (sensitivity 2C/N), ONE noise draw on the aggregate
(the average over the P = 10 nodes: dcoord's ``trust: coordinator``), full batch, R = 2000 rounds,
delta = 1e-5, eps in {3, 5}; restart period T in {6, 20, 60, 200}, C1 and c2 in {1, 3, 10, 30, 100}; for
every (T, C1, c2) the learning rate is the largest 0.5^i (i = 0..9) that does not diverge. Task: the
``housing-mlp`` workload (8 standardised features, 16,512 training samples, 8-10-1 softplus MLP, d = 101;
California Housing if $DCOORD_CALIFORNIA_HOUSING names a local copy, a synthetic stand-in of the same shape
otherwise). The noise is calibrated by dcoord (``PrivateGD.from_config`` on the job's PrivacyConfig: RDP
accountant, the paper's restart/difference budget split) and read from its RoundSpecs.

Protocol: every configuration runs on a tuning seed (1000) and on report seeds 0..S-1. On the tuning seed
each (T, C1, c2) gets its learning rate (largest non-diverging) and each mechanism its best (T, C1, c2) by
final train loss; the report seeds, never used for choosing, give mean ± std of train loss, ||grad f|| and
test loss. DIFF2's best setting per T is reported too (where DIFF2 wins and where it does not).
Beside them, at the same epsilon and R: DP-SGD with Poisson sampling (``privacy.sampling: poisson``) at each
rate q of the grid (default q in {0.01, 0.1}; calibrated with the subsampled accountant, the same C1 and lr
grids, noise on the mean over the expected batch qN).
"Diverged": train loss above 10 (10x predicting the mean) or not finite at a check (every 50 rounds) or
at the end.

Speed: runs go through bench/diff2_sim.py, a vectorised closed-form simulation of the mechanisms (checked
against dcoord's clipped sums and GradientEstimator in tests/test_privacy_bench_sim.py), many runs per
batch. Grids: ``--grid full`` (the paper's: 1,050 configurations x 2 eps x (1 + 5) seeds = 12,600 runs of
2000 rounds; minutes on a GPU, days on 2 CPU cores), ``reduced`` (default without a GPU; see GRIDS),
``quick`` (a smoke run of about a minute). ``--export-spec DIR`` writes the sweep for another machine
(``python bench/diff2_sim.py DIR/spec.pt --out sweep.json``, torch only) and ``--import-sweep
sweep.json`` turns its result into the report.

Run: .venv/bin/python bench/privacy.py [--grid full|reduced|quick] [--device cpu|cuda] [--seeds S]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diff2_sim  # noqa: E402
from _util import RESULTS, print_table, write_json  # noqa: E402

from dcoord.privacy import PrivacyConfig, PrivateGD, plan  # noqa: E402
from dcoord.privacy.mechanisms import PAPER_CLIP_DIFF_GRID, PAPER_CLIP_GRID, PAPER_ETA_GRID  # noqa: E402
from dcoord.workloads.housing import housing_data, housing_model  # noqa: E402

DELTA = 1e-5
TUNE_SEED = 1000
NODES = 10  # P: the noise is drawn once on the average over nodes, so P only fixes n = N / P
PAPER_CLAIM = (
    "Murata & Suzuki (ICML 2023, arXiv 2302.03884): DIFF2-GD reaches lower train loss and gradient norm than "
    "DP-GD at eps 3 and 5 on tabular regression (R = 2000, P = 10, 8-10-1 softplus MLP); theory: utility "
    "(squared gradient norm) O(d^(2/3)/(n eps)^(4/3)) for DIFF2 vs O(sqrt(d)/(n eps)) for DP-GD, so DIFF2 helps "
    "when n eps >> sqrt(d)."
)
GRIDS: dict[str, dict[str, Any]] = {
    "full": {"rounds": 2000, "eps": [3.0, 5.0], "T": [6, 20, 60, 200], "C1": list(PAPER_CLIP_GRID),
             "c2": list(PAPER_CLIP_DIFF_GRID), "lr": list(PAPER_ETA_GRID), "seeds": 5, "q": [0.01, 0.1]},
    # without a GPU (2 CPU cores do ~30 run-rounds/s here): the paper's R and eps around the full grid's winners
    # (DP-GD lr 1, C1 1; DIFF2 T 60, C1 1, c2 3), not a tuning: 32,000 run-rounds
    "reduced": {"rounds": 2000, "eps": [3.0, 5.0], "T": [60], "C1": [1.0], "c2": [3.0], "lr": [1.0, 0.25],
                "seeds": 1, "q": [0.01, 0.1]},
    "quick": {"rounds": 100, "eps": [3.0], "T": [6, 20], "C1": [3.0], "c2": [3.0, 30.0], "lr": [0.25, 0.0625],
              "seeds": 1, "q": [0.01, 0.1]},
}


# ------------------------------------------------------------------------------------------ the sweep


def calibrate(eps: float, T: int, rounds: int, n: int, q: float = 1.0) -> dict[str, float]:
    """Noise per unit clip (s1, s2) from dcoord's calibrated mechanism in the paper's setting; T = 1 is DP-GD,
    T = 1 with q < 1 DP-SGD (Poisson sampling at rate q, s1 per unit clip of the mean over qN)."""
    mech_name = "dp-gd" if T == 1 else "diff2"
    sampling = {"sampling": "poisson", "sample_rate": q} if q < 1 else {}
    cfg = PrivacyConfig(mechanism=mech_name, epsilon=eps, delta=DELTA, clip=1.0, trust="coordinator",
                        neighbouring="replace-one", restart_every=None if T == 1 else T,
                        clip_diff=None if T == 1 else 1.0, **sampling)
    mech = PrivateGD.from_config(cfg, rounds=rounds, n_samples=n, num_partitions=NODES)
    s1 = mech.round_spec(0).coordinator_std  # clip 1
    s2 = mech.round_spec(1, step_norm=1.0).coordinator_std if T > 1 else 0.0  # C2 = c2 * 1 = 1
    return {"s1": s1, "s2": s2, "z1": mech.noise_multiplier, "z2": mech.noise_multiplier_diff or 0.0,
            "eps_planned": plan(cfg, rounds, n, NODES)["epsilon"]}


def configurations(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (mechanism, T, C1, c2, lr, q) of the grid; DP-GD has T = 1 and no c2; DP-SGD is DP-GD at q < 1
    (last, so the full-batch runs keep their batches and noise draws)."""
    out = [{"mechanism": "dp-gd", "T": 1, "C1": c1, "c2": 0.0, "lr": lr, "q": 1.0}
           for c1, lr in product(grid["C1"], grid["lr"])]
    out += [{"mechanism": "diff2", "T": T, "C1": c1, "c2": c2, "lr": lr, "q": 1.0}
            for T, c1, c2, lr in product(grid["T"], grid["C1"], grid["c2"], grid["lr"])]
    out += [{"mechanism": "dp-sgd", "T": 1, "C1": c1, "c2": 0.0, "lr": lr, "q": q}
            for q, c1, lr in product(grid.get("q", []), grid["C1"], grid["lr"])]
    return out


def _cal_key(eps: float, c: dict[str, Any]) -> str:
    return f"{eps}/{c['T']}" if c["q"] == 1.0 else f"{eps}/q={c['q']:g}"


def build_spec(grid: dict[str, Any], seeds: list[int], dtype: str = "float32") -> dict[str, Any]:
    """Data, initial parameters, calibrated noise and one job per (eps, seed): what diff2_sim runs."""
    X, y, Xt, yt, source = housing_data()
    n, rounds = X.shape[0], grid["rounds"]
    configs = configurations(grid)
    cal = {f"{eps}/{T}": calibrate(eps, T, rounds, n) for eps in grid["eps"] for T in [1, *grid["T"]]}
    cal.update({f"{eps}/q={q:g}": calibrate(eps, 1, rounds, n, q) for eps in grid["eps"] for q in grid.get("q", [])})
    jobs = []
    for eps in grid["eps"]:
        cols: dict[str, list[float]] = {k: [] for k in ("eta", "clip", "clip_diff", "restart_every", "s1", "s2",
                                                        "sample_rate")}
        for c in configs:
            k = cal[_cal_key(eps, c)]
            for key, val in (("eta", c["lr"]), ("clip", c["C1"]), ("clip_diff", c["c2"]),
                             ("restart_every", c["T"]), ("s1", k["s1"]), ("s2", k["s2"]), ("sample_rate", c["q"])):
                cols[key].append(val)
        tens = {k: torch.tensor(v, dtype=torch.int64 if k == "restart_every" else torch.float64)
                for k, v in cols.items()}
        jobs += [{"name": f"eps={eps}/seed={s}", "eps": eps, "seed": s, "configs": tens} for s in seeds]
    x0 = {s: torch.cat([p.detach().reshape(-1) for p in housing_model(s).parameters()]) for s in seeds}
    return {"rounds": rounds, "log_every": 50 if rounds % 50 == 0 else rounds, "dtype": dtype, "jobs": jobs,
            "x0": x0, "data": {"X": X, "y": y, "X_test": Xt, "y_test": yt}, "source": source,
            "configs": configs, "calibration": cal, "grid": grid, "seeds": seeds, "n": n}


# ------------------------------------------------------------------------------------------ the report


def _fin(v: float) -> float | None:
    return v if math.isfinite(v) else None


def mean_std(vals: list[float]) -> dict[str, Any]:
    """Mean ± sample std over the seeds that did not diverge, and how many did."""
    ok = [v for v in vals if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(ok) if ok else None, "std": statistics.stdev(ok) if len(ok) > 1 else 0.0,
            "diverged": len(vals) - len(ok), "values": [_fin(v) if v is not None else None for v in vals]}


def report(spec: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """Tune on TUNE_SEED (largest non-diverging lr per (T, C1, c2), then best by train loss), report seeds."""
    configs, grid = spec["configs"], spec["grid"]
    report_seeds = [s for s in spec["seeds"] if s != TUNE_SEED]
    out: dict[str, Any] = {}
    for eps in grid["eps"]:
        tune = sweep[f"eps={eps}/seed={TUNE_SEED}"]
        by_h: dict[tuple, list[int]] = {}
        for i, c in enumerate(configs):
            by_h.setdefault((c["mechanism"], c["T"], c["C1"], c["c2"], c["q"]), []).append(i)
        chosen: dict[tuple, dict[str, Any]] = {}
        for h, idx in by_h.items():
            ok = [i for i in idx if not tune["diverged"][i]]
            if not ok:
                continue
            i = max(ok, key=lambda j: configs[j]["lr"])  # the largest lr that does not diverge
            chosen[h] = {"index": i, "lr": configs[i]["lr"], "tune_loss": tune["loss"][i]}

        def stats(i: int, eps: float = eps, tune: dict[str, Any] = tune) -> dict[str, Any]:
            res = {m: mean_std([sweep[f"eps={eps}/seed={s}"][m][i] for s in report_seeds])
                   for m in ("loss", "grad_norm", "test_loss")}
            curves = [sweep[f"eps={eps}/seed={s}"]["curve"][i] for s in report_seeds]
            res["curve_mean"] = [_fin(statistics.fmean(v)) if all(math.isfinite(x) for x in v) else None
                                 for v in zip(*curves, strict=True)]
            return {**configs[i], **res, "tune_loss": tune["loss"][i]}

        def best(pred: Any, chosen: dict[tuple, dict[str, Any]] = chosen) -> dict[str, Any] | None:
            cands = [(v["tune_loss"], v["index"]) for h, v in chosen.items() if pred(h)]
            return stats(min(cands)[1]) if cands else None

        rows = {"dp-gd": best(lambda h: h[0] == "dp-gd"), "diff2": best(lambda h: h[0] == "diff2")}
        for q in grid.get("q", []):
            rows[f"dp-sgd q={q:g}"] = best(lambda h, q=q: h[0] == "dp-sgd" and h[4] == q)
        per_T = {str(T): best(lambda h, T=T: h[0] == "diff2" and h[1] == T) for T in grid["T"]}
        # where DIFF2 wins and where not: best C1 (on the tuning seed) for every (T, c2), on the report seeds
        t_by_c2 = {}
        for T, c2 in product(grid["T"], grid["c2"]):
            b = best(lambda h, T=T, c2=c2: h[0] == "diff2" and h[1] == T and h[3] == c2)
            t_by_c2[f"T={T}/c2={c2:g}"] = None if b is None else {
                k: b[k] for k in ("lr", "C1", "loss", "grad_norm", "test_loss")}
        lr_table = [{"mechanism": h[0], "T": h[1], "C1": h[2], "c2": h[3], "q": h[4], "lr": v["lr"],
                     "tune_loss": _fin(v["tune_loss"])} for h, v in chosen.items()]
        never = [{"mechanism": h[0], "T": h[1], "C1": h[2], "c2": h[3], "q": h[4]} for h in by_h if h not in chosen]
        cal = {k.split("/", 1)[1]: v for k, v in spec["calibration"].items() if k.startswith(f"{eps}/")}
        out[str(eps)] = {"best": rows, "diff2_best_per_T": per_T, "diff2_by_T_and_c2": t_by_c2,
                         "lr_chosen": lr_table,
                         "all_lrs_diverged": never, "calibration": cal}
    return out


def fmt(s: dict[str, Any] | None, key: str) -> str:
    if s is None:
        return "-"
    m = s[key]
    if m["mean"] is None:
        return f"diverged {m['diverged']}"
    tail = f" ({m['diverged']} div.)" if m["diverged"] else ""
    return f"{m['mean']:.4g}±{m['std']:.2g}{tail}"


def print_report(rep: dict[str, Any]) -> None:
    rows = []
    for eps, r in rep.items():
        entries = [("DP-GD", r["best"]["dp-gd"]), ("DIFF2 best", r["best"]["diff2"])]
        entries += [(f"DIFF2 T={T}", s) for T, s in r["diff2_best_per_T"].items()]
        entries += [(k.replace("dp-sgd", "DP-SGD"), s) for k, s in r["best"].items() if k.startswith("dp-sgd")]
        for name, s in entries:
            setting = "-" if s is None else f"lr={s['lr']:g} C1={s['C1']:g}" + (
                f" c2={s['c2']:g} T={s['T']}" if s["mechanism"] == "diff2" else "")
            rows.append([eps, name, fmt(s, "loss"), fmt(s, "grad_norm"), fmt(s, "test_loss"), setting])
    print_table(["eps", "mechanism", "train loss", "||grad f||", "test loss", "tuned setting"], rows)
    for eps, r in rep.items():  # DIFF2 (best C1) per (T, c2) against DP-GD's best, report seeds
        dp = r["best"]["dp-gd"]
        if dp is None or dp["loss"]["mean"] is None:
            continue
        cells = []
        for key, b in r["diff2_by_T_and_c2"].items():
            if b is None or b["loss"]["mean"] is None:
                cells.append([eps, key, "all lr diverged" if b is None else "diverged", "-", "-"])
                continue
            lr_ = b["loss"]["mean"] / dp["loss"]["mean"]
            gr_ = b["grad_norm"]["mean"] / dp["grad_norm"]["mean"]
            cells.append([eps, key, f"{lr_:.3f}", f"{gr_:.3f}", f"lr={b['lr']:g} C1={b['C1']:g}"])
        print(f"\nDIFF2 / DP-GD at eps {eps} (ratios of report-seed means; < 1: DIFF2 better)")
        print_table(["eps", "DIFF2 setting", "train loss ratio", "||grad f|| ratio", "tuned"], cells)
        sgd = [(k, b) for k, b in r["best"].items() if k.startswith("dp-sgd")]
        if sgd:
            cells = [[eps, k.replace("dp-sgd", "DP-SGD"), "-", "-", "all lr diverged" if b is None else "diverged"]
                     if b is None or b["loss"]["mean"] is None else
                     [eps, k.replace("dp-sgd", "DP-SGD"), f"{b['loss']['mean'] / dp['loss']['mean']:.3f}",
                      f"{b['grad_norm']['mean'] / dp['grad_norm']['mean']:.3f}", f"lr={b['lr']:g} C1={b['C1']:g}"]
                     for k, b in sgd]
            print(f"\nDP-SGD (Poisson sampling) / DP-GD at eps {eps} (same epsilon and rounds; < 1: DP-SGD better)")
            print_table(["eps", "DP-SGD", "train loss ratio", "||grad f|| ratio", "tuned"], cells)


def plot(rep: dict[str, Any], rounds: int, log_every: int, path: Path) -> None:
    """Per eps: the three metrics for DP-GD and DIFF2's best per T (error bars: std over seeds), and curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rep), 4, figsize=(17, 3.8 * len(rep)), squeeze=False)
    for row, (eps, r) in zip(axes, rep.items(), strict=True):
        entries = [("DP-GD", r["best"]["dp-gd"])] + [(f"T={T}", s) for T, s in r["diff2_best_per_T"].items()]
        entries += [(k.replace("dp-sgd ", "SGD "), s) for k, s in r["best"].items() if k.startswith("dp-sgd")]
        names = [n for n, _ in entries]
        for ax, key, title in zip(row[:3], ("loss", "grad_norm", "test_loss"),
                                  ("train loss", "||grad f(x_R)||", "test loss"), strict=True):
            means = [s[key]["mean"] if s and s[key]["mean"] is not None else math.nan for _, s in entries]
            stds = [s[key]["std"] if s else 0.0 for _, s in entries]
            colors = ["tab:blue" if n == "DP-GD" else "tab:green" if n.startswith("SGD") else "tab:red"
                      for n in names]
            ax.bar(names, means, yerr=stds, color=colors, capsize=3)
            ax.set(title=f"eps={eps}: {title}", yscale="log")
            ax.grid(alpha=0.3, axis="y")
        palette = iter(["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:cyan", "tab:olive",
                        "tab:pink", "tab:gray"])
        for name, s in entries:
            if s and s["curve_mean"]:
                xs = [min(i * log_every, rounds) for i in range(len(s["curve_mean"]))]
                ys = [v if v is not None else math.nan for v in s["curve_mean"]]
                row[3].plot(xs, ys, label=name if name == "DP-GD" or name.startswith("SGD") else f"DIFF2 {name}",
                            color="tab:blue" if name == "DP-GD" else next(palette))
        row[3].set(title=f"eps={eps}: train loss (mean over seeds)", xlabel="round", yscale="log")
        row[3].legend(fontsize=8)
        row[3].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(spec: dict[str, Any], sweep: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    """Report, table, JSON and plot."""
    rep = report(spec, sweep["results"])
    print_report(rep)
    grid = spec["grid"]
    n_runs = len(spec["configs"]) * len(spec["jobs"])
    path = write_json("privacy", {
        "setting": {"neighbouring": "replace-one", "trust": "coordinator (one noise draw on the aggregate)",
                    "accountant": "rdp", "delta": DELTA, "nodes": NODES, "n_total": spec["n"],
                    "n_per_node": spec["n"] / NODES, "d": diff2_sim.DIM, "data": spec["source"],
                    "diverged_if": f"train loss > {diff2_sim.DIVERGED} or not finite"},
        "grid": grid, "tune_seed": TUNE_SEED, "report_seeds": [s for s in spec["seeds"] if s != TUNE_SEED],
        "runs": n_runs, "run_rounds": n_runs * grid["rounds"], "device": sweep.get("device"),
        "sweep_wall_s": sweep.get("wall_s"), **meta, "paper": PAPER_CLAIM, "eps": rep}, out)
    plot(rep, grid["rounds"], spec["log_every"], out / "privacy.png")
    print(f"\n{n_runs} runs x {grid['rounds']} rounds on {sweep.get('device')} in {sweep.get('wall_s', 0):.0f} s; "
          f"wrote {path} and {out / 'privacy.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=list(GRIDS), default=None, help="default: full with a GPU, else reduced")
    ap.add_argument("--quick", action="store_true", help="same as --grid quick")
    ap.add_argument("--rounds", type=int, default=None, help="override R (smoke tests; the paper's is 2000)")
    ap.add_argument("--seeds", type=int, default=None, help="report seeds 0..S-1 (the tuning seed is extra)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="runs simulated together (default 2048 GPU, 32 CPU)")
    ap.add_argument("--export-spec", type=Path, default=None, help="write DIR/spec.pt for another machine and stop")
    ap.add_argument("--import-sweep", type=Path, default=None, help="report a sweep.json run from --export-spec")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    gname = "quick" if args.quick else args.grid or ("full" if args.device.startswith("cuda") else "reduced")
    grid = dict(GRIDS[gname])
    if args.rounds:
        grid["rounds"] = args.rounds
    seeds = [TUNE_SEED, *range(args.seeds if args.seeds is not None else grid["seeds"])]
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.time()
    spec = build_spec(grid, seeds)
    out = args.out or RESULTS
    print(f"grid {gname}: {len(spec['configs'])} configurations x {len(grid['eps'])} eps x {len(seeds)} seeds, "
          f"R = {grid['rounds']}, data: {spec['source']}")
    if args.export_spec:
        args.export_spec.mkdir(parents=True, exist_ok=True)
        torch.save(spec, args.export_spec / "spec.pt")
        print(f"wrote {args.export_spec / 'spec.pt'}; run: python bench/diff2_sim.py SPEC --out sweep.json")
        return
    if args.import_sweep:
        sweep = json.loads(args.import_sweep.read_text())
    else:
        bs = args.batch_size or (2048 if args.device.startswith("cuda") else 32)
        t1 = time.perf_counter()
        res = diff2_sim.run_spec(spec, args.device, bs)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        sweep = {"device": name, "wall_s": time.perf_counter() - t1, "results": res}
    finish(spec, sweep, {"grid_name": gname, "bench_wall_s": time.time() - t0}, out)


if __name__ == "__main__":
    main()
