"""Option helpers shared by every command family (and ``python -m dcoord.launch``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from dcoord.errors import ConfigError


def address(value: str) -> str:
    """argparse type: HOST:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return value


def bounded(kind: type, low: float, strict: bool, high: float | None = None):
    """An argparse type: a finite ``kind`` (int or float) >= ``low`` (> ``low`` when ``strict``), at most
    ``high`` when given; argparse reports a bad value as one line naming the option."""
    what, sign = ("an integer" if kind is int else "a number"), (">" if strict else ">=")
    bound = f"{sign} {low:g}" if kind is int else f"a finite number {sign} {low:g}"
    if high is not None:
        bound += f" and <= {high:g}"

    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if not math.isfinite(v) or (v <= low if strict else v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be {bound} (got {value})")
        return v

    return parse


positive_int = bounded(int, 1, strict=False)
nonneg_int = bounded(int, 0, strict=False)
nonneg_float = bounded(float, 0, strict=False)
positive_float = bounded(float, 0, strict=True)
#: seconds a simulated job's compute may take (about 11.6 days; past it the simulated clock loses precision)
seconds = bounded(float, 0, strict=False, high=1e6)


def output_dir(path: Path, flag: str = "--out") -> Path:
    """``path`` as a directory to write into, made now: a ConfigError naming ``flag`` when it is a file or
    cannot be made (the work before the first write is not wasted on a path that fails at the end)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot make the directory ({exc.strerror})") from None
    return path


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


def add_resume_options(parser: argparse.ArgumentParser) -> None:
    """``--resume RUN_DIR`` and ``--overwrite`` (for run, coordinator and dcoord.launch)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest good checkpoint (same job config)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are deleted first)")
    g.add_argument("--resume-or-new", action="store_true",
                   help="the same command runs again (a re-applied Job): continue the newest run of --out, "
                        "--out-2, --out-3 ... when it stopped before its end, else start the next of them")
    parser.add_argument("--checkpoint-key-file", default=os.environ.get("DCOORD_CHECKPOINT_KEY_FILE") or None,
                        metavar="PATH", help="sign checkpoints with an HMAC under the secret in PATH (keep it "
                        "outside the run directory) and resume only from checkpoints it signed; `dcoord "
                        "coordinator` uses its --token-file when this is not given [DCOORD_CHECKPOINT_KEY_FILE]")


def checkpoint_key(args: argparse.Namespace, token: str | None = None) -> bytes | None:
    """The checkpoint signing key: --checkpoint-key-file's secret, else ``token`` (the coordinator's
    --token-file, which the operator holds), else None (integrity only)."""
    from dcoord.runtime.security.auth import read_secret_file
    from dcoord.runtime.store.checkpoint import signing_key

    path = getattr(args, "checkpoint_key_file", None)
    if path:
        return signing_key(read_secret_file(path, "--checkpoint-key-file"))
    return signing_key(token) if token else None


def out_and_mode(args: argparse.Namespace, cfg, number_default: bool = False) -> tuple[Path, str]:
    """Where the run writes and how (new / resume / overwrite): --resume DIR wins; the default runs/NAME
    never leaves runs/. ``number_default`` (``dcoord run``): when runs/NAME already holds a run and no --out
    was given, the run goes to runs/NAME-2 (-3, ...) and says so, so the same command runs again; a
    directory named with --out is never numbered (it is refused, as before)."""
    from dcoord.runtime.coordinator.resume import default_out
    from dcoord.runtime.store.rundir import RunDirError

    resume = getattr(args, "resume", None)
    if resume:
        if args.out and Path(args.out).resolve() != Path(resume).resolve():
            raise RunDirError(f"--out {args.out} and --resume {resume} differ; give only --resume")
        return Path(resume), "resume"
    mode = "overwrite" if getattr(args, "overwrite", False) else "new"
    if getattr(args, "resume_or_new", False):
        from dcoord.runtime.coordinator.resume import resume_or_new

        out, mode = resume_or_new(Path(args.out) if args.out else default_out(cfg.name))
        print(f"dcoord: {'resuming' if mode == 'resume' else 'a new run in'} {out} (--resume-or-new)",
              file=sys.stderr, flush=True)
        return out, mode
    if args.out:
        return Path(args.out), mode
    out = default_out(cfg.name)
    if number_default and mode == "new" and out.exists():
        taken, k = out, 2
        while out.exists():
            out, k = taken.with_name(f"{taken.name}-{k}"), k + 1
        print(f"dcoord: {taken} holds an earlier run; this one writes {out} (--overwrite replaces {taken}, "
              f"--resume {taken} continues it)", file=sys.stderr)
    return out, mode


def rich_table(title: str, headers: list[str], rows: list[list]):
    """A rich Table: first column left-aligned, numbers to 4 significant digits."""
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r])
    return t
