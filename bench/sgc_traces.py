"""Which scheme and close rule win on the measured AWS Lambda traces, out of sample.

Every probe with a load-0 and a load-1 file in --traces (256 workers) is one trace. d(0) is its l0_000 file
(the first --skip-rows warm-up rows dropped); base_comp, the seconds of one full job, is estimated from the
same probe as the authors do (mean l1_000 - mean l0_000); a worker's time at load L is d(0) + L * base_comp.

Out of sample (probe-then-pick, as in the paper): for every evaluated trace e and --tune-probes OTHER probes p,
every policy (scheme x close rule) is tuned on p's straggler pattern (p's d(0) with e's base_comp: the user
knows the cost of their own model and probes the workers' stragglers) and the parameters are scored on e.
Per trace: the mean over the tuning probes (and its spread); across traces: the geometric mean.

1. The paper's comparison on its own terms: nominal load (simulate.load_model: nominal, the authors'
   accounting), the paper's (1+mu) rule for every scheme, no coding / GC / SR-SGC / M-SGC; M-SGC's and
   SR-SGC's gain over GC beside the paper's headline (M-SGC ~16% faster than GC, SR-SGC ~7%), plus the same
   numbers tuned in sample (on e itself) for contrast.
2. dcoord's verdict with actual load: every scheme under both close rules (earliest = first decodable
   arrival for plain codes, first model-conforming arrival for sequential codes; straggler-rule = the
   paper's), dcoord's recommendation (the policy fastest on the tune probe) and its ratio to the paper's
   pick (its schemes under its rule, also chosen on the tune probe); and where the recommendation loses to
   the best policy in hindsight.
3. A trace-driven local replay with real processes (inject: {model: trace}): gc-cyclic against m-sgc, the
   same jobs, wall time per job and their ratio in one run (--replay-jobs 0 skips it).
Also the simulator's speed (256 workers x 500 jobs; n = 64..4096). Writes results/sgc_traces.json and .png.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # small solves; shared cores
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _util import print_table, write_json  # noqa: E402

from dcoord.coding.registry import make_scheme  # noqa: E402
from dcoord.sim import ModelDelays, SimulateConfig, TraceDelays, simulate  # noqa: E402
from dcoord.sim.oos import EvalSource, sim_config, tune_policies  # noqa: E402
from dcoord.sim.tune import estimate_base_comp  # noqa: E402
from dcoord.stragglers import InjectConfig, load_trace_csv, make_straggler_model  # noqa: E402

SCHEMES = ["uncoded", "gc-fr", "gc-cyclic", "sr-sgc", "m-sgc"]
SHOWN = ["uncoded", "gc-cyclic", "sr-sgc", "m-sgc"]
PAPER = ["uncoded", "gc-cyclic", "sr-sgc", "m-sgc"]  # the paper's GC tolerates any s stragglers: gc-cyclic
RULES = ["earliest", "straggler-rule"]
PAPER_GAIN = {"m-sgc": 0.16, "sr-sgc": 0.07}  # the paper's headline: faster than GC by about this much
QUICK = ("mbp__w256-n10-l0_000-b256-cno_forloop-London", "desktop_long__w256-n30", "mbp2__w256-n20")
REPLAY = [("gc-cyclic", "earliest"), ("m-sgc", "straggler-rule"), ("m-sgc", "earliest")]
LAMBDAS = [1, 2, 3, 4, 6, 8, 12, 16, 23, 27, 32, 64, 128, 256]  # coarse, with the paper's 23 / 27
MAX_WINDOW = 7  # sr-sgc: W <= 7


def find_probes(folder: Path) -> list[tuple[str, Path, Path]]:
    """(label, load-0 file, load-1 file) for every probe that has both."""
    out = []
    for l0 in sorted(folder.glob("*-l0_000-*.csv")):
        l1 = l0.with_name(l0.name.replace("-l0_000-", "-l1_000-"))
        if l1.is_file():
            m = re.match(r"sam-gc-(.+?)_profile_est[-_]?(.*?)__w\d+-n(\d+)-.*-(\w+)\.csv$", l0.name)
            label = f"{m.group(1)}-{m.group(2) or 'base'}-{m.group(4)}" if m else l0.stem
            out.append((label, l0, l1))
    return out


@dataclass
class Probe:
    label: str
    file: str
    d0: np.ndarray
    base_comp: float
    jobs: int


def load_probes(args) -> list[Probe]:
    probes = find_probes(args.traces)
    if args.quick:
        probes = [p for p in probes if any(q in p[1].name for q in QUICK)]
    if not probes:
        raise SystemExit(f"no probe with both l0_000 and l1_000 files in {args.traces}")
    out = []
    for label, l0, l1 in probes:
        d0 = load_trace_csv(l0)[args.skip_rows:]
        bc = args.base_comp if args.base_comp is not None else estimate_base_comp(l0, l1, skip_rows=args.skip_rows)
        out.append(Probe(label, l0.name, d0, bc, d0.shape[0] - args.max_delay))
    return out


def tuned(p: Probe, base_comp: float, rule: str, load_model: str, schemes: list[str], args) -> dict:
    """Best parameters of every scheme on probe p's stragglers at ``base_comp``: {scheme: Scored}."""
    src = EvalSource(TraceDelays(p.d0, p.d0.shape[1], base_comp, name=p.label), p.jobs, p.label)
    return tune_policies(p.d0.shape[1], src, args.max_delay, schemes=schemes, rules=[rule], mu=args.mu,
                         load_model=load_model, lambda_grid=LAMBDAS, max_window=MAX_WINDOW)


