"""One rank of plain torch DDP (gloo) for bench/netcluster.py, started inside its node's namespace with
MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE in the environment.

The same model as dcoord's side (netcluster_workload.wide), the same emulated compute: each step sleeps
``compute_s`` before its forward/backward (``slow_rank`` sleeps so long that its whole compute takes
``slowdown`` x as long), whose backward all-reduces
the gradient. Rank 0 writes ``{"step_s": [...]}`` (the time between consecutive step ends) to argv[2].
"""

import json
import os
import sys
import time

import torch
import torch.distributed as dist
from netcluster_workload import wide
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    wl = wide(0, params=spec["params"])
    model = DistributedDataParallel(wl.model, bucket_cap_mb=max(spec["params"] * 4 / 1e6 + 1, 25))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = wl.X[rank::world], wl.y[rank::world]
    fwd_bwd = []
    with model.no_sync():  # this rank's own forward/backward, without the all-reduce (warm, best of 3)
        for _ in range(4):
            t = time.perf_counter()
            opt.zero_grad()
            wl.loss_fn(model(x), y).backward()
            fwd_bwd.append(time.perf_counter() - t)
    fwd_bwd = min(fwd_bwd[1:])
    # the slow rank takes slowdown x its whole compute (sleep + forward/backward), as dcoord's inject: fixed
    sleep = spec["compute_s"]
    if rank == spec["slow_rank"]:
        sleep += (spec["slowdown"] - 1) * (spec["compute_s"] + fwd_bwd)
    dist.barrier()
    ends = [time.perf_counter()]
    for _ in range(spec["steps"]):
        time.sleep(sleep)
        opt.zero_grad()
        wl.loss_fn(model(x), y).backward()
        opt.step()
        ends.append(time.perf_counter())
    if rank == 0:
        with open(sys.argv[2], "w") as f:
            json.dump({"step_s": [b - a for a, b in zip(ends, ends[1:])], "fwd_bwd_s": fwd_bwd}, f)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # skip gloo teardown


if __name__ == "__main__":
    main()
