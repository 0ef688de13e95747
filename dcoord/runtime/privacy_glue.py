"""Privacy glue both sides share: the job's mechanism, each round's public parameters, and what the
workers' replication means for a compromised coordinator.

Both sides derive the same public round parameters (clip, noise std) from public inputs: the config, the
round index and ||x_t - x_{t-1}||, computed by the same function from the same parameter vectors. The
worker's side is :mod:`dcoord.runtime.worker.private`, the coordinator's :mod:`dcoord.runtime.coordinator.privacy`.
"""

from __future__ import annotations

import numpy as np
import torch

from dcoord.config import JobConfig
from dcoord.privacy.accounting import plan
from dcoord.privacy.mechanisms import PrivateGD, RoundSpec
from dcoord.privacy.per_sample import step_norm
from dcoord.workloads import Workload


def build_mechanism(cfg: JobConfig, workload: Workload, num_partitions: int) -> PrivateGD:
    """The job's mechanism with its noise resolved (calibrated to the target epsilon when one is given)."""
    assert cfg.privacy is not None
    # N: the whole dataset (batch_size: null); Poisson sampling divides by the expected batch q * N
    return PrivateGD.from_config(cfg.privacy, rounds=cfg.rounds, n_samples=workload.num_samples,
                                 num_partitions=num_partitions)


def round_spec(mech: PrivateGD, job: int, params: np.ndarray, prev: np.ndarray | None) -> RoundSpec:
    """The public parameters of round ``job``; differences clip at c2 * ||x_t - x_{t-1}||."""
    if mech.is_restart(job):
        return mech.round_spec(job)
    return mech.round_spec(job, step_norm_of(params, prev))


def answer_window(cfg: JobConfig) -> int:
    """Jobs a worker keeps answer digests for: enough for a coordinator resumed from its oldest kept
    checkpoint (checkpoint_every x keep_checkpoints rounds back, plus the sequential code's delay and the
    round in flight), at least 64 and at most 4096 jobs (a few MB at most, whatever the config says)."""
    rt = cfg.runtime
    span = rt.checkpoint_every * rt.keep_checkpoints + cfg.make_scheme().delay + 2
    return max(64, min(4096, span))


def step_norm_of(a: np.ndarray, b: np.ndarray | None) -> float:
    if b is None:
        raise ValueError("a DIFF2 difference round needs the previous parameters")
    return step_norm(torch.from_numpy(a), torch.from_numpy(b))


def partition_replicas(cfg: JobConfig) -> int:
    """How many workers the job's scheme has compute each partition (s + 1 for gradient codes): how many
    independently noised answers about one partition a compromised coordinator can collect per round.

    Read from the task lists of the first rounds of a fresh scheme (sequential codes assign more parts as
    jobs overlap); at least 1."""
    scheme = cfg.make_scheme()
    holders: dict[int, set[int]] = {}
    for r in range(min(cfg.rounds + scheme.delay, 2 * (scheme.delay + 1) + 2)):
        for w, tasks in scheme.tasks(r).items():
            for t in tasks:
                for p in t.parts:
                    holders.setdefault(p, set()).add(w)
    return max((len(h) for h in holders.values()), default=1)


def compromised_epsilon(cfg: JobConfig, workload: Workload) -> float:
    """Epsilon a compromised coordinator asking every replica with other parameters can reach (see
    accounting.compromised_coordinator_epsilon)."""
    assert cfg.privacy is not None
    p = plan(cfg.privacy, cfg.rounds, workload.num_samples, cfg.make_scheme().num_parts(),
             replicas=partition_replicas(cfg))
    return p["epsilon_compromised_coordinator"]
