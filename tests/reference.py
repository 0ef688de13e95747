"""Single-process references written with plain torch, independent of dcoord's runtime.

They share only the data, the model and the loss with dcoord (``dcoord.workloads.load``). Everything else
is re-written here from the documented rules (docs/concepts.md, "Batches and parts"):
which samples each round reads, the optimizer update, the token mode's step size and weighting. A bug in
dcoord's own batching or step code therefore shows as a difference instead of being copied.
"""

from __future__ import annotations

import numpy as np
import torch

from dcoord.workloads import load

PARTITION_SALT = 0x5EED_DA7A  # the documented constant that keys a Dataset job's partition shuffles


# -- batch selection, re-written from docs/concepts.md ----------------------------------------------------
def tensor_batch(num_samples: int, batch_size: int | None, step: int, seed: int) -> np.ndarray:
    """Step ``step``'s samples: all of them, or slice ``step mod (N // B)`` of epoch ``step // (N // B)``'s
    shuffle ``default_rng([seed, epoch]).permutation(N)``."""
    if batch_size is None or batch_size >= num_samples:
        return np.arange(num_samples)
    per_epoch = num_samples // batch_size
    perm = np.random.default_rng([seed, step // per_epoch]).permutation(num_samples)
    start = (step % per_epoch) * batch_size
    return perm[start : start + batch_size]


def _cut(n: int, fractions: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each part when n items are cut by fractions, boundaries rounded to nearest."""
    edges = [0]
    acc = 0.0
    for f in fractions:
        acc += float(f)
        edges.append(int(np.rint(acc * n)))
    edges[-1] = n
    return list(zip(edges, edges[1:]))


def dataset_batch(num_samples: int, fractions: np.ndarray, batch_size: int | None, step: int,
                  seed: int) -> np.ndarray:
    """A Dataset job's samples: partitions are the seeded shuffle ``default_rng([seed, SALT])`` cut by the
    fractions; inside partition j the step reads slice ``step mod (|P_j| // b_j)`` of epoch
    ``default_rng([seed, SALT, j, epoch]).permutation(|P_j|)``, b_j = B cut by the fractions."""
    perm = np.random.default_rng([seed, PARTITION_SALT]).permutation(num_samples)
    out = []
    sizes = _cut(batch_size, fractions) if batch_size is not None else None
    for j, (a, b) in enumerate(_cut(num_samples, fractions)):
        part = np.sort(perm[a:b])
        size = len(part) if sizes is None else min(sizes[j][1] - sizes[j][0], len(part))
        if size >= len(part):
            out.append(part)
            continue
        per_epoch = len(part) // size
        shuffle = np.random.default_rng([seed, PARTITION_SALT, j, step // per_epoch]).permutation(len(part))
        start = (step % per_epoch) * size
        out.append(part[shuffle[start : start + size]])
    return np.concatenate(out)


# -- optimizers --------------------------------------------------------------------------------------------
class _Reference:
    """SGD (momentum, L2 weight decay) and Adam, written out from their textbook updates."""

    def __init__(self, params: list[torch.Tensor], name: str, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.name, self.lr, self.mom, self.wd = params, name, lr, momentum, weight_decay
        self.betas, self.eps, self.t = betas, eps, 0
        self.buf = [None] * len(params)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = p.grad + self.wd * p  # L2 penalty (wd/2)||p||^2 added to the loss
            if self.name == "adam":
                self.m[i] = b1 * self.m[i] + (1 - b1) * g
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                mhat = self.m[i] / (1 - b1 ** self.t)
                vhat = self.v[i] / (1 - b2 ** self.t)
                p -= self.lr * mhat / (vhat.sqrt() + self.eps)
            else:
                if self.mom:
                    self.buf[i] = g.clone() if self.buf[i] is None else self.mom * self.buf[i] + g
                    g = self.buf[i]
                p -= self.lr * g


def train(workload: str, seed: int, rounds: int, lr: float, *, name: str = "sgd", momentum: float = 0.0,
          weight_decay: float = 0.0, batch_size: int | None = None) -> dict:
    """``rounds`` steps of the named optimizer on the mean loss of each round's documented batch."""
    wl = load(workload, seed)
    model = wl.model
    params = list(model.parameters())
    opt = _Reference(params, name, lr, momentum, weight_decay)
    for r in range(rounds):
        idx = torch.as_tensor(tensor_batch(wl.num_samples, batch_size, r, seed))
        for p in params:
            p.grad = None
        wl.loss_fn(model(wl.X[idx]), wl.y[idx]).backward()
        opt.step()
    return model.state_dict()


def full_batch_gd(workload: str, seed: int, rounds: int, lr: float, momentum: float = 0.0,
                  batch_size: int | None = None) -> dict:
    return train(workload, seed, rounds, lr, momentum=momentum, batch_size=batch_size)


def token_sgd(workload: str, seed: int, holders: list[int], n: int, degree: np.ndarray, lr_scale: float,
              beta_exponent: float, label_skew: bool = True) -> dict:
    """The token mode's update, written from docs/token-walks.md: hop r (0-based) at holder i applies
    theta <- theta - lr_scale * (r + 2)^-b * w_i * grad F_i(theta), F_i the mean loss over shard i,
    w_i = (1/n) / mu_i with mu the simple random walk's stationary law deg_i / sum(deg). Shards are the
    full dataset (sorted by label for label-skew) cut into n equal consecutive parts."""
    wl = load(workload, seed)
    model = wl.model
    idx = np.arange(wl.num_samples)
    if label_skew:
        idx = idx[np.argsort(wl.y.reshape(len(wl.y), -1)[:, 0].numpy(), kind="stable")]
    shards = [idx[a:b] for a, b in _cut(len(idx), np.full(n, 1.0 / n))]
    mu = np.asarray(degree, dtype=np.float64) / float(np.sum(degree))
    for hop, h in enumerate(holders):
        step = lr_scale * (hop + 2.0) ** (-beta_exponent) * (1.0 / n) / mu[h]
        sel = torch.as_tensor(shards[h])
        model.zero_grad()
        wl.loss_fn(model(wl.X[sel]), wl.y[sel]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= step * p.grad
    return model.state_dict()


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest relative difference over the parameter tensors of two state dicts."""
    out = 0.0
    for k in a:
        x, y = a[k].double(), b[k].double()
        out = max(out, float((x - y).norm() / max(y.norm(), 1e-12)))
    return out
