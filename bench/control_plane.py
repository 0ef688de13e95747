"""Control-plane overhead: round wall time minus the slowest worker's compute time, n workers on loopback.

A tiny model (linreg-synthetic, 21 parameters) so the round is all control plane: assignment push, result
stream, validation, decode, optimizer step and the metrics line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from _util import print_table, write_json

from dcoord.config import load_config
from dcoord.runtime.local import run_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows, results = [], []
    for scheme, s in [("uncoded", 0), ("gc-cyclic", 2)]:
        data = {"name": "overhead", "workload": "linreg-synthetic", "workers": args.workers, "rounds": args.rounds,
                "coding": {"scheme": scheme, "stragglers": s}, "runtime": {"progress": False}}
        with tempfile.TemporaryDirectory() as tmp:
            run_local(load_config(None, data=data), Path(tmp), progress=False)
            recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][5:]
        over = sorted((r["wall_s"] - max(r["compute_s"].values(), default=0.0)) * 1e3 for r in recs)
        rec = {"scheme": scheme, "workers": args.workers, "median_ms": statistics.median(over),
               "p90_ms": over[int(0.9 * len(over))], "mean_round_ms": statistics.mean(r["wall_s"] for r in recs) * 1e3}
        results.append(rec)
        rows.append([scheme, args.workers, rec["median_ms"], rec["p90_ms"], rec["mean_round_ms"]])
    print_table(["scheme", "workers", "overhead median ms", "overhead p90 ms", "round mean ms"], rows)
    print(f"wrote {write_json('control_plane', {'results': results}, args.out)}")


if __name__ == "__main__":
    main()
