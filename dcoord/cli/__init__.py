"""The `dcoord` command line. Every user error ends in one line on stderr and a non-zero exit, no traceback.

One module per command family (train: run/coordinator/worker; status; analysis: simulate/tune/privacy),
shared option helpers in options.py. Errors: every domain error derives from dcoord.errors.DcoordError
and carries its exit status; main() catches that root only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dcoord.cli import analysis, status, train
from dcoord.cli.options import job_args
from dcoord.errors import ConfigError, DcoordError

__all__ = ["build_parser", "job_args", "main", "package_version", "walk_parsers"]


def package_version() -> str:
    """The installed dcoord's version (from its package metadata; "unknown" when run from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dcoord")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcoord", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    p.add_argument("--version", action="version", version=f"dcoord {package_version()}",
                   help="print dcoord's version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    train.register(sub)
    status.register(sub)
    analysis.register(sub)
    return p


def walk_parsers(parser: argparse.ArgumentParser | None = None, prog: str = "dcoord"):
    """Every parser of the command line, depth first: (command words, parser), starting with ``dcoord`` itself
    (the CLI reference and the help check read them from here)."""
    parser = parser or build_parser()
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, f"{prog} {name}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"dcoord: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DcoordError as exc:
        print(f"dcoord: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `dcoord privacy job.yaml --json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("dcoord: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
