"""The docs site's generated pages, made from the code at build time so they cannot go stale.

- ``reference/config.md``: every field of the job config (``dcoord.config.JobConfig`` and the sections it
  nests), with its type, default, bounds and description, read from the pydantic models.
- ``reference/cli.md``: every command and flag of ``dcoord`` and ``python -m dcoord.launch``, read from the
  argparse parsers the commands use.
- ``deploy.md``: ``deploy/README.md`` itself (it stays beside the manifests it describes).

mkdocs loads this file as a hook (``hooks:`` in mkdocs.yml) and calls ``on_files``; nothing generated is
committed. ``python scripts/gen_docs.py DIR`` writes the same pages into DIR, to read them without mkdocs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script or loaded by mkdocs from any directory
    sys.path.insert(0, str(ROOT))

#: generated page -> the function that writes it
GENERATED = {
    "reference/config.md": "config_reference",
    "reference/cli.md": "cli_reference",
    "deploy.md": "deploy_page",
}


# -- config reference -------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _model_of(annotation: Any) -> type | None:
    """The pydantic model a field holds (also through ``X | None``), else None."""
    from pydantic import BaseModel

    args = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for a in args:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    """A reader's name for a field type: ``one of `a`, `b` ``, ``int or null``, ``list of int``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if _is_union(annotation):
        parts = [_type_name(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if origin in (list, tuple, set):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or annotation is dict:
        return "mapping"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "PosixPath": "path", "Path": "path", "WindowsPath": "path"}.get(annotation.__name__,
                                                                                annotation.__name__)
    return str(annotation)


def _default(info) -> str:
    from pydantic_core import PydanticUndefined

    if info.is_required():
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "**required**"
    if _model_of(info.annotation) is not None:
        return "null (off)" if value is None else "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`"
    if value == [] or value == {}:
        return f"`{value}`"
    return f"`{value!r}`"


def _bounds(info) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "multiple_of": "multiple of",
             "min_length": "length >=", "max_length": "length <="}
    out = []
    for m in info.metadata:
        for attr, sign in signs.items():
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sign} {v}")
    return ", ".join(out)


def config_fields(model: type | None = None, prefix: str = "") -> Iterator[tuple[str, Any, type | None]]:
    """Every (dotted key, FieldInfo, nested model or None) of the job config, depth first, by the YAML name."""
    from dcoord.config import JobConfig

    model = model or JobConfig
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        nested = _model_of(info.annotation)
        yield key, info, nested
        if nested is not None:
            yield from config_fields(nested, key + ".")


def _doc_first_paragraph(model: type) -> str:
    doc = (model.__doc__ or "").strip()
    if not doc or doc.startswith(("A base class", "Usage docs")):
        return ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _section(model: type, prefix: str, title: str) -> list[str]:
    lines = [f"## `{title}`" if prefix else f"## {title}", ""]
    intro = _doc_first_paragraph(model)
    if intro:
        lines += [intro, ""]
    lines += ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    later: list[tuple[type, str]] = []
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        nested = _model_of(info.annotation)
        kind = _type_name(info.annotation)
        desc = info.description or ""
        if nested is not None:
            kind = "section" + (" or null" if "null" in kind else "")
            anchor = key.replace(".", "")
            desc = (desc + " " if desc else "") + f"see [`{key}`](#{anchor})"
            later.append((nested, key))
        lines.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(info))} | {_cell(_bounds(info))} | "
                     f"{_cell(desc)} |")
    lines.append("")
    for nested, key in later:
        lines += _section(nested, key + ".", key)
    return lines


def config_reference() -> str:
    from dcoord.config import JobConfig

    head = [
        "# Config reference",
        "",
        "A job is one YAML file; every key below may also be set on the command line with",
        "`--set key=value` (dotted keys, YAML values: `--set coding.scheme=gc-fr --set inject.slowdown=5`).",
        "Unknown keys, wrong types and values out of bounds are refused before anything starts, with one line",
        "naming the field (exit status 2). Units are seconds where a name ends in `_s`. Some checks span",
        "several fields (a scheme's parameters against `workers`, privacy against `batch_size`); they run",
        "when the file is loaded too.",
        "",
        "This page is generated from the pydantic models (`dcoord/config.py` and the sections it nests) each",
        "time the site is built.",
        "",
    ]
    return "\n".join(head + _section(JobConfig, "", "Top level")) + "\n"


