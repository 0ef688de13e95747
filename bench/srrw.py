"""SRRW bench: MSE of the SA iterate vs hops (base chain vs SRRW(alpha)), and cost per hop.

Reproduces the shape of the headline experiment of Hu, Doshi & Eun (ICLR 2024, arXiv 2401.09665):
L2-regularised binary classification with the data spread over the nodes of a graph, one token running
SA-SRRW, the mean squared error ||theta_n - theta*||^2 averaged over independent runs, for the base chain
(MHRW, alpha = 0) and SRRW with alpha in {1, 5, 10, 20}, plus SRW and NBRW with importance weights as
further baselines. What differs from the paper, and why:
  - data: scikit-learn's bundled digits (0-4 vs 5-9, standardised, 16 principal components + bias) with
    label-skewed shards, because the LIBSVM-style dataset of the paper is not bundled and nothing is
    downloaded; graph: a Watts-Strogatz small world (n=100, k=4, p=0.1) instead of a crawled social graph
    (or --graph karate / lesmis, real social graphs that networkx bundles);
  - step sizes: gamma_n = (n+1)^-0.8, beta_n = 5 (n+1)^-0.9 (the recommended regime beta = o(gamma); the
    factor 5 makes the iterate reach the variance-dominated regime within the run - with factor 1 the
    error is still dominated by the slow decay of the initial error at 2e4 hops, and SRRW's curves for
    alpha = 1..20 coincide at about 0.7x the base chain's);
  - the paper reports curves only; no numeric per-alpha ratios could be retrieved, so the table prints
    the measured ratios next to the paper's asymptotic prediction (O(1/alpha^2) in this regime) only.
Step-size regimes (issue 17): the three SA-SRRW regimes side by side, b = 0.9 fixed and a in {1, 0.9, 0.8}
(b < a, b = a, b > a; the paper recommends b > a, i.e. beta = o(gamma)), on a Barabasi-Albert graph with SRW
as the base chain, so the target mu_i ~ degree is far from uniform (importance weights on); the error
||theta - theta*||^2 across seeds for alpha in {0, 1, 5, 10, 20} and the fitted decay ratio ~ 1/alpha^p
beside the paper's asymptotic claim. ``--jobs`` runs its independent runs in processes; ``--only-regimes``
runs just this part and merges it into an existing srrw.json.

Run: .venv/bin/python bench/srrw.py [--quick] [--out bench/results] [--only-regimes] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcoord.sim.token import LogRegProblem, make_logreg_problem  # noqa: E402
from dcoord.walk import (  # noqa: E402
    SASRRW,
    Graph,
    MarkovWalker,
    NBRWalker,
    SRRWWalker,
    Walker,
    from_edges,
    log_spaced_hops,
    mhrw,
    regime,
    srw,
    watts_strogatz,
)

PAPER_NOTE = (
    "Hu, Doshi & Eun (ICLR 2024) plot MSE vs steps for alpha in {0 (base), 1, 5, 10, 20, ...}; their "
    "figures give no table of values and no copy of the simulation section could be retrieved here, so "
    "no per-alpha ratio from the paper is quoted. What the paper states: in the regime beta_n = o(gamma_n) "
    "the asymptotic covariance of theta falls like O(1/alpha^2) and is always below the base chain's; "
    "with beta_n = gamma_n or gamma_n = o(beta_n) the gain is only O(1/alpha)."
)


# ------------------------------------------------------------------------------------------------ setup
CHAIN_IDS = {"srrw": 0, "srw+iw": 1, "nbrw+iw": 2}  # stable seeds (str hashes vary between processes)


def bench_graph(kind: str, n: int, seed: int) -> Graph:
    if kind == "ws":
        return watts_strogatz(n, 4, 0.1, seed=seed)
    import networkx as nx

    g = {"karate": nx.karate_club_graph, "lesmis": nx.les_miserables_graph}[kind]()
    g = nx.convert_node_labels_to_integers(g)
    return from_edges(g.number_of_nodes(), list(g.edges()), name=kind)


def make_walker(name: str, alpha: float, g: Graph, a: float, start: int) -> Walker:
    if name == "srrw":
        return SRRWWalker(mhrw(g), alpha, gamma_exponent=a, start=start)
    if name == "srw+iw":
        return MarkovWalker(srw(g), start)
    if name == "nbrw+iw":
        return NBRWalker(g, start)
    raise ValueError(name)


def run_curve(
    name: str,
    alpha: float,
    g: Graph,
    prob: LogRegProblem,
    *,
    hops: int,
    seeds: int,
    a: float,
    b: float,
    lr_scale: float,
    record: np.ndarray,
) -> dict[str, Any]:
    """Mean over seeds of ||theta - theta*||^2 at the recorded hops (importance weights: auto)."""
    errs = []
    for s in range(seeds):
        start = int(np.random.default_rng(10_000 + s).integers(g.n))  # same start for every chain
        rng = np.random.default_rng([s, int(alpha * 1000), CHAIN_IDS[name]])
        w = make_walker(name, alpha, g, a, start)
        opt = SASRRW(w, prob.grad, prob.theta0, beta_exponent=b, lr_scale=lr_scale)
        errs.append(opt.run(hops, rng, record_at=record, optimum=prob.optimum)["sq_error"])
    e = np.asarray(errs)
    return {
        "chain": name,
        "alpha": alpha,
        "mse": e.mean(axis=0).tolist(),
        "stderr": (e.std(axis=0, ddof=1) / np.sqrt(seeds)).tolist() if seeds > 1 else [0.0] * e.shape[1],
    }


def label(c: dict[str, Any]) -> str:
    if c["chain"] == "srrw":
        return "MHRW (base)" if c["alpha"] == 0 else f"SRRW a={c['alpha']:g}"
    return {"srw+iw": "SRW + imp. weights", "nbrw+iw": "NBRW + imp. weights"}[c["chain"]]


# ------------------------------------------------------------------------------------------------ regimes
REGIME_STEPS = ((1.0, 0.9), (0.9, 0.9), (0.8, 0.9))  # (a, b): b < a, b = a, b > a; the theta step b is fixed
REGIME_ALPHAS = (0.0, 1.0, 5.0, 10.0, 20.0)
REGIME_PAPER = {  # Hu, Doshi & Eun (ICLR 2024): asymptotic covariance of theta vs alpha, per timescale regime
    "beta=o(gamma)": "O(1/alpha^2), recommended",
    "beta=gamma": "O(1/alpha)",
    "gamma=o(beta)": "O(1/alpha)",
}


def skewed_graph(n: int, seed: int) -> Graph:
    """Barabasi-Albert graph (m = 2): hubs and leaves, so SRW's target mu_i = d_i / 2|E| is far from uniform."""
    import networkx as nx

    g = nx.barabasi_albert_graph(n, 2, seed=seed)
    return from_edges(n, list(g.edges()), name=f"barabasi-albert(n={n}, m=2)")