def score(e: Probe, sc, rule: str, load_model: str, args, carry_over: bool = False) -> float:
    """Seconds per job of a tuned policy on trace e (carry_over: persistent workers, see SimulateConfig)."""
    n = e.d0.shape[1]
    scheme = make_scheme(sc.scheme, n, jobs=e.jobs, **sc.choice.kwargs)
    cfg = sim_config(rule, e.jobs, args.mu, load_model).model_copy(update={"carry_over": carry_over})
    res = simulate(scheme, TraceDelays(e.d0, n, e.base_comp, name=e.label), cfg)
    return res.runtime_s / e.jobs


SETTINGS = {  # name: (load model, rule, schemes)
    "paper": ("nominal", "straggler-rule", PAPER),
    "actual-straggler-rule": ("actual", "straggler-rule", SCHEMES),
    "actual-earliest": ("actual", "earliest", SCHEMES),
}


def tuning_probes(probes: list[Probe], e: Probe, k: int) -> list[Probe]:
    """The k probes after e in the list (cyclically): e is never tuned on."""
    i = probes.index(e)
    return [probes[(i + j) % len(probes)] for j in range(1, min(k, len(probes) - 1) + 1)]


def out_of_sample(probes: list[Probe], args) -> dict:
    """{trace: {setting: {scheme: [s/job per tuning probe]}}, in-sample and the tuning choices too."""
    res: dict = {}
    for e in probes:
        t0 = time.perf_counter()
        entry = {"file": e.file, "rows": int(e.d0.shape[0]), "jobs": e.jobs, "base_comp": e.base_comp,
                 "in_sample": {}, "oos": {k: {} for k in SETTINGS},
                 "oos_carry": {k: {} for k in SETTINGS}, "tune": {k: {} for k in SETTINGS}}
        for key, (lm, rule, schemes) in SETTINGS.items():
            # in sample: tuned on e itself
            best = tuned(e, e.base_comp, rule, lm, schemes, args)
            entry["in_sample"][key] = {s: {"per_job_s": sc.tune_per_job_s, "params": dict(sc.choice.params)}
                                       for (s, _), sc in best.items()}
            for p in tuning_probes(probes, e, args.tune_probes):
                best = tuned(p, e.base_comp, rule, lm, schemes, args)
                for (s, _), sc in best.items():
                    entry["oos"][key].setdefault(s, []).append(score(e, sc, rule, lm, args))
                    if lm == "actual":  # the same choice on persistent workers (a cut-off task runs on)
                        entry["oos_carry"][key].setdefault(s, []).append(score(e, sc, rule, lm, args, True))
                    entry["tune"][key].setdefault(s, []).append(
                        {"probe": p.label, "tune_per_job_s": sc.tune_per_job_s, "params": dict(sc.choice.params)})
        entry["wall_s"] = time.perf_counter() - t0
        print(f"  {e.label}: {entry['wall_s']:.1f} s", flush=True)
        res[e.label] = entry
    return res