# -- CLI reference ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _clean_env() -> Iterator[None]:
    """Parsers read ``DCOORD_*`` variables for their defaults: build them as on a machine with none set."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("DCOORD_")}
    cols = os.environ.get("COLUMNS")
    for k in saved:
        del os.environ[k]
    os.environ["COLUMNS"] = "100"
    try:
        yield
    finally:
        os.environ.update(saved)
        if cols is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = cols


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line a user types: ``dcoord CMD`` for each command, and ``python -m dcoord.launch``."""
    from dcoord import launch
    from dcoord.cli import build_parser

    with _clean_env():
        top = build_parser()
        out = {"dcoord": top}
        for action in top._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sp in action.choices.items():
                    out[f"dcoord {name}"] = sp
        out["python -m dcoord.launch"] = launch.build_parser()
    return out


def _command_help(top: argparse.ArgumentParser) -> dict[str, str]:
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _arg_row(a: argparse.Action) -> str:
    if a.option_strings:
        names = ", ".join(f"`{s}`" for s in a.option_strings)
        if a.nargs == 0:
            value = ""
        else:
            metavar = a.metavar or (", ".join(a.choices) if a.choices else a.dest.upper())
            value = f"`{metavar}`"
    else:
        names, value = f"`{a.metavar or a.dest}`", "positional" + (" (optional)" if a.nargs == "?" else "")
    if a.choices and a.nargs != 0:
        value = "one of " + ", ".join(f"`{c}`" for c in a.choices)
    default = ""
    if a.nargs != 0 and a.default not in (None, argparse.SUPPRESS, [], False):
        default = f"`{a.default}`"
    repeat = " (repeatable)" if isinstance(a, argparse._AppendAction) and "repeatable" not in (a.help or "") else ""
    help_text = (a.help or "").replace("%(default)s", str(a.default)) + repeat
    return f"| {names} | {_cell(value)} | {_cell(default)} | {_cell(help_text)} |"


def cli_reference() -> str:
    all_parsers = parsers()
    helps = _command_help(all_parsers["dcoord"])
    lines = [
        "# CLI reference",
        "",
        "Every command and flag, generated from the argparse parsers each time the site is built. A flag",
        "shown with `[DCOORD_...]` in its description may also come from that environment variable (the flag",
        "wins). Defaults are those of a shell with no `DCOORD_*` variable set.",
        "",
        "Exit status: 0 done; 1 error (one line saying why); 2 bad config or arguments (one line naming the",
        "field or flag); 3 the run failed (a checkpoint is written: continue with `--resume`); 4 a worker that",
        "lost its coordinator; 130 / 143 stopped by SIGINT / SIGTERM (checkpointed; the message gives the",
        "resume command).",
        "",
    ]
    for cmd, p in all_parsers.items():
        lines += [f"## `{cmd}`", ""]
        about = helps.get(cmd.removeprefix("dcoord "), "") if cmd.startswith("dcoord ") else (p.description or "")
        if about:
            lines += [about[:1].upper() + about[1:] + ("" if about.endswith(".") else "."), ""]
        with _clean_env():
            usage = p.format_usage().strip().removeprefix("usage: ")
        lines += ["```text", usage, "```", ""]
        rows = [a for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if rows:
            lines += ["| argument | value | default | description |", "|---|---|---|---|"]
            lines += [_arg_row(a) for a in rows]
            lines.append("")
    return "\n".join(lines) + "\n"


# -- deploy -----------------------------------------------------------------------------------------------
def deploy_page() -> str:
    """deploy/README.md as the site's deploy page (it lives beside the manifests, where `kubectl` users look)."""
    return (ROOT / "deploy" / "README.md").read_text()


def generate(page: str) -> str:
    return globals()[GENERATED[page]]()


# -- the mkdocs hook --------------------------------------------------------------------------------------
def on_files(files, config):  # noqa: ANN001 - mkdocs' hook signature
    """Add the generated pages to the site (mkdocs >= 1.6: ``File.generated``)."""
    from mkdocs.structure.files import File

    for page in GENERATED:
        files.append(File.generated(config, page, content=generate(page)))
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write the docs site's generated pages into a directory")
    ap.add_argument("out", help="directory to write reference/config.md, reference/cli.md and deploy.md into")
    args = ap.parse_args(argv)
    for page in GENERATED:
        path = Path(args.out) / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate(page))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
