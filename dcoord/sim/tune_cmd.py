"""`dcoord tune` out of sample: its options and its report (kept apart from the CLI module so it ports as is)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dcoord.errors import ConfigError


def add_oos_options(parser: argparse.ArgumentParser) -> None:
    """--holdout / --eval / --rules / --load-model for `dcoord tune`."""
    parser.add_argument("--holdout", type=float, default=0.5,
                        help="score out of sample: tune on the first 1-F of the profile's rows, evaluate on the "
                        "rest (every rotation: mean +- spread); 0 = the in-sample ranking only [0.5]")
    parser.add_argument("--eval", action="append", default=[], metavar="CSV",
                        help="score on this other profile instead of a holdout (repeatable; tune on all of PROFILE)")
    parser.add_argument("--rules", default="earliest,straggler-rule",
                        help="close rules to compare: earliest (first decodable / first model-conforming arrival), "
                        "straggler-rule (the SGC paper's (1+mu) rule) [both]")
    parser.add_argument("--load-model", choices=["actual", "nominal"], default="actual",
                        help="simulator load accounting (nominal = the SGC authors') [actual]")


def run_oos_tune(args) -> int | None:
    """Run the out-of-sample report, or return None when the in-sample ranking was asked for (--holdout 0)."""
    if not args.eval and not args.holdout:
        return None
    from dcoord.sim.oos import RULES, holdout_split, tune_out_of_sample, whole
    from dcoord.stragglers import load_trace_csv

    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if bad or not rules:
        raise ConfigError(f"--rules: unknown close rule(s) {bad or rules}; allowed: {', '.join(RULES)}")
    for p in [args.profile, *args.eval]:
        if not Path(p).is_file():
            raise ConfigError(f"{p}: no such delay profile (CSV, rows = rounds, columns = workers)")
    d0 = load_trace_csv(args.profile)
    n = args.workers or d0.shape[1]
    if args.eval:
        tune = whole(d0, n, args.base_comp, args.max_delay, args.jobs, name=str(args.profile))
        evals = [whole(load_trace_csv(p), n, args.base_comp, args.max_delay, args.jobs, name=str(p))
                 for p in args.eval]
    else:
        tune, evals = holdout_split(d0, n, args.base_comp, args.holdout, args.max_delay, args.jobs,
                                    name=str(args.profile))
    note = capped_jobs_note(args.jobs, args.max_delay, tune, evals)
    if note:
        print(note, file=sys.stderr)
    data = tune_out_of_sample(n, tune, evals, args.max_delay, rules=rules, mu=args.mu,
                              load_model=args.load_model)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"out of sample: tuned on {data['tuned_on']} ({data['tune_jobs']} jobs), scored on "
                    f"{len(evals)} held-out run(s) of {evals[0].jobs} jobs; seconds per job")
    for h in ["scheme", "close rule", "params", "tuned s/job", "held-out s/job", "spread (std)", "min", "max"]:
        t.add_column(h, justify="left" if h in ("scheme", "close rule", "params") else "right")
    for p in data["policies"]:
        t.add_row(p["scheme"], p["rule"], ", ".join(f"{k}={v}" for k, v in p["params"].items()) or "-",
                  f"{p['tune_per_job_s']:.4g}", f"{p['eval_per_job_s_mean']:.4g}", f"{p['eval_per_job_s_std']:.3g}",
                  f"{p['eval_per_job_s_min']:.4g}", f"{p['eval_per_job_s_max']:.4g}")
    con = Console(width=150)
    con.print(t)
    rec = data["recommended"]
    con.print(f"recommended (fastest on the tune part): {policy_str(rec)}: {rec['eval_per_job_s_mean']:.4g} +- "
              f"{rec['eval_per_job_s_std']:.3g} s/job held out", highlight=False)
    if "paper_pick" in data:
        pp = data["paper_pick"]
        con.print(f"the SGC paper's pick (its schemes, its rule): {policy_str(pp)}: "
                  f"{pp['eval_per_job_s_mean']:.4g} s/job; recommended / paper = "
                  f"{data['recommended_over_paper_pick']:.3f}", highlight=False)
    return 0


def policy_str(policy: dict) -> str:
    """A policy as a user writes it in a job config: ``gc-cyclic, stragglers s=2, close earliest``."""
    params = ", ".join(f"{k}={v}" for k, v in policy["params"].items())
    return f"{policy['scheme']}" + (f" ({params})" if params else "") + f", close rule {policy['rule']}"


def capped_jobs_note(requested: int, max_delay: int, tune, evals: Sequence) -> str | None:
    """Say so when a part of the profile is too short for ``--jobs``: a run of J jobs reads J + max_delay rows
    and never reuses one, so each part runs rows - max_delay jobs at most (``oos.holdout_split``, ``whole``)."""
    scored = min(e.jobs for e in evals)
    if tune.jobs >= requested and scored >= requested:
        return None
    return (f"note: --jobs {requested} capped: ran {tune.jobs} jobs to tune ({tune.label}) and {scored} to score "
            f"each held-out run. A run of J jobs reads J + --max-delay ({max_delay}) rows without reusing one, so "
            f"{requested} jobs need {requested + max_delay} rows per part: give a longer profile, a smaller "
            "--holdout or --max-delay, --eval with other profiles, or --holdout 0 (in sample; rows wrap around)")


def wrapped_rows_note(requested: int, max_delay: int, rows: int) -> str | None:
    """In sample (--holdout 0) the profile's rows are replayed cyclically; say so when a run goes past them."""
    if requested + max_delay <= rows:
        return None
    return (f"note: --jobs {requested} with --holdout 0: up to {requested + max_delay} rounds on a profile of {rows} "
            f"rows, so rows are reused (round r reads row r mod {rows})")


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """--link-gbps / --model-mb / --latency-ms / --overhead-ms / --planes for `dcoord tune`."""
    from dcoord.sim.network import DEFAULT_OVERHEAD_MS

    g = parser.add_argument_group("network model (give --link-gbps and --model-mb to rank data planes too)")
    g.add_argument("--link-gbps", type=float, default=None, help="each node's link bandwidth, Gbit/s each way")
    g.add_argument("--model-mb", type=float, default=None, help="model size, MB (10^6 bytes)")
    g.add_argument("--latency-ms", type=float, default=0.0, help="one-way link latency, ms [0]")
    g.add_argument("--overhead-ms", type=float, default=DEFAULT_OVERHEAD_MS,
                   help=f"fixed cost of a dcoord round beside compute and wire, ms [{DEFAULT_OVERHEAD_MS:g}]")
    g.add_argument("--planes", default=None, help="planes to compare, comma-separated (default: the default star "
                   "plane and the collective one, tcp,allreduce)")