def pick(entry: dict, k: int, keys: list[str], schemes: list[str] | None = None,
         table: str = "oos") -> tuple[str, str, float]:
    """The policy fastest on the k-th tuning probe among settings ``keys``: (setting, scheme, its s/job on e)."""
    best = None
    for key in keys:
        for s, lst in entry["tune"][key].items():
            if schemes is not None and s not in schemes:
                continue
            t = lst[k]["tune_per_job_s"]
            if best is None or t < best[0]:
                best = (t, key, s)
    assert best is not None
    return best[1], best[2], entry[table][best[1]][best[2]][k]


def gm(v) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(v, dtype=np.float64)))))


def verdict(res: dict, table: str, title: str) -> dict:
    print(f"\n== 2. dcoord's verdict, {title}: actual load, every scheme under both close rules, out of "
          "sample; s/job relative to the paper's pick ==")
    pols = [(k, s) for k in ("actual-earliest", "actual-straggler-rule") for s in SCHEMES]
    rows = []
    per = {"rec_over_paper": [], "rec_over_best": [], "policies": {f"{s} / {k[7:]}": [] for k, s in pols}}
    recs: dict[str, dict] = {}
    for label, e in res.items():
        K = len(e[table]["actual-earliest"]["m-sgc"])
        rec = [pick(e, k, ["actual-earliest", "actual-straggler-rule"], table=table) for k in range(K)]
        pap = [pick(e, k, ["actual-straggler-rule"], PAPER, table=table) for k in range(K)]
        rec_m = float(np.mean([r[2] for r in rec]))
        pap_m = float(np.mean([p[2] for p in pap]))
        means = {f"{s} / {k[7:]}": float(np.mean(e[table][k][s])) for k, s in pols}
        best_name = min(means, key=means.get)
        chosen: dict[str, int] = {}
        for r in rec:
            chosen[f"{r[1]} / {r[0][7:]}"] = chosen.get(f"{r[1]} / {r[0][7:]}", 0) + 1
        recs[label] = {"recommended_s_per_job": rec_m, "recommended_std": float(np.std([r[2] for r in rec])),
                       "paper_pick_s_per_job": pap_m, "ratio": rec_m / pap_m, "chosen": chosen,
                       "best_in_hindsight": best_name, "best_s_per_job": means[best_name],
                       "loss_to_best": rec_m / means[best_name], "policies": means}
        per["rec_over_paper"].append(rec_m / pap_m)
        per["rec_over_best"].append(rec_m / means[best_name])
        for name, v in means.items():
            per["policies"][name].append(v / pap_m)
        rows.append([label] + [means[f"{s} / earliest"] / pap_m for s in SCHEMES]
                    + [means[f"{s} / straggler-rule"] / pap_m for s in SCHEMES]
                    + [", ".join(f"{c} x{n}" for c, n in sorted(chosen.items(), key=lambda x: -x[1])),
                       rec_m / pap_m, f"{best_name} ({rec_m / means[best_name]:.3f})"])
    print_table(["trace"] + [f"{s} E" for s in SCHEMES] + [f"{s} R" for s in SCHEMES]
                + ["recommended (times chosen)", "rec/paper", "best in hindsight (rec/best)"], rows)
    print("E = close earliest, R = the paper's straggler rule; values: held-out s/job / the paper's pick's")
    gpol = {name: gm(v) for name, v in per["policies"].items()}
    print("geometric mean / paper's pick: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(gpol.items(), key=lambda x: x[1])))
    print(f"dcoord's recommendation / the paper's pick: geomean {gm(per['rec_over_paper']):.3f}; "
          f"recommendation / best policy in hindsight: geomean {gm(per['rec_over_best']):.3f}, "
          f"worst {max(per['rec_over_best']):.3f}")
    return {"per_trace": recs, "geomean_policy_over_paper_pick": gpol,
            "geomean_recommended_over_paper_pick": gm(per["rec_over_paper"]),
            "geomean_recommended_over_best": gm(per["rec_over_best"]),
            "worst_recommended_over_best": max(per["rec_over_best"])}


def report(res: dict) -> dict:
    summary: dict = {"paper": {}}
    print("\n== 1. the paper's comparison: nominal load, the (1+mu) rule for every scheme, tuned on another "
          "probe (out of sample) ==")
    rows, ratios = [], {"m-sgc": [], "sr-sgc": [], "uncoded": []}
    ins = {"m-sgc": [], "sr-sgc": []}
    for label, e in res.items():
        m = {s: float(np.mean(v)) for s, v in e["oos"]["paper"].items()}
        isam = {s: v["per_job_s"] for s, v in e["in_sample"]["paper"].items()}
        for s in ratios:
            ratios[s].append(m[s] / m["gc-cyclic"])
        for s in ins:
            ins[s].append(isam[s] / isam["gc-cyclic"])
        rows.append([label, round(e["base_comp"], 3)] + [m[s] for s in PAPER]
                    + [f"{1 - m['m-sgc'] / m['gc-cyclic']:+.1%}", f"{1 - m['sr-sgc'] / m['gc-cyclic']:+.1%}",
                       f"{1 - isam['m-sgc'] / isam['gc-cyclic']:+.1%}"])
    print_table(["trace", "base_comp"] + [f"{s} s/job" for s in PAPER]
                + ["M-SGC gain/GC", "SR-SGC gain/GC", "M-SGC gain in-sample"], rows)
    g = {s: gm(v) for s, v in ratios.items()}
    gi = {s: gm(v) for s, v in ins.items()}
    print(f"geometric mean, out of sample: M-SGC {1 - g['m-sgc']:+.1%} vs GC (paper: +{PAPER_GAIN['m-sgc']:.0%}), "
          f"SR-SGC {1 - g['sr-sgc']:+.1%} (paper: +{PAPER_GAIN['sr-sgc']:.0%}), no coding {1 - g['uncoded']:+.1%}; "
          f"in sample: M-SGC {1 - gi['m-sgc']:+.1%}, SR-SGC {1 - gi['sr-sgc']:+.1%}")
    summary["paper"] = {"geomean_ratio_to_gc": g, "geomean_ratio_to_gc_in_sample": gi,
                        "gain_over_gc": {s: 1 - v for s, v in g.items()}, "paper_gain_over_gc": PAPER_GAIN,
                        "per_trace_ratio_to_gc": {lab: {s: ratios[s][i] for s in ratios} for i, lab in enumerate(res)}}

    for table, title in (("oos", "fresh workers every round (as the traces' Lambda invocations)"),
                         ("oos_carry", "persistent workers: a cut-off task runs on into the next round")):
        summary["dcoord" if table == "oos" else "dcoord_carry_over"] = verdict(res, table, title)
    return summary


def replay(args) -> dict:
    """Real processes: gc-cyclic vs m-sgc on a measured trace (inject model trace), same jobs, wall per job."""
    import json
    import logging
    import tempfile

    from dcoord.config import load_config
    from dcoord.runtime.local import run_local

    logging.basicConfig(level=logging.ERROR)
    path = args.traces / "sam-gc-cnn_profile_est_desktop_long__w256-n30-l0_000-b2048-cno_forloop-Canada.csv"
    d0 = load_trace_csv(path)[args.skip_rows:]
    n = args.replay_workers
    # the n workers that straggle most often by the (1+mu) rule, so a few processes see the trace's stragglers
    late = (d0 > (1 + args.mu) * d0.min(axis=1, keepdims=True)).sum(axis=0)
    cols = np.sort(np.argsort(-late, kind="stable")[:n])
    sub = d0[:, cols]
    scale, base_comp = args.replay_scale, 1.135  # the probe's estimated seconds per full job
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trace.csv"
        np.savetxt(csv, sub, delimiter=",", fmt="%.4f")
        src = TraceDelays(sub, n, base_comp)
        out = {"workers": n, "columns": cols.tolist(), "jobs": args.replay_jobs, "trace_scale": scale,
               "emulate_job_s": base_comp * scale, "runs": {}}
        for name, rule in REPLAY:
            # parameters tuned in the simulator on the same trace under the policy's own close rule
            best = tune_policies(n, EvalSource(src, args.replay_jobs), 2, schemes=[name], rules=[rule], mu=args.mu)
            kw = best[(name, rule)].choice.kwargs
            coding = {"scheme": name, "close": rule}
            coding.update({"stragglers": kw["s"]} if "s" in kw else {"B": kw["B"], "W": kw["W"], "lambda": kw["lam"]})
            data = {"name": f"replay-{name}", "workload": "logreg-digits", "workers": n, "rounds": args.replay_jobs,
                    "optimizer": {"lr": 0.5}, "seed": 0, "coding": coding,
                    "inject": {"model": "trace", "path": str(csv), "scale": scale},
                    "runtime": {"progress": False, "emulate_job_s": base_comp * scale}}
            run_dir = Path(tmp) / f"{name}-{rule}"
            t0 = time.perf_counter()
            summary = run_local(load_config(None, data=data), run_dir, progress=False)
            wall = time.perf_counter() - t0
            recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            # round 0 carries the processes' warm-up (first model shipment, imports): left out of both sides
            rounds_wall = float(sum(r["wall_s"] for r in recs[1:]))
            sim = simulate(make_scheme(name, n, jobs=args.replay_jobs, **kw),
                           TraceDelays(sub * scale, n, base_comp * scale),
                           sim_config(rule, args.replay_jobs, args.mu))
            simc = simulate(make_scheme(name, n, jobs=args.replay_jobs, **kw),
                            TraceDelays(sub * scale, n, base_comp * scale),
                            sim_config(rule, args.replay_jobs, args.mu).model_copy(update={"carry_over": True}))
            out["runs"][f"{name} / {rule}"] = {
                "simulated_carry_over_per_job_s": float(simc.round_durations[1:].sum()) / args.replay_jobs,
                "params": kw, "rounds": summary["rounds_completed"], "round_wall_s": rounds_wall,
                "round0_wall_s": float(recs[0]["wall_s"]),
                "per_job_s": rounds_wall / args.replay_jobs, "process_wall_s": wall,
                "simulated_per_job_s": float(sim.round_durations[1:].sum()) / args.replay_jobs,
                "stragglers_seen": summary.get("stragglers_seen")}
    runs = out["runs"]
    g = runs["gc-cyclic / earliest"]
    for key in ("m-sgc / straggler-rule", "m-sgc / earliest"):
        out[f"ratio {key} over gc-cyclic"] = {
            "measured": runs[key]["per_job_s"] / g["per_job_s"],
            "simulated": runs[key]["simulated_per_job_s"] / g["simulated_per_job_s"],
            "simulated_carry_over": runs[key]["simulated_carry_over_per_job_s"] / g["simulated_carry_over_per_job_s"]}
    print(f"\n== 3. trace replay with real processes ({n} workers, trace x{scale}, {args.replay_jobs} jobs; rounds "
          "1.. timed, round 0 is the processes' warm-up) ==")
    print_table(["scheme / close", "params", "rounds", "s/job measured", "simulated", "simulated, carry-over",
                 "stragglers seen"],
                [[k, v["params"], v["rounds"], v["per_job_s"], v["simulated_per_job_s"],
                  v["simulated_carry_over_per_job_s"], v["stragglers_seen"]] for k, v in runs.items()])
    for key in ("m-sgc / straggler-rule", "m-sgc / earliest"):
        r = out[f"ratio {key} over gc-cyclic"]
        print(f"{key} / gc-cyclic (first decodable): {r['measured']:.3f} measured, {r['simulated']:.3f} simulated "
              f"fresh, {r['simulated_carry_over']:.3f} simulated with carry-over")
    return out


def plot(res: dict, summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(res)
    x = np.arange(len(labels))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 5.2))
    pr = summary["paper"]["per_trace_ratio_to_gc"]
    for k, s in enumerate(["uncoded", "sr-sgc", "m-sgc"]):
        a1.bar(x + (k - 1) * 0.27, [pr[lab][s] for lab in labels], 0.27, label=s)
    a1.axhline(1.0, color="k", lw=0.7)
    a1.axhline(1 - PAPER_GAIN["m-sgc"], color="tab:green", ls="--", lw=0.8, label="paper: M-SGC 0.84 x GC")
    a1.axhline(1 - PAPER_GAIN["sr-sgc"], color="tab:orange", ls=":", lw=0.8, label="paper: SR-SGC 0.93 x GC")
    a1.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    a1.set_ylabel("runtime / GC (out of sample)")
    a1.set_title("1. the paper's setting: nominal load, (1+mu) rule", fontsize=9)
    a1.legend(fontsize=7)
    per = summary["dcoord"]["per_trace"]
    names = ["gc-fr / earliest", "gc-cyclic / earliest", "m-sgc / earliest", "m-sgc / straggler-rule",
             "sr-sgc / earliest"]
    w = 0.8 / (len(names) + 1)
    for k, nm in enumerate(names):
        a2.bar(x + k * w, [per[lab]["policies"][nm] / per[lab]["paper_pick_s_per_job"] for lab in labels], w, label=nm)
    a2.bar(x + len(names) * w, [per[lab]["ratio"] for lab in labels], w, label="dcoord's recommendation",
           color="k")
    a2.axhline(1.0, color="k", lw=0.7)
    a2.set_xticks(x + 0.4, labels, rotation=35, ha="right", fontsize=7)
    a2.set_ylabel("held-out s/job / the paper's pick (actual load)")
    a2.set_title("2. dcoord: schemes x close rules, out of sample", fontsize=9)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timing_256x500(d0: np.ndarray, base_comp: float, params: dict[str, dict], rounds: int = 500) -> dict:
    """Wall time to simulate ``rounds`` jobs on 256 workers for the 4 schemes (trace rows wrap around)."""
    src = TraceDelays(d0, 256, base_comp)
    cfg = SimulateConfig(jobs=rounds)
    out = {}
    t_all = time.perf_counter()
    for name in SHOWN:
        t0 = time.perf_counter()
        scheme = make_scheme(name, 256, jobs=rounds, **params.get(name, {}))
        built = time.perf_counter() - t0
        res = simulate(scheme, src, cfg)
        out[name] = {"params": params.get(name, {}), "build_s": built, "simulate_s": res.wall_s,
                     "rounds": res.rounds, "runtime_s": res.runtime_s}
    out["total_s"] = time.perf_counter() - t_all
    return out


