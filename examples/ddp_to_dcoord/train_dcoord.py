"""An MLP on scikit-learn's digits: SGD with momentum, a cosine LR schedule, gradient clipping, 4 ranks.

Run: torchrun --nproc-per-node 4 THIS_FILE.py model.pt
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import dcoord
from dcoord.workloads import load

EPOCHS, BATCH = 2, 14  # BATCH per rank: 25 steps an epoch on 1437 samples with 4 ranks


def main(out: str) -> None:
    torch.set_num_threads(1)
    job = dcoord.join(scheme="gc-cyclic", stragglers=1)
    wl = load("mlp-digits", seed=0)
    data = TensorDataset(wl.X, wl.y)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler, drop_last=True)
    net = wl.model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = job.wrap(net, optimizer, steps=EPOCHS * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(loader))
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for batch in job.batches(loader):
            optimizer.zero_grad()
            for part in batch.parts:
                loss = F.cross_entropy(model(part.x), part.y)
                part.backward(loss)
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
            optimizer.step()
            scheduler.step()
    if dist.get_rank() == 0:
        torch.save(net.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1])