def network_from_args(args):
    """(Network, planes) from the options, or None when no network model was asked for."""
    from dcoord.sim.network import Network
    from dcoord.sim.planes import check_planes

    if args.link_gbps is None and args.model_mb is None:
        return None
    if args.link_gbps is None or args.model_mb is None:
        raise ConfigError("--link-gbps and --model-mb go together (the network model needs both), e.g. "
                          "--link-gbps 1 --model-mb 10")
    for flag, v, low in (("--link-gbps", args.link_gbps, 0.0), ("--model-mb", args.model_mb, 0.0)):
        if not v > low or v != v or v == float("inf"):
            raise ConfigError(f"{flag} must be a number > 0 (got {v})")
    for flag, v in (("--latency-ms", args.latency_ms), ("--overhead-ms", args.overhead_ms)):
        if not 0 <= v < float("inf"):
            raise ConfigError(f"{flag} must be a number >= 0 (got {v})")
    planes = check_planes(None if args.planes is None else [p.strip() for p in args.planes.split(",") if p.strip()],
                          "--planes")
    return Network(link_gbps=args.link_gbps, model_mb=args.model_mb, latency_ms=args.latency_ms,
                   overhead_ms=args.overhead_ms), planes


def tune_planes(args, net, planes) -> dict:
    """Every scheme's fastest choice on the whole profile, predicted on every plane (dcoord.sim.planes)."""
    from dcoord.sim.config import SimulateConfig
    from dcoord.sim.engine import TraceDelays
    from dcoord.sim.planes import choice_planes
    from dcoord.sim.tune import tune_source
    from dcoord.stragglers import load_trace_csv

    d0 = load_trace_csv(args.profile)
    n = args.workers or d0.shape[1]
    source = TraceDelays(d0, n, args.base_comp, name=f"trace file {args.profile}")
    choices = tune_source(n, source, args.jobs, args.max_delay, mu=args.mu, load_model=args.load_model)
    return choice_planes(choices, n, args.jobs, source, SimulateConfig(jobs=args.jobs, mu=args.mu), net, planes)


def print_planes(data: dict, console) -> None:
    """The per-plane table and the recommendation (``dcoord simulate`` and ``dcoord tune``)."""
    from rich.table import Table

    nw = data["network"]
    planes = list(next(iter(data["schemes"].values()))["round_s"])
    t = Table(title=f"predicted round per data plane, seconds ({nw['link_gbps']:g} Gbit/s links, "
                    f"{nw['latency_ms']:g} ms, {nw['model_mb']:g} MB model)")
    for h in ["scheme", *planes]:
        t.add_column(h, justify="left" if h == "scheme" else "right")
    for label, r in data["schemes"].items():
        t.add_row(label, *(f"{r['round_s'][p]:.4g}" for p in planes))
    console.print(t)
    rec = data["recommended"]
    console.print(f"plain DDP (waits for the slowest, then a ring all-reduce): {data['ddp_step_s']:.4g} s a step",
                  highlight=False)
    console.print(f"recommended: {rec['scheme']} on the {rec['plane']} plane: {rec['round_s']:.4g} s a round "
                  f"({rec['per_job_s']:.4g} s a job)", highlight=False)
