"""Glue between the runtime and :mod:`dcoord.privacy`: what each side does in a private round.

Workers replace each part's plain gradient by its privatized message m_j (clipped per-sample sums, plus
seeded noise with ``trust: workers``); the code stays linear, so the coordinator decodes sum_j m_j exactly
and folds it into the DIFF2 / DP-GD running estimate v_t, which the optimizer then applies as the gradient.

Both sides derive the same public round parameters (clip, noise std) from public inputs: the config, the
round index and ||x_t - x_{t-1}||, computed by the same function from the same parameter vectors.
The workers' noise secret lives only in :class:`WorkerPrivacy` (read from the worker's own settings);
:class:`CoordinatorPrivacy` never reads it. Against a compromised coordinator (trust: workers) a worker
answers each (round, partition) for one parameter vector only, never a round older than one it answered
in the same session, and nothing older than its window of recent rounds (:class:`AnswerLedger`); its noise
is bound to the parameters asked about (mechanisms.worker_message), so the same question asked again after
a coordinator restart gets the identical answer.
"""

from __future__ import annotations

import heapq
import math
import secrets

import numpy as np
import torch

from dcoord.config import JobConfig
from dcoord.privacy.accounting import epsilon_per_round, plan, round_multipliers
from dcoord.privacy.mechanisms import (
    GradientEstimator,
    NoiseKey,
    PrivacyError,
    PrivateGD,
    RoundSpec,
    load_worker_noise_key,
    params_digest,
    worker_message,
)
from dcoord.privacy.per_sample import step_norm
from dcoord.workloads import Workload


def build_mechanism(cfg: JobConfig, workload: Workload, num_partitions: int) -> PrivateGD:
    """The job's mechanism with its noise resolved (calibrated to the target epsilon when one is given)."""
    assert cfg.privacy is not None
    # N: private rounds are full-batch (config validation enforces batch_size: null)
    return PrivateGD.from_config(cfg.privacy, rounds=cfg.rounds, n_samples=workload.num_samples,
                                 num_partitions=num_partitions)


def round_spec(mech: PrivateGD, job: int, params: np.ndarray, prev: np.ndarray | None) -> RoundSpec:
    """The public parameters of round ``job``; differences clip at c2 * ||x_t - x_{t-1}||."""
    if mech.is_restart(job):
        return mech.round_spec(job)
    return mech.round_spec(job, _norm(params, prev))


class AnswerLedger:
    """What a worker promised to a possibly compromised coordinator (``trust: workers``).

    Rules, for the worker's whole life:

    1. One parameter vector per (job, partition): a (job, part) is answered only for the digest of
       (x_t, x_(t-1)) it was first answered for. The message is a deterministic function of (noise key,
       job, part, that digest) -- the clip and noise std follow from the parameters, the noise seed is an
       HMAC of the key, job, part and digest (mechanisms.worker_message) -- so answering the same (job, part,
       parameters) again sends the identical message and releases nothing new, while other parameters
       (independent noise that two answers could average away) are refused.
    2. Within one session (one registration with a coordinator) assignment rounds never go back: a
       coordinator that replays an older round on the same stream gets no second answer. A new session (this
       worker re-registered, e.g. with a coordinator resumed from its checkpoint, which runs again the rounds
       after that checkpoint) starts its own round order; rule 1 still binds every answer it gets.
    3. Bounded memory: digests are kept for the newest ``window`` jobs only, and every job older than that
       window is refused for good. The floor (newest job answered - window + 1) only rises, so a forgotten
       (job, part) can never be answered again and rule 1 holds for jobs that left the window too.
    """

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 jobs, got {window}")
        self.window = int(window)
        self.digests: dict[int, dict[int, bytes]] = {}  # job -> part -> digest, jobs >= floor only
        self._jobs: list[int] = []  # min-heap of the jobs in ``digests``
        self.newest_job = -1
        self.session: str | None = None
        self.newest_round = -1  # in this session
        self.refused = 0

    @property
    def floor(self) -> int:
        """The oldest job still answerable (older ones are refused for good)."""
        return self.newest_job - self.window + 1

    def begin_round(self, round: int, session: str | None = None) -> None:
        """Called before answering assignment round ``round`` received in ``session`` (rule 2)."""
        if session != self.session:
            self.session, self.newest_round = session, -1
        if round < self.newest_round:
            self.refused += 1
            raise PrivacyError(f"round {round} is older than round {self.newest_round}, already answered "
                               "in this session")

    def answered_round(self, round: int) -> None:
        self.newest_round = max(self.newest_round, round)

    def check(self, job: int, part: int, digest: bytes) -> None:
        """Record (job, part) -> digest, or refuse: other parameters than before (rule 1), or a job older than
        the window (rule 3)."""
        if job < self.floor:
            self.refused += 1
            raise PrivacyError(f"round {job} is older than the {self.window} newest rounds this worker keeps "
                               f"answers for (it answered round {self.newest_job}); it is not answered again")
        parts = self.digests.get(job)
        if parts is None:
            parts = self.digests[job] = {}
            heapq.heappush(self._jobs, job)
        seen = parts.setdefault(part, digest)
        if seen != digest:
            self.refused += 1
            raise PrivacyError(f"round {job} partition {part} was already answered for other parameters")
        if job > self.newest_job:
            self.newest_job = job
            while self._jobs and self._jobs[0] < self.floor:
                del self.digests[heapq.heappop(self._jobs)]


