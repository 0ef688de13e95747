"""Search the worst decode error of every built-in code at the common sizes and store it in the package.

The one producer of dcoord/coding/data/worst_case.json, which ``dcoord.coding.precision`` reads (the runtime's
guard and the CLI's precision line) and from which the docs' precision table is generated. Grid: n in
{8, 16, 32, 33, 64, 256} x s in {1, 2, 4, 8, 15, 16} with s < n, for gc-cyclic, gc-binary, gc-fr (where
(s+1) divides n) and uncoded. Each (code, n, s) is searched by dcoord.coding.worstcase.search with more
effort than the test that re-searches a sample (every set up to ``EXHAUSTIVE`` of them, else windows,
``RANDOM`` random sets and a longer local search). About 10-20 minutes on one core:

    nice python scripts/worst_case.py            # all of the grid
    python scripts/worst_case.py --only 32:4     # one (n, s), merged into the stored file
    python scripts/worst_case.py --markdown      # the docs' table from the stored file
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dcoord.coding.worstcase import search  # noqa: E402

OUT = ROOT / "dcoord" / "coding" / "data" / "worst_case.json"
NS = (8, 16, 32, 33, 64, 256)
SS = (1, 2, 4, 8, 15, 16)
#: the stored search: more than the test's (1,000 random sets, 3 starts of 32 swaps)
EFFORT = {"random_sets": 2000, "starts": 6, "swaps": 64, "steps": 25, "seed": 0, "exhaustive_max": 50000}


def codes(n: int, s: int) -> list[str]:
    out = ["gc-cyclic", "gc-binary"]
    if n % (s + 1) == 0:
        out.append("gc-fr")
    return out


def grid() -> list[tuple[str, int, int]]:
    out = [("uncoded", n, 0) for n in NS]
    out += [(c, n, s) for n in NS for s in SS if s < n for c in codes(n, s)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], metavar="N:S", help="search only these (n, s)")
    ap.add_argument("--markdown", action="store_true", help="print the docs' table from the stored file")
    args = ap.parse_args(argv)
    if args.markdown:
        from dcoord.coding.precision import markdown_table

        print(markdown_table())
        return 0
    only = {tuple(int(x) for x in o.split(":")) for o in args.only}
    stored = json.loads(OUT.read_text())["entries"] if OUT.is_file() and only else []
    entries = {(e["scheme"], e["n"], e["s"]): e for e in stored}
    t0 = time.perf_counter()
    for name, n, s in grid():
        if only and (n, s) not in only:
            continue
        t = time.perf_counter()
        w = search(name, n, s, **EFFORT)
        entries[(name, n, s)] = w.to_dict() | {"seconds": round(time.perf_counter() - t, 2)}
        print(f"{name} n={n} s={s}: float32 {w.worst_rel_error['float32']:.2e} ({w.sets} sets, "
              f"{time.perf_counter() - t:.1f} s)", flush=True)
    data = {"generated_by": "scripts/worst_case.py", "effort": EFFORT,
            "entries": sorted(entries.values(), key=lambda e: (e["n"], e["s"], e["scheme"]))}
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
