"""Wall time per round with injected stragglers: uncoded vs gc-cyclic vs gc-fr vs ignore-stragglers.

Real processes on loopback. Every worker's compute is emulated as `--part-s` seconds of sleep per part
(runtime.emulate_part_s) on top of the real gradient work, because on a 2-core machine six CPU-bound
workers would measure core contention, not stragglers; on a cluster each worker has its own machine.
Ratios are taken inside one run: each straggler case against the no-straggler round of the same scheme,
and against the uncoded no-straggler round.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from _util import print_table, write_json

from dcoord.config import load_config
from dcoord.runtime.local import run_local

CASES = {
    "none": {"model": "none"},
    "one-10x": {"model": "fixed", "workers": [3], "slowdown": 10},
    "gilbert-elliott": {"model": "gilbert-elliott", "p_good_to_bad": 0.1, "p_bad_to_good": 0.5, "slowdown": 10},
}
SCHEMES = [("uncoded", 0), ("gc-cyclic", 2), ("gc-fr", 2), ("ignore-stragglers", 2)]


def mean_round(out: Path, skip: int) -> float:
    import json

    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["wall_s"] for r in recs[skip:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--part-s", type=float, default=0.02, help="emulated compute seconds per part")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = {}
    t0 = time.time()
    for case, inject in CASES.items():
        for scheme, s in SCHEMES:
            data = {"name": f"bench-{scheme}-{case}", "workload": "logreg-digits", "workers": args.workers,
                    "rounds": args.rounds, "optimizer": {"lr": 0.5}, "seed": 0,
                    "coding": {"scheme": scheme, "stragglers": s}, "inject": inject,
                    "runtime": {"progress": False, "emulate_part_s": args.part_s}}
            with tempfile.TemporaryDirectory() as tmp:
                run_local(load_config(None, data=data), Path(tmp), progress=False)
                results[(scheme, case)] = mean_round(Path(tmp), skip=2)
            print(f"  {scheme:18s} {case:16s} {results[(scheme, case)] * 1000:8.1f} ms/round", flush=True)
    base = results[("uncoded", "none")]
    rows, out = [], []
    for case in CASES:
        for scheme, s in SCHEMES:
            r = results[(scheme, case)]
            own = results[(scheme, "none")]
            rows.append([scheme, case, r * 1000, r / own, r / base])
            out.append({"scheme": scheme, "s": s, "stragglers": case, "round_s": r,
                        "ratio_to_own_no_straggler": r / own, "ratio_to_uncoded_no_straggler": r / base})
    print()
    print_table(["scheme", "stragglers", "ms/round", "x own none", "x uncoded none"], rows)
    path = write_json("local_stragglers", {"workers": args.workers, "rounds": args.rounds,
                                           "emulate_part_s": args.part_s, "results": out,
                                           "bench_wall_s": time.time() - t0}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
