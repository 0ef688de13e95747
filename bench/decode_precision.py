"""Decode precision of every scheme: worst relative error over survivor sets vs the uncoded sum, per dtype.

For n in {8, 32, 64, 256} (--quick: 8, 32) and s in {1, 3, 4, 15, 16} (s <= n/2; s+1 divides n for
1, 3, 15 and not for 4, 16), each scheme's messages are rounded once to float64 / float32 / bfloat16, decoded
in float64 over many survivor sets (all of them when C(n, s) <= --sets), and compared with the exact sum;
the uncoded sum of n rounded parts in the same dtype is the baseline (dcoord.coding.precision). The
sequential codes (sr-sgc, m-sgc) decode their inner cyclic code of the same s (their uncoded chunks add
nothing); ignore-stragglers is biased by design and not measured. Beside each sampled figure it prints the
searched worst case the runtime goes by (dcoord.coding.precision.worst_case: the stored table of
scripts/worst_case.py, or a search) and their ratio: the sample misses the rare bad survivor sets of gc-cyclic.
Goals: gc-binary within 4x of uncoded at every (n, s); gc-cyclic within 1e-5 at float32 (searched) up to
n = 256. Writes bench/results/decode_precision.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time

from _util import RESULTS, print_table, write_json

from dcoord.coding.precision import MAX_SETS, measure_dtypes, worst_case
from dcoord.coding.stable import binary_load, cyclic_load

DTYPES = ("float64", "float32", "bfloat16")


def schemes_for(n: int, s: int) -> list[tuple[str, str, str, float]]:
    """(label, code to measure, construction, load) for every scheme at (n, s)."""
    out = [("uncoded", "uncoded", "stable", 1 / n)]
    if n % (s + 1) == 0:
        out.append(("gc-fr", "gc-fr", "stable", cyclic_load(n, s)))
    out += [("gc-cyclic", "gc-cyclic", "stable", cyclic_load(n, s)),
            ("gc-cyclic (tandon, old)", "gc-cyclic", "tandon", cyclic_load(n, s)),
            ("gc-binary", "gc-binary", "stable", binary_load(n, s)),
            ("sgc inner code", "inner", "stable", cyclic_load(n, s))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n in {8, 32} only, fewer survivor sets")
    ap.add_argument("--sets", type=int, default=None,
                    help=f"survivor sets per (scheme, n, s) (default {MAX_SETS}, the CLI's; quick 24)")
    ap.add_argument("--markdown", action="store_true", help="print the README table from the saved JSON and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads((RESULTS / "decode_precision.json").read_text())["records"]))
        return
    ns = (8, 32) if args.quick else (8, 32, 64, 256)
    sets = args.sets or (24 if args.quick else MAX_SETS)
    rows, records = [], []
    t0 = time.perf_counter()
    for n in ns:
        for s in (1, 3, 4, 15, 16):
            if s > n // 2:
                continue
            for label, code, construction, load in schemes_for(n, s):
                t = time.perf_counter()
                res = measure_dtypes(code, n, s, DTYPES, max_sets=sets, construction=construction)
                rec = {"scheme": label, "n": n, "s": s, "load": load, "sets": res["float32"].sets,
                       "exhaustive": res["float32"].exhaustive, "seconds": time.perf_counter() - t}
                searched = worst_case(code, n, s) if construction == "stable" else None
                for dt, p in res.items():
                    rec[dt] = {"worst_rel_error": p.worst_rel_error, "uncoded_rel_error": p.uncoded_rel_error,
                               "amplification": p.amplification, "flagged": p.flagged,
                               "searched_worst_rel_error": searched.worst_rel_error[dt] if searched else None}
                records.append(rec)
                f32 = res["float32"].worst_rel_error
                found = searched.worst_rel_error["float32"] if searched else float("nan")
                rows.append([label, n, s, f"{load:.4f}"] + [f"{res[dt].amplification:.3g}" for dt in DTYPES]
                            + [f"{f32:.2e}", f"{found:.2e}", f"{found / f32:.3g}", rec["sets"]])
                print(f"  {label} n={n} s={s}: {rec['seconds']:.1f} s", flush=True)
    print_table(["scheme", "n", "s", "load", "amp f64", "amp f32", "amp bf16", "sampled err f32", "searched err f32",
                 "searched/sampled", "sets"], rows)
    binary = [r for r in records if r["scheme"] == "gc-binary"]
    cyclic = [r for r in records if r["scheme"] == "gc-cyclic"]
    goals = {
        "gc_binary_within_4x_of_uncoded": all(r[dt]["amplification"] <= 4 for r in binary for dt in DTYPES),
        "gc_cyclic_float32_within_1e-5": all(r["float32"]["searched_worst_rel_error"] <= 1e-5 for r in cyclic),
        "gc_cyclic_float32_failures": [(r["n"], r["s"], r["float32"]["searched_worst_rel_error"]) for r in cyclic
                                       if r["float32"]["searched_worst_rel_error"] > 1e-5],
    }
    print("goals:", goals)
    path = write_json("decode_precision", {"quick": args.quick, "sets": sets, "records": records, "goals": goals,
                                           "wall_s": time.perf_counter() - t0})
    print(f"wrote {path}")
    plot(records, RESULTS / "decode_precision.png")


def markdown(records: list[dict]) -> str:
    """One row per (n, s); per scheme: load, then amplification at float64 / float32 / bfloat16."""
    order = ["uncoded", "gc-fr", "gc-cyclic", "gc-binary", "sgc inner code", "gc-cyclic (tandon, old)"]
    head = "| n | s | " + " | ".join(order) + " |\n|" + "---|" * (len(order) + 2) + "\n"
    lines = []
    for n, s in sorted({(r["n"], r["s"]) for r in records}):
        cells = []
        for lab in order:
            r = next((r for r in records if r["scheme"] == lab and r["n"] == n and r["s"] == s), None)
            if r is None:
                cells.append("n/a")
                continue
            amps = " / ".join(f"{r[dt]['amplification']:.2g}" for dt in DTYPES)
            cells.append(f"{r['load']:.3g} · {amps}")
        lines.append(f"| {n} | {s} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def plot(records: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DTYPES), figsize=(5 * len(DTYPES), 4), sharey=True)
    labels = sorted({r["scheme"] for r in records})
    for ax, dt in zip(axes, DTYPES):
        for k, lab in enumerate(labels):
            rs = [r for r in records if r["scheme"] == lab]
            xs = [f"{r['n']},{r['s']}" for r in rs]
            ax.plot(xs, [r[dt]["amplification"] for r in rs], "o-", label=lab, color=f"C{k}")
        ax.set_yscale("log")
        ax.set_title(f"{dt} payloads")
        ax.set_xlabel("n, s")
        ax.tick_params(axis="x", rotation=90)
        ax.axhline(4, color="k", ls=":", lw=1)
    axes[0].set_ylabel("decode error / uncoded sum error (worst)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
