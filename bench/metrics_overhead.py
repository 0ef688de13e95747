"""What the Prometheus endpoint costs: per-message byte accounting, one scrape, and whole runs with/without.

The coordinator counts the tensor bytes of every work-stream message (``dcoord.wire.payload_bytes``, called by service.py,
from the tensors' shapes) and feeds the round-latency histogram once per round; everything else is read
at scrape time. Measured side by side in one run, per message size: payload_bytes vs protobuf's
ByteSize() (the obvious way, which encodes the message) vs SerializeToString (gRPC's own cost); the time of
one scrape (``generate_latest``); and the mean round time of the same job with and without
``--metrics-port``, interleaved (A B A B ...) so that a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import print_table, write_json

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.runtime.local import run_local
from dcoord.wire import payload_bytes, to_proto


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def message_costs(sizes: list[int], repeat: int) -> list[dict]:
    rows = []
    for d in sizes:
        params = np.random.default_rng(0).standard_normal(d)
        msg = pb.CoordinatorMessage(assignment=pb.Assignment(job_id="j", round=1, models=[
            pb.ModelState(model=0, version=1, params=to_proto(params))]))
        t_ours = _best(lambda m=msg: payload_bytes(m), repeat)
        t_size = _best(msg.ByteSize, repeat)
        t_ser = _best(msg.SerializeToString, repeat)
        rows.append({"params": d, "bytes": msg.ByteSize(), "payload_bytes_us": t_ours * 1e6,
                     "bytesize_us": t_size * 1e6, "serialize_us": t_ser * 1e6,
                     "payload_bytes_over_serialize": t_ours / t_ser, "bytesize_over_serialize": t_size / t_ser})
    return rows


def run_once(data: dict, metrics: bool) -> float:
    from dcoord.runtime.coordinator.metrics import CoordinatorMetrics

    servers = []

    def on_started(coord, *_):
        m = CoordinatorMetrics(coord)
        m.serve(0, "127.0.0.1")
        servers.append(m)

    with tempfile.TemporaryDirectory() as tmp:
        run_local(load_config(None, data=data), Path(tmp), progress=False,
                  on_started=on_started if metrics else None)
        recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    for m in servers:
        m.close()
    return statistics.mean(r["wall_s"] for r in recs[2:])


def scrape_cost(repeat: int) -> float:
    """One scrape of a coordinator's registry after a short run (its histogram and counters filled)."""
    from prometheus_client import generate_latest

    from dcoord.runtime.coordinator.metrics import CoordinatorMetrics

    kept = []
    data = {"name": "scrape", "workload": "logreg-digits", "workers": 3, "rounds": 5,
            "coding": {"scheme": "gc-cyclic", "stragglers": 1}, "runtime": {"progress": False}}
    run_local(load_config(None, data=data), None, progress=False,
              on_started=lambda coord, *_: kept.append(CoordinatorMetrics(coord)))
    return _best(lambda: generate_latest(kept[0].registry), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and rounds (about a minute)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=None, help="with/without run pairs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rounds = args.rounds or (20 if args.quick else 60)
    pairs = args.pairs or (2 if args.quick else 4)
    repeat = 5 if args.quick else 20

    msgs = message_costs([1_000, 100_000, 1_000_000], repeat)
    print_table(["params", "bytes", "payload_bytes us", "ByteSize us", "Serialize us", "ours/serialize",
                 "ByteSize/serialize"],
                [[r["params"], r["bytes"], r["payload_bytes_us"], r["bytesize_us"], r["serialize_us"],
                  r["payload_bytes_over_serialize"], r["bytesize_over_serialize"]] for r in msgs])
    scrape_s = scrape_cost(repeat)
    print(f"one scrape: {scrape_s * 1e3:.3f} ms")

    data = {"name": "metrics-bench", "workload": "logreg-digits", "workers": 4, "rounds": rounds, "seed": 0,
            "optimizer": {"lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "runtime": {"progress": False}}
    with_m, without = [], []
    for _ in range(pairs):
        without.append(run_once(data, metrics=False))
        with_m.append(run_once(data, metrics=True))
    ratio = statistics.mean(with_m) / statistics.mean(without)
    print_table(["", "mean round ms (runs)"],
                [["without metrics", f"{statistics.mean(without) * 1e3:.2f} ({', '.join(f'{x * 1e3:.1f}' for x in without)})"],
                 ["with metrics", f"{statistics.mean(with_m) * 1e3:.2f} ({', '.join(f'{x * 1e3:.1f}' for x in with_m)})"]])
    print(f"round time with / without metrics: {ratio:.3f}")
    path = write_json("metrics_overhead", {
        "quick": args.quick, "rounds": rounds, "pairs": pairs, "message_accounting": msgs,
        "scrape_ms": scrape_s * 1e3, "round_s_without": without, "round_s_with": with_m,
        "ratio_with_over_without": ratio,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
