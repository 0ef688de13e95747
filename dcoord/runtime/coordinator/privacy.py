"""The coordinator's side of a private round: DIFF2 / DP-GD's running estimate v_t, which the optimizer
applies as the gradient, its own noise (trust: coordinator) and the epsilon spent. It never reads a
worker's noise secret."""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch

from dcoord.config import JobConfig
from dcoord.privacy.accounting import epsilon_per_round, plan, round_multipliers
from dcoord.privacy.mechanisms import GradientEstimator, RoundSpec
from dcoord.runtime.privacy_glue import build_mechanism, step_norm_of
from dcoord.workloads import Workload


class CoordinatorPrivacy:
    """The coordinator's side: running estimate v_t, its own noise (trust: coordinator), epsilon spent.

    Holds no worker secret: with ``trust: workers`` it cannot reproduce or remove the workers' noise.
    """

    def __init__(self, cfg: JobConfig, workload: Workload, num_partitions: int) -> None:
        p = cfg.privacy
        assert p is not None
        self.cfg = p
        self.mech = build_mechanism(cfg, workload, num_partitions)
        self.estimator = GradientEstimator(self.mech)
        # trust: coordinator without a configured seed: a fresh secret one (the noise is then not replayable)
        self.seed: int | None = None
        if p.trust == "coordinator":
            self.seed = p.coordinator_seed if p.coordinator_seed is not None else secrets.randbits(62)
        mults = round_multipliers(p.mechanism, cfg.rounds, self.mech.noise_multiplier,
                                  self.mech.noise_multiplier_diff, self.mech.restart_every)
        self.epsilons = epsilon_per_round(mults, p.delta, p.accountant, p.resolved_sample_rate)
        self.plan = plan(p, cfg.rounds, workload.num_samples, num_partitions)
        self.prev: np.ndarray | None = None  # x_{t-1}
        self.last_spec: RoundSpec | None = None

    def needs_previous(self, job: int) -> bool:
        return not self.mech.is_restart(job)

    def direction(self, job: int, decoded: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Fold round ``job``'s decoded aggregate into v_t and return v_t (the step direction)."""
        sn = 0.0 if self.mech.is_restart(job) else step_norm_of(params, self.prev)
        self.last_spec = self.mech.round_spec(job, sn)
        v = self.estimator.update(job, torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.float64)),
                                  step_norm=sn, seed=self.seed)
        self.prev = params.copy()
        return v.numpy()

    def state_dict(self) -> dict:
        """DIFF2's running estimate and x_(t-1), for a checkpoint.

        Not the coordinator's own noise seed (trust: coordinator): no secret reaches the run directory. A
        resumed run draws its noise from ``privacy.coordinator_seed`` again, or from a fresh random seed (fresh
        noise, the same accounting). The epsilon history is a function of the config and the round."""
        return {"estimator": self.estimator.state_dict(), "prev": None if self.prev is None else self.prev.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.prev = None if state["prev"] is None else np.array(state["prev"])  # the model's dtype, as saved

    def epsilon_after(self, job: int) -> float:
        return self.epsilons[job] if 0 <= job < len(self.epsilons) else math.nan

    def round_info(self, job: int) -> dict:
        s = self.last_spec
        return {
            "epsilon": self.epsilon_after(job),
            "privacy_round": None if s is None else s.kind,
            "privacy_clip": None if s is None else s.clip,
        }

    def summary(self, jobs_done: int) -> dict:
        return {
            "epsilon": self.epsilon_after(jobs_done - 1) if jobs_done else 0.0,
            "delta": self.cfg.delta,
            "privacy": {k: v for k, v in self.plan.items() if k != "history"},
        }
