"""Option helpers shared by every command family (and ``python -m dcoord.launch``)."""

from __future__ import annotations

import argparse


def address(value: str) -> str:
    """argparse type: HOST:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return value


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


def load_job(args) -> object:
    """The validated JobConfig of a command with ``job_args`` (--set and --workers applied)."""
    from dcoord.config import load_config

    overrides = list(args.set or [])
    if args.workers:
        overrides.append(f"workers={args.workers}")
    return load_config(args.job, overrides)


def job_args(sp: argparse.ArgumentParser, workers_help: str = "number of workers (overrides the config)") -> None:
    """The job options shared by ``dcoord run`` / ``coordinator`` / ``simulate`` and ``python -m dcoord.launch``."""
    sp.add_argument("job", help="job config (YAML)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set coding.stragglers=2 (repeatable)")
    sp.add_argument("--workers", type=positive_int, help=workers_help)
    sp.add_argument("--out", help="run directory (default runs/NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")


def rich_table(title: str, headers: list[str], rows: list[list]):
    """A rich Table: first column left-aligned, numbers to 4 significant digits."""
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r])
    return t
