"""Plain torch DDP (gloo) step time on a dcoord workload: the baseline of bench/real_models.py.

Run as ``torchrun --nproc-per-node N bench/ddp_step.py SPEC.json``. Rank k trains on the samples dcoord's
uncoded worker k reads (partition k's mini-batch of each job, via the same SampleSource), so both sides
fetch, forward and backward the same per-worker batch. A slow rank (``slow_rank``, ``slowdown``) sleeps
(slowdown - 1) x its own measured compute before each step, as dcoord's ``inject: fixed`` does.
Rank 0 writes ``{"step_s": [...]}`` to SPEC["out"].
"""

import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dcoord.workloads import load
from dcoord.workloads.batching import dataset_job_parts, partition_indices
from dcoord.workloads.data import SampleSource


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    wl = load(spec["workload"], spec["seed"], spec["workload_args"])
    model = DistributedDataParallel(wl.model)
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"])
    fr = np.full(world, 1.0 / world)
    parts = partition_indices(wl.num_samples, fr, spec["seed"])
    source = SampleSource(wl, torch.device("cpu"))
    batch = spec["batch_per_worker"] * world

    def compute(step: int) -> None:
        idx = dataset_job_parts(parts, fr, batch, step, spec["seed"])[0][rank]
        x, y = source.fetch(idx)
        opt.zero_grad()
        wl.loss_fn(model(x), y).backward()

    with model.no_sync():  # this rank's own compute time, without the allreduce
        t = time.perf_counter()
        compute(0)
        own = time.perf_counter() - t
    extra = (spec["slowdown"] - 1) * own if rank == spec.get("slow_rank", -1) else 0.0
    times = []
    for step in range(spec["steps"]):
        dist.barrier()
        t = time.perf_counter()
        if extra > 0:
            time.sleep(extra)
        compute(step)
        opt.step()
        times.append(time.perf_counter() - t)
    if rank == 0:
        with open(spec["out"], "w") as f:
            json.dump({"step_s": times, "own_compute_s": own}, f)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # skip gloo teardown (see tests/ddp_logreg.py)


if __name__ == "__main__":
    main()
