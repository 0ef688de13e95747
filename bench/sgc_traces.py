"""Tuned uncoded / gc-cyclic / sr-sgc / m-sgc runtimes replayed on the measured AWS Lambda traces.

For every probe with both a load-0 and a load-1 file in --traces (256 workers; several probes and regions):
- d(0) is the l0_000 file (the first --skip-rows rows dropped: Lambda warm-up); base_comp, the seconds to
  compute one full job, is estimated as the authors do, from the same probe: mean(l1_000) - mean(l0_000)
  (loads 1 and 0); a worker's time at load L is d(0) + L * base_comp.
- jobs = rows - skip_rows - max_delay, so J + T rounds never wrap around the trace (the authors' setup).
- every scheme is tuned on the trace (dcoord.sim.tune: every parameter tuple of the grid; T <= max_delay)
  and its best runtime reported, with the ratio to the best gc-cyclic.
- two protocols for the plain codes: "decodable" (dcoord's coordinator: close at the first decodable
  arrival) and "straggler-rule" (the SGC paper's comparison: plain codes also wait (1+mu) * fastest and wait
  for everybody when the late set is too large). Sequential codes use the straggler rule in both.
Also: the 256 workers x 500 rounds x 4 schemes simulation time, and simulator wall time for n = 64..4096
(Gilbert-Elliott injected stragglers, since the traces have 256 columns). Writes results/sgc_traces.json
and results/sgc_traces.png.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # small solves; shared cores
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _util import print_table, write_json  # noqa: E402

from dcoord.coding.registry import make_scheme  # noqa: E402
from dcoord.sim import ModelDelays, SimulateConfig, TraceDelays, simulate  # noqa: E402
from dcoord.sim.report import plot_bench  # noqa: E402
from dcoord.sim.tune import best_per_scheme, estimate_base_comp, tune_source  # noqa: E402
from dcoord.stragglers import InjectConfig, load_trace_csv, make_straggler_model  # noqa: E402

SCHEMES = ["uncoded", "gc-fr", "gc-cyclic", "sr-sgc", "m-sgc"]
SHOWN = ["uncoded", "gc-cyclic", "sr-sgc", "m-sgc"]
TABLE = ["uncoded", "gc-fr", "gc-cyclic", "sr-sgc", "m-sgc"]
PROTOCOLS = ["decodable", "straggler-rule"]
QUICK = ("mbp__w256-n10-l0_000-b256-cno_forloop-London", "desktop_long__w256-n30", "mbp2__w256-n20")


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


def bench_trace(label: str, l0: Path, l1: Path, args) -> dict:
    d0 = load_trace_csv(l0)[args.skip_rows:]
    n = d0.shape[1]
    base_comp = args.base_comp if args.base_comp is not None else estimate_base_comp(l0, l1, skip_rows=args.skip_rows)
    jobs = args.jobs or d0.shape[0] - args.max_delay
    src = TraceDelays(d0, n, base_comp, name=label)
    entry = {"file": l0.name, "rows": int(d0.shape[0]), "n": n, "jobs": jobs, "base_comp": base_comp,
             "protocols": {}}
    for protocol in PROTOCOLS:
        t0 = time.perf_counter()
        choices = tune_source(n, src, jobs, args.max_delay, mu=args.mu, plain_close=protocol, schemes=SCHEMES)
        wall = time.perf_counter() - t0
        best = best_per_scheme(choices)
        ref = best["gc-cyclic"].runtime_s
        entry["protocols"][protocol] = {
            "tune_wall_s": wall, "candidates": len(choices),
            "best": {s: {**c.to_dict(), "ratio_to_gc_cyclic": c.runtime_s / ref} for s, c in best.items()},
        }
    return entry


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
    ap.add_argument("--quick", action="store_true", help="3 probes, smaller scaling run")
    ap.add_argument("--max-delay", type=int, default=3)
    ap.add_argument("--mu", type=float, default=1.0)
    ap.add_argument("--skip-rows", type=int, default=1, help="leading warm-up rows dropped from every trace")
    ap.add_argument("--jobs", type=int, default=None, help="jobs per run (default rows - skip - max delay)")
    ap.add_argument("--base-comp", type=float, default=None, help="override the estimated base_comp")
    args = ap.parse_args()

    probes = find_probes(args.traces)
    if args.quick:
        probes = [p for p in probes if any(q in p[1].name for q in QUICK)]
    if not probes:
        raise SystemExit(f"no probe with both l0_000 and l1_000 files in {args.traces}")

    t_sim = time.perf_counter()
    results = {label: bench_trace(label, l0, l1, args) for label, l0, l1 in probes}
    sim_wall = time.perf_counter() - t_sim

    geomeans: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        print(f"\n== plain codes close: {protocol}  (mu={args.mu}, max delay T <= {args.max_delay}) ==")
        rows = []
        for label, e in results.items():
            best = e["protocols"][protocol]["best"]
            row = [label, e["jobs"], round(e["base_comp"], 3)]
            for s in TABLE:
                row += [best[s]["runtime_s"], best[s]["ratio_to_gc_cyclic"]]
            row += [", ".join(f"{k}={v}" for k, v in best["m-sgc"]["params"].items())]
            rows.append(row)
        heads = ["trace", "jobs", "base_comp"]
        for s in TABLE:
            heads += [f"{s} s", "/gc"]
        print_table(heads + ["m-sgc params"], rows)
        ratios = {s: [e["protocols"][protocol]["best"][s]["ratio_to_gc_cyclic"] for e in results.values()]
                  for s in TABLE}
        gm = {s: float(np.exp(np.mean(np.log(v)))) for s, v in ratios.items()}
        print("geometric mean ratio to gc-cyclic: " + ", ".join(f"{s} {gm[s]:.3f}" for s in TABLE))
        geomeans[protocol] = gm
    print(f"\ntuning + simulation of {len(probes)} traces x {len(PROTOCOLS)} protocols took {sim_wall:.1f} s")

    # 256 x 500 rounds x 4 schemes, with the first probe's tuned (dcoord protocol) parameters
    first = next(iter(results.values()))
    params = {s: {("lam" if k == "lambda" else k): v for k, v in first["protocols"]["decodable"]["best"][s]["params"].items()}
              for s in SHOWN}
    l0 = args.traces / first["file"]
    t500 = timing_256x500(load_trace_csv(l0)[args.skip_rows:], first["base_comp"], params)
    print(f"\n256 workers x 500 jobs x 4 schemes: {t500['total_s']:.2f} s in all")
    print_table(["scheme", "params", "build s", "simulate s", "rounds"],
                [[s, t500[s]["params"], t500[s]["build_s"], t500[s]["simulate_s"], t500[s]["rounds"]] for s in SHOWN])

    ns = [64, 256, 1024, 4096] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096]
    rounds = 20 if args.quick else 30
    t0 = time.perf_counter()
    sc = scaling(ns, rounds)
    print(f"\nsimulator scaling ({rounds} jobs, s = n/16, lambda = n/16 (m-sgc), n/8 (sr-sgc)), "
          f"{time.perf_counter() - t0:.1f} s in all; ms per round (build s):")
    print_table(["n"] + SHOWN, [[n] + [f"{1e3 * sc[s][n]['per_round_s']:.2f} ({sc[s][n]['build_s']:.2f})"
                                       for s in SHOWN] for n in ns])

    data = {"settings": {"mu": args.mu, "max_delay": args.max_delay, "skip_rows": args.skip_rows,
                         "quick": args.quick, "traces": str(args.traces)},
            "traces": results, "geomean_ratio_to_gc_cyclic": geomeans, "tuning_wall_s": sim_wall, "timing_256x500": t500,
            "scaling": {s: {str(n): v for n, v in d.items()} for s, d in sc.items()}}
    path = write_json("sgc_traces", data, args.out)
    tables = {p: {label: {s: e["protocols"][p]["best"][s]["runtime_s"] for s in TABLE} for label, e in results.items()}
              for p in PROTOCOLS}
    png = plot_bench(tables, {s: {n: sc[s][n]["per_round_s"] for n in ns} for s in SHOWN},
                     args.out / "sgc_traces.png")
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
