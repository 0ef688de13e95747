"""Regenerate dcoord/proto/ from protos/ with grpc_tools.protoc (the only way the stubs are made).

Usage: python scripts/gen_protos.py [--check]   (--check: exit 1 if the committed stubs are stale)
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "dcoord" / "proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    files = sorted(PROTOS.rglob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(f) for f in files]) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi"))
    for p in generated:  # protoc emits `from dcoord.v1 import ...`; make it importable inside dcoord.proto
        text = p.read_text().replace("from dcoord.v1 import", "from dcoord.proto.dcoord.v1 import")
        p.write_text(text)
    for d in {p.parent for p in generated} | {out / "dcoord", out}:
        (d / "__init__.py").touch()
    return generated


def main() -> int:
    check = "--check" in sys.argv
    if not check:
        generate(OUT)
        print(f"generated stubs in {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for f in fresh:
            rel = f.relative_to(tmp)
            if not (OUT / rel).is_file() or not filecmp.cmp(f, OUT / rel, shallow=False):
                stale.append(str(rel))
        if stale:
            print("stale generated gRPC code; run `python scripts/gen_protos.py`:", ", ".join(stale))
            return 1
    print("generated gRPC code matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
