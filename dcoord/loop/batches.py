"""What the user's loop iterates over: each round's batch, cut into the code's parts, and this rank's share.

Why the data order is DistributedSampler's: a user switching from DDP should get the same global batches
in the same order. DistributedSampler(shuffle=True, seed) permutes the dataset with a generator seeded
``seed + epoch`` and gives rank r every world-th index; the union of the ranks' k-th batches is the k-th
consecutive slice of that permutation. Here the k-th round's batch is that same slice, cut into the
code's parts (consecutive pieces, sized by the scheme's part fractions).

Each part's loss is scaled by the code's coefficient and by the part's share of the batch before its
backward, so the coded message is a linear combination of batch-mean gradients and the decoded gradient
is the batch's mean gradient: what DDP's averaging gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from dcoord.errors import DcoordError
from dcoord.workloads import split_parts


def global_batches(num_samples: int, batch_size: int, epochs: range, seed: int) -> Iterator[np.ndarray]:
    """The sample indices of every round's batch: DistributedSampler's order, ``batch_size`` at a time
    (the last incomplete batch of an epoch is dropped)."""
    for epoch in epochs:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        perm = torch.randperm(num_samples, generator=g).numpy()
        for k in range(num_samples // batch_size):
            yield perm[k * batch_size:(k + 1) * batch_size]


def loader_batches(loader: DataLoader) -> Iterator[np.ndarray]:
    """The global batches a DDP loop over ``loader`` (a DataLoader over a DistributedSampler) sees this
    epoch: the union over ranks of each step's batches, as DistributedSampler.__iter__ orders the indices
    (seed + epoch, padded or cut to a multiple of the ranks); ``len(loader)`` steps."""
    s = loader.sampler
    if not isinstance(s, DistributedSampler) or loader.batch_size is None:
        raise DcoordError("job.batches(loader): give a DataLoader(dataset, batch_size=B, sampler="
                          "DistributedSampler(dataset)), or job.batches(dataset, batch_size=GLOBAL_BATCH)")
    n = len(loader.dataset)
    if s.shuffle:
        g = torch.Generator()
        g.manual_seed(s.seed + s.epoch)
        idx = torch.randperm(n, generator=g).numpy()
    else:
        idx = np.arange(n)
    if s.drop_last:
        idx = idx[:s.total_size]
    elif s.total_size > n:
        idx = np.concatenate([idx, np.resize(idx, s.total_size - n)])
    size = loader.batch_size * s.num_replicas
    for k in range(len(loader)):
        yield idx[k * size:(k + 1) * size]


@dataclass
class Part:
    """One coded part of the round's batch: ``x`` and ``y`` as the dataset's collate gives them."""

    x: object
    y: object
    index: int  # the part's number in the code
    weight: float  # coefficient x share
    share: float  # the part's samples / the batch's samples
    batch: Batch = field(repr=False)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss``: the mean loss over this part's samples. Accumulates its coded share into ``.grad``; after
        the batch's last part, ``.grad`` holds the decoded gradient of the whole batch (as after DDP's backward)."""
        if loss.dim() != 0:
            raise DcoordError(f"part.backward(loss): give the part's mean loss (a scalar), not a tensor of shape "
                              f"{tuple(loss.shape)}")
        if self.index >= 0:
            (loss * self.weight).backward()
        self.batch.part_done(self, float(loss.detach()) if self.index >= 0 else 0.0)


@dataclass
class Batch:
    """This rank's parts of one round. When the round closed without this rank (it was too slow, or the code
    gave it nothing), ``parts`` is one empty part (no samples) whose backward only takes the decoded gradient."""

    step: int
    parts: list[Part]
    finish: Callable[[Batch], None] = field(repr=False)
    started: float = field(default_factory=time.perf_counter)
    losses: dict[int, float] = field(default_factory=dict)  # part -> share of the batch's mean loss
    synced: bool = False
    done: int = 0  # parts that went backward
    assignment: Any = field(default=None, repr=False)  # the coordinator's Assignment for this rank's parts
    digest: bytes = b""  # the parameters' digest the result carries (every runtime.digest_every steps)

    def part_done(self, part: Part, loss: float) -> None:
        if self.synced:
            raise DcoordError(f"step {self.step}: part {part.index} went backward after the batch's gradient was "
                              "decoded (call backward once per part of batch.parts)")
        if part.index >= 0:
            self.losses[part.index] = loss * part.share
        self.done += 1
        if self.done == len(self.parts):
            self.finish(self)


def _empty(v):
    """``v`` (a collated sample) with no rows: tensors sliced to length 0, containers element by element."""
    if isinstance(v, torch.Tensor):
        return v[:0]
    if isinstance(v, (list, tuple)):
        return type(v)(_empty(e) for e in v)
    if isinstance(v, dict):
        return {k: _empty(e) for k, e in v.items()}
    return v


def empty_part(batch: Batch, dataset, indices: np.ndarray, collate: Callable = default_collate) -> Part:
    """The one part of a round that closed without this rank: no samples, and its backward only takes the
    decoded gradient (so the loop's zero_grad, clipping and step run as in every other round)."""
    x, y = collate([dataset[int(indices[0])]])
    return Part(_empty(x), _empty(y), -1, 0.0, 0.0, batch)


def make_parts(batch: Batch, dataset, indices: np.ndarray, fractions: np.ndarray, parts: list[int],
               coeffs: list[float], collate: Callable = default_collate) -> list[Part]:
    """The parts this rank computes: their samples, collated, and their loss weights."""
    pieces = split_parts(indices, fractions)
    out = []
    for p, c in zip(parts, coeffs):
        idx = pieces[p]
        x, y = collate([dataset[int(i)] for i in idx])
        share = len(idx) / len(indices)
        out.append(Part(x, y, p, float(c) * share, share, batch))
    return out
