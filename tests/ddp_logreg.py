"""Plain torch DDP (gloo) on logreg-digits, each rank holding one dcoord worker's partition.

Run as ``torchrun --nproc-per-node N tests/ddp_logreg.py OUT ROUNDS LR SEED``: rank r trains on exactly
the part dcoord's uncoded worker r computes (the job's batch cut into N equal consecutive parts). DDP
averages gradients over ranks, so each rank's mean loss is scaled by N * |part| / |batch|: the averaged
gradient is then the full-batch mean-loss gradient, i.e. one DDP step is one step of dcoord's GD.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dcoord.workloads import batch_indices, load, split_parts


def main() -> None:
    out, rounds, lr, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    wl = load("logreg-digits", seed)
    model = DistributedDataParallel(wl.model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    fractions = np.full(world, 1.0 / world)
    for r in range(rounds):
        idx = batch_indices(wl.num_samples, None, r, seed)
        part = torch.as_tensor(split_parts(idx, fractions)[rank])
        opt.zero_grad()
        loss = wl.loss_fn(model(wl.X[part]), wl.y[part]) * (world * len(part) / len(idx))
        loss.backward()
        opt.step()
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.barrier()  # every rank is done and rank 0 has saved
    # gloo's teardown (destroy_process_group or interpreter exit) sometimes aborts a rank with "terminate
    # called without an active exception" on this torch; the reference's work is done, so skip it
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
