"""``dcoord simulate``, ``tune`` and ``privacy``: planning without processes or training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dcoord.cli.options import (
    bounded,
    job_args,
    load_job,
    nonneg_float,
    output_dir,
    positive_int,
    rich_table,
    seconds,
)
from dcoord.errors import ConfigError


def cmd_simulate(args) -> int:
    from rich.console import Console

    cfg = load_job(args)
    if cfg.simulate is not None and cfg.simulate.network is not None:  # refused before the output exists
        from dcoord.sim.planes import check_planes

        check_planes(cfg.simulate.network.planes, "simulate.network.planes")
    out = output_dir(Path(args.out) if args.out else Path("runs") / f"{cfg.name}-sim")
    console = Console()
    if cfg.mode == "token":
        return _simulate_tokens(cfg, out, console, args)
    from dcoord.sim import SimulateConfig, simulate_job

    sim = cfg.simulate or SimulateConfig()
    if sim.trace is not None and not Path(sim.trace).is_file():
        raise ConfigError(f"simulate.trace: no such file {sim.trace}")
    from dcoord.coding.precision import print_precision  # issue 16: decode amplification, warned when high

    print_precision(cfg, console)
    data = simulate_job(cfg.workers, cfg.coding.model_dump(by_alias=True), sim, out, compare=args.compare,
                        inject=None if sim.trace else cfg.inject, seed=cfg.seed, plot=not args.no_plot)
    rows = []
    for label, r in data["schemes"].items():
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k in ("s", "B", "W", "lambda", "T"))
        rows.append([label, params, r["runtime_s"], r["wait_all_rounds"], r["load"], "yes" if r["tuned"] else ""])
    console.print(rich_table(f"simulation: {cfg.workers} workers, {sim.jobs} jobs",
                              ["scheme", "params", "runtime (s)", "wait-all rounds", "load", "tuned"], rows))
    if "network" in data:
        from dcoord.sim.tune_cmd import print_planes

        print_planes(data["network"], console)
    console.print(f"wrote {out / 'simulation.json'}" + ("" if args.no_plot else f" and {out / 'simulation.png'}")
                  + f" in {data['wall_s']:.2f} s")
    return 0


def _simulate_tokens(cfg, out: Path, console, args) -> int:
    from dcoord.sim import SimulateConfig
    from dcoord.sim.report import write_json
    from dcoord.sim.token import make_logreg_problem, simulate_tokens

    sim = cfg.simulate or SimulateConfig()
    hops = sim.hops
    problem = make_logreg_problem(cfg.workers, cfg.seed) if sim.problem == "logreg" else None
    data = simulate_tokens(cfg.token, cfg.workers, hops, cfg.seed, problem)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "simulation.json", data)
    if not args.no_plot and "sq_error" in data:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.loglog(data["record_hops"], data["sq_error"])
        ax.set_xlabel("hops")
        ax.set_ylabel("||theta - theta*||^2")
        ax.set_title(f"{cfg.token.chain} (alpha={cfg.token.alpha}) on {cfg.workers} nodes")
        fig.tight_layout()
        fig.savefig(out / "simulation.png", dpi=120)
        plt.close(fig)
    vc = data["visit_counts"]
    rows = [["hops", hops], ["nodes", cfg.workers], ["min / max visits", f"{min(vc)} / {max(vc)}"]]
    if "sq_error" in data:
        rows.append(["final squared error", data["sq_error"][-1]])
    console.print(rich_table(f"token simulation: {cfg.token.chain}", ["metric", "value"], rows))
    console.print(f"wrote {out / 'simulation.json'}")
    return 0


def cmd_tune(args) -> int:
    from rich.console import Console

    from dcoord.sim.tune import tune
    from dcoord.sim.tune_cmd import (
        network_from_args,
        print_planes,
        run_oos_tune,
        tune_planes,
        wrapped_rows_note,
    )
    from dcoord.stragglers import load_trace_csv

    if not Path(args.profile).is_file():
        raise ConfigError(f"{args.profile}: no such delay profile (CSV, rows = rounds, columns = workers)")
    network = network_from_args(args)
    if network is not None:  # rank (scheme, plane) pairs by predicted time per job on the whole profile
        data = tune_planes(args, *network)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print_planes(data, Console())
        return 0
    if (rc := run_oos_tune(args)) is not None:
        return rc
    choices = tune(Path(args.profile), jobs=args.jobs, max_delay=args.max_delay, n=args.workers,
                   base_comp=args.base_comp, mu=args.mu, top=args.top)
    note = wrapped_rows_note(args.jobs, args.max_delay, len(load_trace_csv(args.profile)))
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps([c.to_dict() for c in choices], indent=2))
        return 0
    rows = [[c.scheme, c.param_str, c.runtime_s, c.load, c.delay, c.wait_all_rounds] for c in choices]
    Console().print(rich_table(f"fastest schemes for {args.profile}", ["scheme", "params", "runtime (s)", "load",
                                                                         "delay T", "wait-all rounds"], rows))
    return 0


def cmd_privacy(args) -> int:
    from dcoord.privacy.accounting import plan
    from dcoord.runtime.privacy_glue import partition_replicas
    from dcoord.workloads import batch_indices
    from dcoord.workloads import load as load_workload

    cfg = load_job(args)
    if cfg.privacy is None:
        raise ConfigError("privacy: this job has no privacy section (add privacy: {mechanism: dp-gd, epsilon: 1})")
    wl = load_workload(cfg.workload, cfg.seed, cfg.workload_args)
    n_samples = len(batch_indices(wl.num_samples, cfg.batch_size, 0, cfg.seed))
    p = plan(cfg.privacy, cfg.rounds, n_samples, num_partitions=cfg.make_scheme().num_parts(),
             replicas=partition_replicas(cfg))
    gain = diff2_noise_gain(p, cfg.lr_for(0), wl.num_params())
    if gain is not None:
        p["difference_noise_gain"] = gain
    if args.json:
        print(json.dumps(p, indent=2, default=str))
        return 0
    from rich.console import Console

    rows = [[k, v] for k, v in p.items() if not isinstance(v, (list, dict))]
    console = Console()
    console.print(rich_table(f"privacy plan: {cfg.name}", ["quantity", "value"], rows))
    if gain is not None and gain >= 1:
        console.print(f"[yellow]warning:[/] DIFF2's difference noise gain lr x c2 x sigma2 x sqrt(d) = {gain:.3g} >= 1: "
                      "the noise added on a difference round is larger than the step it follows, so the noise in "
                      "the running estimate can compound every round (training diverges); lower privacy.clip_diff "
                      "or optimizer.lr")
    return 0


def diff2_noise_gain(plan: dict, lr: float, num_params: int) -> float | None:
    """lr * c2 * (aggregate noise std per unit C2) * sqrt(d): how much a difference round's noise grows the step.

    The difference clip is C2 = c2 * ||x_t - x_(t-1)||, so the noise vector added to v_t has norm about
    c2 * ||step|| * std_per_C2 * sqrt(d) and moves the next step by lr times that: at >= 1 noise feeds on
    itself (bench/privacy.py saw the paper's c2 = 30 diverge on digits for this reason).
    """
    per_c2 = plan.get("noise_std_diff_aggregate_per_C2")
    if per_c2 is None or plan.get("restart_every", 1) <= 1:  # no difference rounds
        return None
    return float(lr * plan["clip_diff"] * per_c2 * num_params**0.5)


def register(sub) -> None:
    sp = sub.add_parser("simulate", help="virtual-time simulation of the job's scheme (no processes)")
    job_args(sp)
    from dcoord.coding.registry import scheme_names

    sp.add_argument("--compare", help="comma-separated schemes to put side by side (tuned), from: "
                    + ", ".join(scheme_names()))
    sp.add_argument("--no-plot", action="store_true", help="write simulation.json only (no simulation.png)")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("tune", help="pick the fastest scheme and parameters for a measured delay profile")
    sp.add_argument("profile", help="CSV of per-worker times (rows = rounds, columns = workers)")
    sp.add_argument("--jobs", type=positive_int, default=20,
                    help="jobs each simulated run finishes; capped (with a note) where the profile's rows run out "
                    "[20]")
    from dcoord.sim.config import MAX_TUNE_DELAY

    sp.add_argument("--max-delay", type=bounded(int, 0, strict=False, high=MAX_TUNE_DELAY), default=3,
                    help=f"largest delay T allowed (0..{MAX_TUNE_DELAY}: the search grows as T^2) [3]")
    sp.add_argument("--workers", type=positive_int, default=None, help="workers (default: the profile's columns)")
    sp.add_argument("--base-comp", type=seconds, default=1.0, help="seconds for one full job's gradient (0..1e6)")
    sp.add_argument("--mu", type=nonneg_float, default=1.0,
                    help="straggler rule: a worker is late when not back by (1 + MU) x the fastest [1]")
    sp.add_argument("--top", type=positive_int, default=10,
                    help="in-sample ranking (--holdout 0): show the TOP fastest choices [10]")
    sp.add_argument("--json", action="store_true", help="print the result as JSON (notes go to stderr)")
    from dcoord.sim.tune_cmd import add_network_options, add_oos_options

    add_oos_options(sp)
    add_network_options(sp)
    sp.set_defaults(func=cmd_tune)

    sp = sub.add_parser("privacy", help="print the privacy budget plan of a job without training")
    job_args(sp)
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.set_defaults(func=cmd_privacy)


__all__ = ["register"]

