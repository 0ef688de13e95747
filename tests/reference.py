"""Single-process references written with plain torch, independent of dcoord's runtime."""

import torch

from dcoord.workloads import batch_indices, load


def full_batch_gd(workload: str, seed: int, rounds: int, lr: float, momentum: float = 0.0,
                  batch_size: int | None = None) -> dict:
    wl = load(workload, seed)
    model = wl.model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for r in range(rounds):
        idx = torch.as_tensor(batch_indices(wl.num_samples, batch_size, r, seed))
        opt.zero_grad()
        wl.loss_fn(model(wl.X[idx]), wl.y[idx]).backward()
        opt.step()
    return model.state_dict()


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest relative difference over the parameter tensors of two state dicts."""
    out = 0.0
    for k in a:
        x, y = a[k].double(), b[k].double()
        out = max(out, float((x - y).norm() / max(y.norm(), 1e-12)))
    return out