def fit_decay(alphas: list[float], ratios: list[float]) -> float:
    """p in ratio ~ C / alpha^p, least squares in log-log over the given alphas (all > 0)."""
    return float(-np.polyfit(np.log(alphas), np.log(ratios), 1)[0])


def _regime_run(task: tuple) -> float:
    """One SA-SRRW run of the regime study: ||theta_hops - theta*||^2 (module level so a pool can run it)."""
    g, prob, a, b, alpha, s, hops, lr_scale = task
    start = int(np.random.default_rng(20_000 + s).integers(g.n))
    rng = np.random.default_rng([s, int(alpha * 1000), 7])
    w = SRRWWalker(srw(g), alpha, gamma_exponent=a, start=start)
    opt = SASRRW(w, prob.grad, prob.theta0, beta_exponent=b, lr_scale=lr_scale)
    return float(opt.run(hops, rng, record_at=[hops], optimum=prob.optimum)["sq_error"][-1])


def regime_study(g: Graph, prob: LogRegProblem, *, hops: int, seeds: int, lr_scale: float,
                 jobs: int = 1) -> list[dict[str, Any]]:
    """SA-SRRW with SRW as the base chain (non-uniform target, importance weights on) in the three regimes.

    For each (a, b) and alpha: ||theta_hops - theta*||^2 over seeds (same starts and seeds across alphas),
    its ratio to alpha = 0, and the fitted decay exponent p (ratio ~ 1/alpha^p) over alpha in {5, 10, 20}
    (the asymptotic end) and over {1, 5, 10, 20}. ``jobs`` > 1 runs the independent runs in processes.
    """
    tasks = [(g, prob, a, b, alpha, s, hops, lr_scale)
             for a, b in REGIME_STEPS for alpha in REGIME_ALPHAS for s in range(seeds)]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            errs_all = list(pool.map(_regime_run, tasks, chunksize=1))
    else:
        errs_all = [_regime_run(t) for t in tasks]
    it = iter(errs_all)
    out = []
    for a, b in REGIME_STEPS:
        rows = []
        for alpha in REGIME_ALPHAS:
            e = np.asarray([next(it) for _ in range(seeds)])
            rows.append({"alpha": alpha, "mse": float(e.mean()), "stderr": float(e.std(ddof=1) / np.sqrt(seeds)),
                         "per_seed": e.tolist()})
        m0 = rows[0]["mse"]
        for r in rows:
            r["ratio_vs_alpha0"] = r["mse"] / m0
        pos = [r for r in rows if r["alpha"] > 0]
        big = [r for r in pos if r["alpha"] >= 5]
        reg = regime(a, b)
        out.append({
            "a": a, "b": b, "regime": reg, "recommended": reg == "beta=o(gamma)", "paper": REGIME_PAPER[reg],
            "rows": rows,
            "decay_exponent_alpha_5_to_20": fit_decay([r["alpha"] for r in big], [r["ratio_vs_alpha0"] for r in big]),
            "decay_exponent_alpha_1_to_20": fit_decay([r["alpha"] for r in pos], [r["ratio_vs_alpha0"] for r in pos]),
        })
    return out


