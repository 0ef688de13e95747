"""An MLP on scikit-learn's digits: SGD with momentum, a cosine LR schedule, gradient clipping, 4 ranks.

Run: torchrun --nproc-per-node 4 THIS_FILE.py model.pt
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dcoord.workloads import load

EPOCHS, BATCH = 2, 14  # BATCH per rank: 25 steps an epoch on 1437 samples with 4 ranks


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    wl = load("mlp-digits", seed=0)
    data = TensorDataset(wl.X, wl.y)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler, drop_last=True)
    net = wl.model
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(loader))
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
            optimizer.step()
            scheduler.step()
    if dist.get_rank() == 0:
        torch.save(net.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1])
