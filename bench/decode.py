"""Decoding throughput (GB/s of coded gradient combined) next to a plain memory copy of the same bytes.

For n = 8..256 workers (s = n/8, cyclic repetition), the coordinator's decode path is timed: solving
the coefficients for a survivor set (cold, then cached) and combining n-s float64 messages of d values.
The copy baseline copies the same n-s messages once (np.copyto), in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _util import print_table, write_json

from dcoord.coding.combine import combine
from dcoord.coding.gc import GCCyclic


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int, s: int, dim: int, repeat: int, rng: np.random.Generator) -> dict:
    """Time one (n, s): coefficient solve (cold and cached) and combine vs copy of the same bytes."""
    g = GCCyclic(n, s)
    survivors = frozenset(rng.choice(n, size=n - s, replace=False).tolist())
    t0 = time.perf_counter()
    coeffs = g.decoding_coefficients(survivors)
    cold = time.perf_counter() - t0
    warm = best_of(lambda: g.decoding_coefficients(survivors), repeat)
    msgs = {i: rng.standard_normal(dim) for i in range(n - s)}
    cmap = dict(enumerate(coeffs))
    nbytes = (n - s) * dim * 8
    t_dec = best_of(lambda: combine(cmap, msgs, dim), repeat)
    dst = np.empty((n - s, dim))

    def copy() -> None:
        for i, m in msgs.items():
            np.copyto(dst[i], m)

    t_copy = best_of(copy, repeat)
    info = g.cache_info()
    return {"n": n, "s": s, "bytes": nbytes, "decode_gbps": nbytes / t_dec / 1e9,
            "copy_gbps": nbytes / t_copy / 1e9, "ratio_to_copy": t_copy / t_dec,
            "solve_cold_ms": cold * 1e3, "solve_cached_us": warm * 1e6,
            "cache_hits": info.hits, "cache_misses": info.misses, "max_abs_coeff": float(np.abs(coeffs).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=1 << 18, help="gradient values per message (float64)")
    ap.add_argument("--ns", default="8,16,32,64,128,256")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows, results = [], []
    for n in [int(x) for x in args.ns.split(",")]:
        rec = measure(n, max(1, n // 8), args.dim, args.repeat, rng)
        results.append(rec)
        rows.append([n, rec["s"], rec["bytes"] / 1e6, rec["decode_gbps"], rec["copy_gbps"], rec["ratio_to_copy"],
                     rec["solve_cold_ms"], rec["solve_cached_us"],
                     f"{rec['cache_hits']}/{rec['cache_hits'] + rec['cache_misses']}"])
    print_table(["n", "s", "MB", "decode GB/s", "copy GB/s", "decode/copy", "solve ms (cold)",
                 "solve us (cached)", "cache hits"], rows)
    print(f"wrote {write_json('decode', {'dim': args.dim, 'results': results}, args.out)}")


if __name__ == "__main__":
    main()
