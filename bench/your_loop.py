"""A user's own training loop: plain DDP against dcoord.join() (gc-cyclic s = 1), with and without a slow rank.

Run: ``python bench/your_loop.py [--steps 30] [--part-s 0.05]``. Each side is a real torchrun job of 4 ranks
running the loop of examples/ddp_to_dcoord (an MLP on digits, SGD with momentum, cosine LR, clipping).
Compute is emulated as ``--part-s`` seconds per n-th of the batch a rank computes (a DDP rank computes one
n-th, a gc-cyclic s = 1 rank two), so the comparison does not hinge on how busy this machine's cores are.
The slow rank (rank 1, ``--slowdown`` 5) sleeps (slowdown - 1) x its compute each step on both sides (DDP:
here; dcoord: its ``inject: fixed`` model). dcoord closes each step as soon as the code can decode
(``coding.close: earliest``). Rank 0 times the steps after the first 5 (warm-up).

Writes bench/results/your_loop.json and prints seconds per step side by side with the ratio dcoord / DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM = 5


def loop(role: str, spec: dict) -> None:
    """One rank of either side (under torchrun)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from dcoord.workloads import load

    torch.set_num_threads(1)
    steps, part_s, slow = spec["steps"], spec["part_s"], spec["slowdown"]
    if role == "dcoord":
        import dcoord

        settings = {"coding": {"close": "earliest"}, "runtime": {"emulate_part_s": part_s}}
        inject = {"model": "fixed", "workers": [1], "slowdown": slow} if slow > 1 else None
        job = dcoord.join(scheme="gc-cyclic", stragglers=1, config=settings, inject=inject, out=spec["out"],
                          overwrite=True)
    else:
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    wl = load("mlp-digits", seed=0)
    data = TensorDataset(wl.X, wl.y)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=14, sampler=sampler, drop_last=True)
    net = wl.model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    if role == "dcoord":
        model, optimizer = job.wrap(net, optimizer, steps=steps)
        batches = job.batches
    else:
        model = torch.nn.parallel.DistributedDataParallel(net)
        batches = None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    times: list[float] = []
    done, epoch = 0, 0
    while done < steps:
        sampler.set_epoch(epoch)
        epoch += 1
        for batch in (batches(loader) if batches else loader):
            if done >= steps:
                break
            times.append(time.perf_counter())
            optimizer.zero_grad()
            if role == "dcoord":
                for part in batch.parts:
                    part.backward(F.cross_entropy(model(part.x), part.y))
            else:
                t0 = time.perf_counter()
                x, y = batch
                loss = F.cross_entropy(model(x), y)
                time.sleep(part_s)  # one n-th of the batch, emulated (as dcoord's runtime.emulate_part_s)
                if rank == 1 and slow > 1:  # as dcoord's inject: fixed -- (slowdown - 1) x the rank's compute
                    time.sleep((slow - 1) * (time.perf_counter() - t0))
                loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
            optimizer.step()
            scheduler.step()
            done += 1
    times.append(time.perf_counter())
    if rank == 0:
        per_step = (times[-1] - times[WARM]) / (len(times) - 1 - WARM)
        Path(spec["result"]).write_text(json.dumps({"step_s": per_step, "world": world}))
    if role == "ddp":
        dist.barrier()


def run_side(role: str, spec: dict, work: Path) -> float:
    spec = {**spec, "result": str(work / f"{role}-{spec['slowdown']}.json"), "out": str(work / f"run-{role}")}
    spec_file = work / f"{role}.spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "DCOORD_SET")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           "--max-restarts", "0", __file__, "--role", role, "--spec", str(spec_file)]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"{role} failed:\n{p.stderr[-3000:]}")
    return json.loads(Path(spec["result"]).read_text())["step_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--part-s", type=float, default=0.05)
    ap.add_argument("--slowdown", type=float, default=5.0)
    ap.add_argument("--role", choices=["ddp", "dcoord"])
    ap.add_argument("--spec")
    args = ap.parse_args()
    if args.role:
        loop(args.role, json.loads(Path(args.spec).read_text()))
        return
    from _util import print_table, write_json

    rows, out = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for slow in (1.0, args.slowdown):
            spec = {"steps": args.steps, "part_s": args.part_s, "slowdown": slow}
            ddp = run_side("ddp", spec, Path(tmp))
            coded = run_side("dcoord", spec, Path(tmp))
            label = "none" if slow == 1 else f"rank 1 x{slow:g}"
            rows.append([label, ddp, coded, coded / ddp])
            out.append({"slow": label, "ddp_step_s": ddp, "dcoord_gc_cyclic_s1_step_s": coded, "ratio": coded / ddp})
    print_table(["slow rank", "DDP s/step", "dcoord gc-cyclic s=1 s/step", "dcoord / DDP"], rows)
    path = write_json("your_loop", {"ranks": 4, "steps": args.steps, "warmup_steps": WARM, "part_s": args.part_s,
                                    "close": "earliest", "rows": out})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
