"""One rank of dcoord.join() (a torchrun environment of world size 1, set by the test), against plain torch.

Run as ``python tests/loop_one_rank.py OUT SCHEME``: trains logreg-digits 6 steps through the wrapper
(rank 0 hosts the coordinator and is its only worker), then the same 6 steps with plain torch on the same
batches (DistributedSampler's order), and prints ``max_diff=<value>``. Both loops use what a user's loop
would: Adam, a StepLR schedule, gradient clipping, bfloat16 autocast, and the optimizer's and
scheduler's ``state_dict()`` saved and loaded back mid-run. A ConfigError is printed as one line
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
        model, optimizer = job.wrap(wl.model, torch.optim.Adam(wl.model.parameters(), lr=0.05), steps=STEPS)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        for step, batch in enumerate(job.batches(data, batch_size=BATCH, epochs=1)):
            optimizer.zero_grad()
            for part in batch.parts:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out_ = model(part.x)
                part.backward(F.cross_entropy(out_.float(), part.y))
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            optimizer.step()
            scheduler.step()
            if step == 2:  # a checkpoint of the user's own, loaded back
                saved = copy.deepcopy((optimizer.state_dict(), scheduler.state_dict()))
                optimizer.load_state_dict(saved[0])
                scheduler.load_state_dict(saved[1])
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    opt = torch.optim.Adam(plain.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for idx in list(global_batches(len(data), BATCH, range(1), 0))[:STEPS]:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_ = plain(wl.X[idx])
        F.cross_entropy(out_.float(), wl.y[idx]).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), max_norm=0.5)
        opt.step()
        sched.step()
    diff = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters()))
    print(f"max_diff={diff}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
