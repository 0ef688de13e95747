"""Small helpers shared by the benchmarks: results folder, JSON output, optional plots."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(name: str, data: dict, out: Path | None = None) -> Path:
    out = out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    data = {"bench": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
            "python": platform.python_version(), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
