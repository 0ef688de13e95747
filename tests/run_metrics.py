"""Test support: what a run directory's metrics.jsonl says while a run may be killed mid-line."""

from __future__ import annotations

import json
from pathlib import Path


def round_numbers(run: Path) -> list[int]:
    """The round numbers logged in ``run``/metrics.jsonl so far, in order; [] before the file exists.

    A line cut by a kill (the one being written) is skipped; event lines (no "round") are not rounds."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "round" in rec:
            out.append(rec["round"])
    return out