def print_regimes(study: list[dict[str, Any]], g: Graph, hops: int, seeds: int) -> None:
    print(f"\nstep-size regimes on {g.name}, base chain SRW (non-uniform target, importance weights), "
          f"{hops} hops, {seeds} seeds: ||theta - theta*||^2 (mean ± stderr), ratio to alpha = 0")
    head = "".join(f"{'alpha=' + format(al, 'g'):>22}" for al in REGIME_ALPHAS)
    print(f"{'regime':<32}{head}{'p(5-20)':>9}{'p(1-20)':>9}  paper")
    for r in study:
        name = f"a={r['a']:g} b={r['b']:g} {r['regime']}" + (" *" if r["recommended"] else "")
        cells = "".join(f"{x['mse']:>10.2e}±{x['stderr']:.0e} {x['ratio_vs_alpha0']:>4.2f}" for x in r["rows"])
        print(f"{name:<32}{cells}{r['decay_exponent_alpha_5_to_20']:>9.2f}{r['decay_exponent_alpha_1_to_20']:>9.2f}"
              f"  {r['paper']}")
    print("  * the regime the paper recommends (b > a: x on the faster timescale); p: fitted ratio ~ 1/alpha^p")


def plot_regimes(study: list[dict[str, Any]], g: Graph, hops: int, seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(study) + 1, figsize=(5 * (len(study) + 1), 4.2))
    lo = min(x["mse"] - x["stderr"] for r in study for x in r["rows"])
    hi = max(x["mse"] + x["stderr"] for r in study for x in r["rows"])
    for ax, r in zip(axes, study, strict=False):
        al = [x["alpha"] for x in r["rows"]]
        ax.errorbar([str(int(a)) for a in al], [x["mse"] for x in r["rows"]],
                    yerr=[x["stderr"] for x in r["rows"]], fmt="o-", capsize=3,
                    color="tab:red" if r["recommended"] else "tab:gray")
        star = "  [paper's recommended regime]" if r["recommended"] else ""
        ax.set(yscale="log", ylim=(lo / 1.3, hi * 1.3), xlabel="alpha", ylabel=f"||theta - theta*||^2 at {hops} hops",
               title=f"a={r['a']:g}, b={r['b']:g}: {r['regime']}{star}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
    ax = axes[-1]
    for r in study:
        pos = [x for x in r["rows"] if x["alpha"] > 0]
        ax.loglog([x["alpha"] for x in pos], [x["ratio_vs_alpha0"] for x in pos], "o-",
                  label=f"{r['regime']} (p={r['decay_exponent_alpha_5_to_20']:.2f})" + (" *" if r["recommended"] else ""))
    a = np.array([1.0, 20.0])
    ax.loglog(a, 1 / a, "k:", label="1/alpha")
    ax.loglog(a, 1 / a**2, "k--", label="1/alpha^2")
    ax.set(xlabel="alpha", ylabel="MSE ratio to alpha = 0", title=f"{g.name}, {seeds} seeds")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ cost
def circulant(n: int, d: int) -> Graph:
    """Ring lattice: each node linked to its d/2 nearest nodes on each side (degree d, built in numpy)."""
    i = np.arange(n)
    e = np.concatenate([np.stack([i, (i + s) % n], axis=1) for s in range(1, d // 2 + 1)])
    return from_edges(n, e, name=f"circulant(n={n}, d={d})")


def time_hops(w: Walker, hops: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` CPU time of this process per hop, in microseconds.

    CPU time (not wall time) because the bench machine is shared: waiting for a core is not cost per hop.
    """
    rng = np.random.default_rng(0)
    w.walk(min(2000, hops), rng)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        w.walk(hops, rng)
        best = min(best, time.process_time() - t)
    return best / hops * 1e6


def cost_table(degrees: list[int], sizes: list[int], hops: int) -> dict[str, Any]:
    """Microseconds per hop to choose the next node, for MHRW and SRRW(5) over MHRW."""
    by_degree = []
    for d in degrees:
        g = circulant(4096, d)
        ch = mhrw(g)
        s = SRRWWalker(ch, 5.0, gamma_exponent=0.8)
        row = {
            "degree": d,
            "n": g.n,
            "mhrw_us": time_hops(MarkovWalker(ch), hops),
            "srrw_us": time_hops(s, hops),
        }
        row["srrw_entries_per_hop"] = s.entries_examined / s.hops
        by_degree.append(row)
    by_n = []
    for n in sizes:
        ch = mhrw(circulant(n, 8))
        s = SRRWWalker(ch, 5.0, gamma_exponent=0.8)
        row = {
            "n": n,
            "degree": 8,
            "mhrw_us": time_hops(MarkovWalker(ch), hops),
            "srrw_us": time_hops(s, hops),
        }
        row["srrw_entries_per_hop"] = s.entries_examined / s.hops
        by_n.append(row)
    big = [r for r in by_degree if r["degree"] >= 64]
    slope = (
        float(np.polyfit(np.log([r["degree"] for r in big]), np.log([r["srrw_us"] for r in big]), 1)[0])
        if len(big) >= 2
        else float("nan")
    )
    return {
        "by_degree": by_degree,
        "by_n": by_n,
        "srrw_loglog_slope_vs_degree_(d>=64)": slope,
        "srrw_time_ratio_largest_vs_smallest_n": by_n[-1]["srrw_us"] / by_n[0]["srrw_us"],
    }


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few seeds and hops (about half a minute)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    ap.add_argument("--graph", choices=["ws", "karate", "lesmis"], default="ws")
    ap.add_argument("--n", type=int, default=100, help="nodes of the ws graph")
    ap.add_argument("--hops", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 5.0, 10.0, 20.0])
    ap.add_argument("--gamma-exponent", type=float, default=0.8)
    ap.add_argument("--beta-exponent", type=float, default=0.9)
    ap.add_argument("--lr-scale", type=float, default=5.0)
    ap.add_argument("--heterogeneity", type=float, default=0.8)
    ap.add_argument("--no-regimes", action="store_true", help="skip the step-size regime comparison")
    ap.add_argument("--regime-hops", type=int, default=None, help="hops per run in the regime study")
    ap.add_argument("--regime-lr-scale", type=float, default=5.0, help="beta_n multiplier in the regime study")
    ap.add_argument("--regime-seeds", type=int, default=None, help="seeds of the regime study (default seeds/2)")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                    help="processes for the regime study's independent runs (default: cores, at most 8)")
    ap.add_argument("--only-regimes", action="store_true",
                    help="run only the regime study and replace its part of an existing srrw.json")
    args = ap.parse_args(argv)

    hops = args.hops or (10_000 if args.quick else 50_000)
    seeds = args.seeds or (4 if args.quick else 20)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    g = bench_graph(args.graph, args.n, seed=1)
    prob = make_logreg_problem(g.n, seed=0, heterogeneity=args.heterogeneity)
    a, b = args.gamma_exponent, args.beta_exponent
    record = log_spaced_hops(hops, 40)
    common = dict(hops=hops, seeds=seeds, a=a, b=b, lr_scale=args.lr_scale, record=record)
    print(f"graph {g.name}: n={g.n}, |E|={g.num_edges}; logistic regression dim={prob.dim}, reg={prob.reg}")
    print(f"hops={hops}, seeds={seeds}, gamma=(n+1)^-{a}, beta={args.lr_scale}(n+1)^-{b} [{regime(a, b)}]")

    regimes: list[dict[str, Any]] = []
    rg = skewed_graph(args.n, seed=1)
    rprob = make_logreg_problem(rg.n, seed=0, heterogeneity=args.heterogeneity)
    rhops = args.regime_hops or (5_000 if args.quick else 50_000)
    rseeds = args.regime_seeds or max(2, seeds // 2)
    if args.only_regimes:
        return only_regimes(args, out, rg, rprob, rhops, rseeds)
    curves = [run_curve("srrw", 0.0, g, prob, **common)]
    curves += [run_curve("srrw", al, g, prob, **common) for al in args.alphas]
    curves += [run_curve(name, 0.0, g, prob, **common) for name in ("srw+iw", "nbrw+iw")]
    base = curves[0]
    mid = int(np.searchsorted(record, hops // 10))
    table = []
    for c in curves:
        ratio = c["mse"][-1] / base["mse"][-1]
        table.append(
            {
                "chain": label(c),
                "alpha": c["alpha"],
                f"mse@{int(record[mid])}": c["mse"][mid],
                f"mse@{hops}": c["mse"][-1],
                "stderr_final": c["stderr"][-1],
                "ratio_vs_base": ratio,
                "ratio_x_alpha2": ratio * c["alpha"] ** 2 if c["chain"] == "srrw" and c["alpha"] else None,
                "paper_ratio": None,
            }
        )
    print(f"\nMSE ||theta - theta*||^2, mean of {seeds} runs")
    print(
        f"{'chain':<22}{'MSE@' + str(int(record[mid])):>12}{'MSE@' + str(hops):>12}{'+-se':>10}"
        f"{'ratio':>8}{'ratio*a^2':>11}{'paper':>8}"
    )
    for r in table:
        ra2 = f"{r['ratio_x_alpha2']:.2f}" if r["ratio_x_alpha2"] is not None else "-"
        print(
            f"{r['chain']:<22}{r[f'mse@{int(record[mid])}']:>12.3e}{r[f'mse@{hops}']:>12.3e}"
            f"{r['stderr_final']:>10.1e}{r['ratio_vs_base']:>8.3f}{ra2:>11}{'n/a':>8}"
        )
    print("paper: " + PAPER_NOTE)

    if not args.no_regimes:
        t_reg = time.perf_counter()
        regimes = regime_study(rg, rprob, hops=rhops, seeds=rseeds, lr_scale=args.regime_lr_scale, jobs=args.jobs)
        print_regimes(regimes, rg, rhops, rseeds)
        plot_regimes(regimes, rg, rhops, rseeds, out / "srrw_regimes.png")
        print(f"regime study: {time.perf_counter() - t_reg:.0f} s with {args.jobs} process(es)")

    print("\ncost per hop of choosing the next node (CPU time, best of 3, this machine):")
    cost = cost_table(
        degrees=[4, 16, 64, 256, 1024] if not args.quick else [4, 64, 1024],
        sizes=[100, 1_000, 10_000, 100_000] if not args.quick else [100, 10_000, 100_000],
        hops=20_000 if not args.quick else 5_000,
    )
    for r in cost["by_degree"]:
        print(
            f"  degree {r['degree']:>5} (n={r['n']}): mhrw {r['mhrw_us']:6.2f} us  srrw {r['srrw_us']:6.2f} us"
            f"  entries/hop {r['srrw_entries_per_hop']:.0f}"
        )
    for r in cost["by_n"]:
        print(
            f"  n {r['n']:>7} (degree 8):  mhrw {r['mhrw_us']:6.2f} us  srrw {r['srrw_us']:6.2f} us"
            f"  entries/hop {r['srrw_entries_per_hop']:.0f}"
        )
    print(
        f"  srrw log-log slope vs degree (d >= 64): {cost['srrw_loglog_slope_vs_degree_(d>=64)']:.2f} (1 = linear)"
    )
    print(
        f"  srrw time, largest n / smallest n: {cost['srrw_time_ratio_largest_vs_smallest_n']:.2f} (1 = flat)"
    )

    elapsed = time.perf_counter() - t_start
    result = {
        "bench": "srrw",
        "quick": args.quick,
        "graph": {"name": g.name, "n": g.n, "edges": g.num_edges},
        "problem": {
            "dataset": "digits 0-4 vs 5-9",
            "dim": prob.dim,
            "reg": prob.reg,
            "heterogeneity": args.heterogeneity,
            "optimum_loss": prob.optimum_loss,
        },
        "steps": {"gamma_exponent": a, "beta_exponent": b, "lr_scale": args.lr_scale, "regime": regime(a, b)},
        "hops": hops,
        "seeds": seeds,
        "record_hops": [int(h) for h in record],
        "curves": [dict(c, label=label(c)) for c in curves],
        "table": table,
        "paper": PAPER_NOTE,
        "regimes": regimes_block(args, rg, rhops, rseeds, regimes),
        "cost_per_hop": cost,
        "elapsed_s": elapsed,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    (out / "srrw.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "srrw.png")
    print(f"\nwrote {out / 'srrw.json'} and {out / 'srrw.png'} in {elapsed:.0f} s")
    return 0


def regimes_block(args: Any, rg: Graph, rhops: int, rseeds: int, regimes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"graph": {"name": rg.name, "n": rg.n, "edges": rg.num_edges,
                      "degree_min_max": [int(rg.degree.min()), int(rg.degree.max())]},
            "base_chain": "srw (target mu_i proportional to degree; importance weights on)",
            "hops": rhops, "seeds": rseeds, "lr_scale": args.regime_lr_scale, "beta_n": "lr_scale (n+1)^-b",
            "alphas": list(REGIME_ALPHAS), "paper": REGIME_PAPER, "by_regime": regimes}


def only_regimes(args: Any, out: Path, rg: Graph, rprob: LogRegProblem, rhops: int, rseeds: int) -> int:
    """--only-regimes: the regime study alone, merged into an existing srrw.json (the rest left as it was)."""
    t0 = time.perf_counter()
    regimes = regime_study(rg, rprob, hops=rhops, seeds=rseeds, lr_scale=args.regime_lr_scale, jobs=args.jobs)
    print_regimes(regimes, rg, rhops, rseeds)
    plot_regimes(regimes, rg, rhops, rseeds, out / "srrw_regimes.png")
    path = out / "srrw.json"
    result = json.loads(path.read_text()) if path.exists() else {"bench": "srrw"}
    block = regimes_block(args, rg, rhops, rseeds, regimes)
    block.update({"elapsed_s": time.perf_counter() - t0, "jobs": args.jobs,
                  "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "platform": platform.platform()}})
    result["regimes"] = block
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote the regimes of {path} and {out / 'srrw_regimes.png'} in {block['elapsed_s']:.0f} s")
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    hops = result["record_hops"]
    for c in result["curves"]:
        style = "--" if c["chain"] != "srrw" else "-"
        ax[0].loglog(hops, c["mse"], style, label=c["label"])
    ax[0].set_xlabel("hops")
    ax[0].set_ylabel("MSE  ||theta_n - theta*||^2")
    ax[0].set_title(
        f"SA-SRRW on {result['graph']['name']} ({result['seeds']} runs, {result['steps']['regime']})"
    )
    ax[0].legend(fontsize=8)
    ax[0].grid(True, which="both", alpha=0.3)
    cost = result["cost_per_hop"]
    d = [r["degree"] for r in cost["by_degree"]]
    ax[1].loglog(d, [r["srrw_us"] for r in cost["by_degree"]], "o-", label="SRRW(5) vs degree (n=4096)")
    ax[1].loglog(d, [r["mhrw_us"] for r in cost["by_degree"]], "s--", label="MHRW vs degree (n=4096)")
    n = [r["n"] for r in cost["by_n"]]
    ax[1].loglog(n, [r["srrw_us"] for r in cost["by_n"]], "^-", label="SRRW(5) vs n (degree 8)")
    ax[1].set_xlabel("degree  /  n")
    ax[1].set_ylabel("us per hop")
    ax[1].set_title("cost of choosing the next node")
    ax[1].legend(fontsize=8)
    ax[1].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
