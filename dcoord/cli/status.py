"""``dcoord status``: a running job's status from its coordinator (HOST:PORT), or any run's (running,
stopped or done) from its run directory: rounds, loss, and the workers lost with the straggler slack left."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dcoord.cli.options import address, positive_float

#: what ``status RUN_DIR`` reads; the coordinator writes them as the run goes (metrics.jsonl every round)
SUMMARY, METRICS, CONFIG = "summary.json", "metrics.jsonl", "config.yaml"


def target(value: str) -> str:
    """argparse type: a run directory, or the coordinator's HOST:PORT."""
    if os.path.isdir(value):
        return value
    try:
        return address(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a run directory nor HOST:PORT "
                                         "(e.g. runs/quickstart or 127.0.0.1:50051)") from None


def _state(path: Path) -> str:
    """done (summary.json), running (a process holds the run directory's lock) or stopped."""
    if (path / SUMMARY).is_file():
        return "done"
    from dcoord.runtime.store.dirlock import DirLock, LockHeld

    try:
        DirLock(path).release()
    except LockHeld:
        return "running"
    except OSError:
        return "unknown"
    return "stopped"


def rundir_status(path: Path) -> dict:
    """A run's status from its directory: the last round line of metrics.jsonl, the worker events after
    it was started (lost / back, with the straggler slack left), and summary.json once it finished."""
    from dcoord.errors import DcoordError

    if not (path / METRICS).is_file() and not (path / CONFIG).is_file():
        raise DcoordError(f"status {path}: not a run directory (no {METRICS} or {CONFIG}); give a run "
                          "directory or the coordinator's HOST:PORT")
    import yaml

    try:
        cfg = yaml.safe_load((path / CONFIG).read_text()) or {} if (path / CONFIG).is_file() else {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    last: dict = {}
    lost: dict[int, dict] = {}
    tolerated, slack = cfg.get("coding", {}).get("stragglers"), None
    if (path / METRICS).is_file():
        for line in (path / METRICS).read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut off by a crash
            if "round" in rec:
                last = rec
            elif rec.get("event") in ("worker-lost", "worker-rejoined"):
                w = int(rec["worker"])
                if rec["event"] == "worker-lost":
                    lost[w] = {"worker": w, "round": rec.get("during_round", -1), "reason": rec.get("reason", "")}
                else:
                    lost.pop(w, None)
                tolerated, slack = rec.get("stragglers_tolerated", tolerated), rec.get("slack_left", slack)
    out = {"run_dir": str(path), "name": cfg.get("name", path.name), "state": _state(path),
           "rounds_completed": last["round"] + 1 if last else 0,
           "rounds_total": cfg.get("rounds"), "workers_total": cfg.get("workers"),
           "workers_alive": last.get("workers_alive"), "last_loss": last.get("loss"),
           "lost_workers": sorted(lost.values(), key=lambda e: e["worker"]),
           "stragglers_tolerated": tolerated, "slack_left": slack if slack is not None else tolerated}
    if (path / SUMMARY).is_file():
        summary = json.loads((path / SUMMARY).read_text())
        ms = summary.get("membership", {})
        out.update(rounds_completed=summary.get("rounds_completed"), last_loss=summary.get("final_loss"),
                   scheme=summary.get("scheme"), workers_alive=ms.get("alive_at_end", out["workers_alive"]),
                   stragglers_tolerated=ms.get("stragglers_tolerated", tolerated),
                   slack_left=ms.get("slack_left", out["slack_left"]))
    return out


def rundir_line(st: dict) -> str:
    from dcoord.runtime.coordinator.membership import slack_words

    loss, alive = st["last_loss"], st["workers_alive"]
    loss = f"{loss:.5f}" if isinstance(loss, (int, float)) else "-"
    head = (f"{st['name']} ({st['run_dir']}) {st['state']}: round {st['rounds_completed']}/{st['rounds_total']} "
            f"workers {alive if alive is not None else '?'}/{st['workers_total']} loss {loss}")
    if not st["lost_workers"]:
        return head + "; no worker lost"
    lost = ", ".join(f"worker {e['worker']} at round {e['round'] + 1}" + (f" ({e['reason']})" if e["reason"] else "")
                     for e in st["lost_workers"])
    slack = (slack_words(int(st["stragglers_tolerated"]), int(st["slack_left"]))
             if st["stragglers_tolerated"] is not None and st["slack_left"] is not None else "")
    return f"{head}; lost: {lost}" + (f"; {slack}" if slack else "")


def cmd_status(args) -> int:
    from dcoord.errors import DcoordError
    from dcoord.runtime.client import watch_status
    from dcoord.runtime.security.options import security_from_args

    if not args.address:
        raise DcoordError("status: give a run directory or the coordinator's HOST:PORT (or DCOORD_COORDINATOR)")
    if os.path.isdir(args.address):
        st = rundir_status(Path(args.address))
        print(json.dumps(st) if args.json else rundir_line(st), flush=True)
        return 0
    security = security_from_args(args, "status")
    for st in watch_status(args.address, watch=args.watch, timeout=args.timeout, security=security):
        if args.json:
            print(json.dumps(st), flush=True)
        else:
            rejected, refused = sum(st["rejected"].values()), sum(st["refused"].values())
            print(f"{st['name']} [{st['job_id']}] {st['state']}: round {st['round'] + 1}/{st['rounds_total']} "
                  f"scheme {st['scheme']} workers {st['workers_alive']}/{st['workers_total']} "
                  f"loss {st['last_loss']:.5f} stragglers {st['stragglers_seen']} "
                  f"late {st['dropped_late_results']} rejected {rejected} refused {refused} "
                  f"elapsed {st['elapsed_s']:.1f}s"
                  + (f" offences {st['offences']} excluded {st['excluded']}" if st.get("offences") else "")
                  + (f" ({st['message']})" if st["message"] else ""), flush=True)
    return 0


def register(sub) -> None:
    from dcoord.runtime.security.options import add_security_options, env

    sp = sub.add_parser("status", help="show a job's status: from its coordinator, or from its run directory")
    sp.add_argument("address", type=target, nargs="?", default=env("DCOORD_COORDINATOR"), metavar="RUN_DIR|HOST:PORT",
                    help="a run directory (any run: running, stopped or done), or a running coordinator's "
                         "HOST:PORT [DCOORD_COORDINATOR]")
    add_security_options(sp, "status")
    sp.add_argument("--watch", action="store_true", help="stream one line per round until the job ends (HOST:PORT)")
    sp.add_argument("--json", action="store_true", help="print each snapshot as one line of JSON")
    sp.add_argument("--timeout", type=positive_float, default=5.0,
                    help="seconds to wait for the coordinator to answer [5]")
    sp.set_defaults(func=cmd_status)
