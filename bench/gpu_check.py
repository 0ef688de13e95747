"""Probe for bench/gpu_check.sh: can this machine run dcoord's GPU checks? Prints what it finds first.

Exit 0: torch sees CUDA and dcoord's runtime imports; 2: no CUDA (CPU-only torch or no device);
3: a dependency of dcoord is missing (named).
"""

from __future__ import annotations

import importlib
import platform
import sys


def main() -> int:
    print(f"python {platform.python_version()} ({sys.executable})")
    try:
        import torch
    except ImportError as exc:
        print(f"torch: not importable ({exc})")
        return 3
    print(f"torch {torch.__version__}, built with CUDA {torch.version.cuda}")
    print(f"torch.cuda.is_available() = {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB")
    missing = []
    for mod in ["numpy", "scipy", "grpc", "grpc_health.v1", "google.protobuf", "pydantic", "yaml", "rich",
                "sklearn", "networkx", "pytest", "dcoord.runtime.local", "dcoord.runtime.worker.worker"]:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # noqa: BLE001 - report every kind of import failure
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    for m in missing:
        print(f"missing: {m}")
    if missing:
        return 3
    if not torch.cuda.is_available():
        print("no CUDA: the GPU tests would all skip; stopping here")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