def answer_window(cfg: JobConfig) -> int:
    """Jobs a worker keeps answer digests for: enough for a coordinator resumed from its oldest kept
    checkpoint (checkpoint_every x keep_checkpoints rounds back, plus the sequential code's delay and the
    round in flight), at least 64 and at most 4096 jobs (a few MB at most, whatever the config says)."""
    rt = cfg.runtime
    span = rt.checkpoint_every * rt.keep_checkpoints + cfg.make_scheme().delay + 2
    return max(64, min(4096, span))


class WorkerPrivacy:
    """A worker's private messages; holds the noise key (trust: workers), which never leaves this object."""

    def __init__(self, cfg: JobConfig, workload: Workload, num_partitions: int, key: NoiseKey | None = None) -> None:
        assert cfg.privacy is not None
        self.mech = build_mechanism(cfg, workload, num_partitions)
        self.key: NoiseKey | None = None
        if cfg.privacy.trust == "workers":
            self.key = key if key is not None else load_worker_noise_key()
        self.ledger = AnswerLedger(answer_window(cfg))

    def needs_previous(self, job: int) -> bool:
        return not self.mech.is_restart(job)

    def part_message(self, model: torch.nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor, *, job: int,
                     part: int, params: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """m_j for part ``part`` of round ``job`` as float64 (identical on every replica of the part)."""
        return self.part_message_tensor(model, loss_fn, X, y, job=job, part=part, params=params,
                                        prev=prev).cpu().numpy()

    def part_message_tensor(self, model: torch.nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor, *,
                            job: int, part: int, params: np.ndarray, prev: np.ndarray | None) -> torch.Tensor:
        """``part_message`` as a float64 tensor on the samples' device (GPU workers copy once per result)."""
        spec = round_spec(self.mech, job, params, prev)
        if self.key is not None:  # trust: workers: one answer per (job, partition)
            self.ledger.check(job, part, params_digest(params, prev if spec.kind == "difference" else None))
        flat = torch.from_numpy(np.ascontiguousarray(params)).to(X.device)
        prev_t = None if prev is None else torch.from_numpy(np.ascontiguousarray(prev)).to(X.device)
        m = worker_message(model, loss_fn, X, y, spec=spec, partition=part, key=self.key, params=flat,
                           prev_params=prev_t if spec.kind == "difference" else None)
        return m.detach().double()


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
        self.epsilons = epsilon_per_round(mults, p.delta, p.accountant)
        self.plan = plan(p, cfg.rounds, workload.num_samples, num_partitions)
        self.prev: np.ndarray | None = None  # x_{t-1}
        self.last_spec: RoundSpec | None = None

    def needs_previous(self, job: int) -> bool:
        return not self.mech.is_restart(job)

    def direction(self, job: int, decoded: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Fold round ``job``'s decoded aggregate into v_t and return v_t (the step direction)."""
        sn = 0.0 if self.mech.is_restart(job) else _norm(params, self.prev)
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


def _norm(a: np.ndarray, b: np.ndarray | None) -> float:
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
