"""Search the worst decode error of every built-in code at the common sizes and store it in the package.

The one producer of dcoord/coding/data/worst_case.json, which ``dcoord.coding.precision`` reads (the runtime's
guard and the CLI's precision line) and from which the docs' precision table is generated. Grid: n in
{8, 16, 32, 33, 64, 256} x s in {1, 2, 4, 8, 15, 16} with s < n, for gc-cyclic, gc-binary, gc-fr (where
(s+1) divides n) and uncoded. Each (code, n, s) is searched by dcoord.coding.worstcase.search with more
effort than the test that re-searches a sample (every set up to ``EXHAUSTIVE`` of them, else windows,
``RANDOM`` random sets and a longer local search). About 10-20 minutes on one core:

    nice python scripts/worst_case.py            # all of the grid
    python scripts/worst_case.py --only 32:4     # one (n, s), merged into the stored file
    python scripts/worst_case.py --n 256 --out a.json & python scripts/worst_case.py --n 8 --n 16 --out b.json
    python scripts/worst_case.py --merge a.json b.json   # two processes, then into the package
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
EFFORT = {"random_sets": 1500, "starts": 5, "swaps": 48, "steps": 20, "seed": 0, "exhaustive_max": 13000}


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
    ap.add_argument("--n", type=int, action="append", default=[], help="search only these n")
    ap.add_argument("--out", type=Path, default=OUT, help="write here (default: the package's table)")
    ap.add_argument("--merge", type=Path, nargs="+", help="merge these files into the package's table and exit")
    ap.add_argument("--markdown", action="store_true", help="print the docs' table from the stored file")
    args = ap.parse_args(argv)
    if args.merge:
        entries = {}
        for f in [OUT, *args.merge] if OUT.is_file() else args.merge:
            entries.update({(e["scheme"], e["n"], e["s"]): e for e in json.loads(f.read_text())["entries"]})
        _write(OUT, entries)
        return 0
    if args.markdown:
        from dcoord.coding.precision import markdown_table

        print(markdown_table())
        return 0
    only = {tuple(int(x) for x in o.split(":")) for o in args.only}
    stored = json.loads(args.out.read_text())["entries"] if args.out.is_file() and (only or args.n) else []
    entries = {(e["scheme"], e["n"], e["s"]): e for e in stored}
    t0 = time.perf_counter()
    for name, n, s in grid():
        if (only and (n, s) not in only) or (args.n and n not in args.n):
            continue
        if args.n and not only and (name, n, s) in entries:  # a split run picks up where it stopped
            continue
        t = time.perf_counter()
        w = search(name, n, s, **EFFORT)
        entries[(name, n, s)] = w.to_dict() | {"seconds": round(time.perf_counter() - t, 2)}
        print(f"{name} n={n} s={s}: float32 {w.worst_rel_error['float32']:.2e} ({w.sets} sets, "
              f"{time.perf_counter() - t:.1f} s)", flush=True)
        _write(args.out, entries)  # after each entry: an interrupted run keeps what it found
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def _write(path: Path, entries: dict) -> None:
    data = {"generated_by": "scripts/worst_case.py", "effort": EFFORT,
            "entries": sorted(entries.values(), key=lambda e: (e["n"], e["s"], e["scheme"]))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