def scaling(ns: list[int], rounds: int) -> dict:
    """Simulator wall time per round vs n, Gilbert-Elliott stragglers, s = lambda = n/16."""
    inj = InjectConfig(model="gilbert-elliott", p_good_to_bad=0.02, p_bad_to_good=0.5, slowdown=3.0)
    out: dict[str, dict[int, dict]] = {s: {} for s in SHOWN}
    for n in ns:
        k = max(1, n // 16)
        params = {"uncoded": {}, "gc-cyclic": {"s": k}, "sr-sgc": {"B": 1, "W": 2, "lam": 2 * k},
                  "m-sgc": {"B": 1, "W": 2, "lam": k}}
        for name in SHOWN:
            src = ModelDelays(make_straggler_model(inj, n, 1), base_time=1.0, base_comp=2.0)
            t0 = time.perf_counter()
            scheme = make_scheme(name, n, jobs=rounds, **params[name])
            built = time.perf_counter() - t0
            res = simulate(scheme, src, SimulateConfig(jobs=rounds))
            out[name][n] = {"build_s": built, "simulate_s": res.wall_s, "rounds": res.rounds,
                            "per_round_s": res.wall_s / res.rounds, "wait_all_rounds": res.wait_all_rounds}
    return out


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", type=Path, default=repo.parent / "shared" / "traces")
    ap.add_argument("--out", type=Path, default=repo / "bench" / "results")
    ap.add_argument("--quick", action="store_true", help="3 probes, smaller scaling run, shorter replay")
    ap.add_argument("--max-delay", type=int, default=3)
    ap.add_argument("--mu", type=float, default=1.0)
    ap.add_argument("--skip-rows", type=int, default=1, help="leading warm-up rows dropped from every trace")
    ap.add_argument("--base-comp", type=float, default=None, help="override the estimated base_comp")
    ap.add_argument("--tune-probes", type=int, default=None,
                    help="tune on this many other probes per evaluated trace (the next ones, cyclically) [4; quick 2]")
    ap.add_argument("--replay-jobs", type=int, default=None, help="jobs of the process replay (0 = skip) [16; quick 10]")
    ap.add_argument("--replay-workers", type=int, default=8)
    ap.add_argument("--replay-scale", type=float, default=0.25, help="trace seconds x this in the replay")
    args = ap.parse_args()
    if args.tune_probes is None:
        args.tune_probes = 2 if args.quick else 4
    if args.replay_jobs is None:
        args.replay_jobs = 10 if args.quick else 16

    probes = load_probes(args)
    t0 = time.perf_counter()
    print(f"out-of-sample tuning on {len(probes)} traces x {min(args.tune_probes, len(probes) - 1)} tuning probes x {len(SETTINGS)} "
          "settings:")
    res = out_of_sample(probes, args)
    sim_wall = time.perf_counter() - t0
    summary = report(res)
    print(f"\ntuning + scoring took {sim_wall:.1f} s")

    rep = replay(args) if args.replay_jobs > 0 else None

    # simulator speed: 256 x 500 rounds x 4 schemes with the first trace's in-sample parameters, and n = 64..4096
    first = next(iter(res.values()))
    params = {s: {("lam" if k == "lambda" else k): v for k, v in first["in_sample"]["actual-earliest"][s]["params"].items()}
              for s in SHOWN}
    t500 = timing_256x500(probes[0].d0, probes[0].base_comp, params)
    print(f"\n256 workers x 500 jobs x 4 schemes: {t500['total_s']:.2f} s in all")
    ns = [64, 256, 1024, 4096] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096]
    rounds = 20 if args.quick else 30
    sc = scaling(ns, rounds)
    print(f"simulator ms per round (build s), {rounds} jobs, s = lambda = n/16:")
    print_table(["n"] + SHOWN, [[n] + [f"{1e3 * sc[s][n]['per_round_s']:.2f} ({sc[s][n]['build_s']:.2f})"
                                       for s in SHOWN] for n in ns])

    data = {"settings": {"mu": args.mu, "tune_probes": args.tune_probes, "max_window": MAX_WINDOW, "max_delay": args.max_delay, "skip_rows": args.skip_rows,
                         "quick": args.quick, "traces": str(args.traces), "lambda_grid": LAMBDAS,
                         "load_models": {k: v[0] for k, v in SETTINGS.items()}},
            "traces": res, "summary": summary, "replay": rep, "tuning_wall_s": sim_wall, "timing_256x500": t500,
            "scaling": {s: {str(n): v for n, v in d.items()} for s, d in sc.items()}}
    path = write_json("sgc_traces", data, args.out)
    png = plot(res, summary, args.out / "sgc_traces.png")
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
