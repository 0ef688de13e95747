"""One rank of dcoord.join() (a torchrun environment of world size 1, set by the test), against plain torch.

Run as ``python tests/loop_one_rank.py OUT SCHEME``: trains logreg-digits 6 steps through the wrapper
(rank 0 hosts the coordinator and is its only worker), then the same 6 steps with plain torch on the same
batches (DistributedSampler's order), and prints ``max_diff=<value>``. A ConfigError is printed as one line
(``config error: ...``) with exit 2.
"""

import copy
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import dcoord
from dcoord.errors import ConfigError
from dcoord.loop.batches import global_batches
from dcoord.workloads import load

STEPS, BATCH = 6, 64


def main(out: str, scheme: str) -> int:
    torch.set_num_threads(1)
    wl = load("logreg-digits", 0)
    data = TensorDataset(wl.X, wl.y)
    plain = copy.deepcopy(wl.model)
    try:
        job = dcoord.join(scheme=scheme, out=out)
        model, optimizer = job.wrap(wl.model, torch.optim.SGD(wl.model.parameters(), lr=0.5, momentum=0.9),
                                    steps=STEPS)
        for batch in job.batches(data, batch_size=BATCH, epochs=1):
            optimizer.zero_grad()
            for part in batch.parts:
                part.backward(F.cross_entropy(model(part.x), part.y))
            optimizer.step()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    opt = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9)
    for idx in list(global_batches(len(data), BATCH, range(1), 0))[:STEPS]:
        opt.zero_grad()
        F.cross_entropy(plain(wl.X[idx]), wl.y[idx]).backward()
        opt.step()
    diff = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters()))
    print(f"max_diff={diff}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
