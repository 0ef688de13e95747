"""A worker's side of a private round: its privatized messages and the answer ledger.

Workers replace each part's plain gradient by its privatized message m_j (clipped per-sample sums, plus
seeded noise with ``trust: workers``); the code stays linear, so the coordinator decodes sum_j m_j exactly.
The workers' noise secret lives only in :class:`WorkerPrivacy` (read from the worker's own settings).
Against a compromised coordinator (trust: workers) a worker answers each (round, partition) for one
parameter vector only, only rounds of the job's config, never a round older than one it answered in the same
session, and nothing older than its window of recent rounds (:class:`AnswerLedger`); it charges every new
message to its own budget and refuses past --max-epsilon (budget.py); its noise is bound to everything that
shapes the message (mechanisms.release_binding), so the same question asked again after a coordinator
restart gets the identical answer and no two different questions share a draw.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable

import numpy as np
import torch

from dcoord.config import JobConfig
from dcoord.privacy.mechanisms import (
    NoiseKey,
    PrivacyError,
    load_worker_noise_key,
    params_digest,
    poisson_batch,
    worker_message,
)
from dcoord.runtime.privacy_glue import answer_window, build_mechanism, round_spec
from dcoord.runtime.worker.budget import WorkerBudget
from dcoord.workloads import Workload


class AnswerLedger:
    """What a worker promised to a possibly compromised coordinator (``trust: workers``).

    Rules, for the worker's whole life:

    1. One parameter vector per (job, partition): a (job, part) is answered only for the digest of
       (x_t, x_(t-1)) it was first answered for. The message is a deterministic function of (noise key,
       job, part, that digest) -- the clip and noise std follow from the parameters, the noise seed is an
       HMAC of the key and of everything that shapes the message (mechanisms.release_binding) -- so
       answering the same (job, part, parameters) again sends the identical message and releases nothing
       new, while other parameters (independent noise that two answers could average away) are refused.
    2. Within one session (one registration with a coordinator) assignment rounds never go back: a
       coordinator that replays an older round on the same stream gets no second answer. A new session (this
       worker re-registered, e.g. with a coordinator resumed from its checkpoint, which runs again the rounds
       after that checkpoint) starts its own round order; rule 1 still binds every answer it gets.
    3. Bounded memory: digests are kept for the newest ``window`` jobs only, and every job older than that
       window is refused for good. The floor (newest job answered - window + 1) only rises, so a forgotten
       (job, part) can never be answered again and rule 1 holds for jobs that left the window too.
    4. Only the job's own rounds: with ``jobs`` (the config's rounds) job numbers outside 0..jobs-1 are
       refused, so a coordinator cannot ask for more releases than the plan the worker checked.
    """

    def __init__(self, window: int = 1024, jobs: int | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 jobs, got {window}")
        self.window = int(window)
        self.jobs = None if jobs is None else int(jobs)
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

    def check(self, job: int, part: int, digest: bytes, on_new: Callable[[], None] | None = None) -> bool:
        """Record (job, part) -> digest, or refuse: a job outside the config's (rule 4), other parameters than
        before (rule 1), or a job older than the window (rule 3). True when the question is new (a release):
        ``on_new`` runs first and may refuse it (the worker's own budget), and then nothing is recorded."""
        if self.jobs is not None and not 0 <= job < self.jobs:
            self.refused += 1
            raise PrivacyError(f"round {job} is outside the job's rounds 0..{self.jobs - 1} (its config's rounds: "
                               f"{self.jobs}); this worker answers no job beyond them")
        if job < self.floor:
            self.refused += 1
            raise PrivacyError(f"round {job} is older than the {self.window} newest rounds this worker keeps "
                               f"answers for (it answered round {self.newest_job}); it is not answered again")
        seen = self.digests.get(job, {}).get(part)
        if seen is not None:
            if seen != digest:
                self.refused += 1
                raise PrivacyError(f"round {job} partition {part} was already answered for other parameters")
            return False
        if on_new is not None:
            on_new()
        parts = self.digests.get(job)
        if parts is None:
            parts = self.digests[job] = {}
            heapq.heappush(self._jobs, job)
        parts[part] = digest
        if job > self.newest_job:
            self.newest_job = job
            while self._jobs and self._jobs[0] < self.floor:
                del self.digests[heapq.heappop(self._jobs)]
        return True


def data_layout(cfg: JobConfig, num_partitions: int) -> str:
    """Which samples partition j holds depends on the workload, its arguments and the number of partitions:
    releases are accounted per partition only within one such layout (runtime/worker/budget.py)."""
    blob = json.dumps([cfg.workload, cfg.workload_args, int(num_partitions)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class WorkerPrivacy:
    """A worker's private messages; holds the noise key (trust: workers), which never leaves this object.

    With trust: workers every new message is first checked by the answer ledger (one parameter vector per
    question, only the config's rounds), then charged to the worker's own budget (:class:`WorkerBudget`,
    refused past ``max_epsilon``), and only then computed."""

    def __init__(self, cfg: JobConfig, workload: Workload, num_partitions: int, key: NoiseKey | None = None,
                 max_epsilon: float | None = None, account_file: str | None = None) -> None:
        assert cfg.privacy is not None
        self.mech = build_mechanism(cfg, workload, num_partitions)
        self.key: NoiseKey | None = None
        self.answers_ledgered = cfg.privacy.trust == "workers"
        # the key draws the noise (trust: workers) and the Poisson batches (kept secret from every reader of
        # a release, the coordinator included)
        if self.answers_ledgered or self.mech.sample_rate < 1:
            self.key = key if key is not None else load_worker_noise_key()
        self.num_samples = workload.num_samples
        self._batch: tuple[int, torch.Tensor] | None = None  # (job, mask) of the newest Poisson batch
        self.ledger = AnswerLedger(answer_window(cfg), jobs=cfg.rounds)
        self.budget = WorkerBudget(cfg.privacy.accountant, cfg.privacy.delta, max_epsilon, store=account_file,
                                   layout=data_layout(cfg, num_partitions))

    def in_batch(self, job: int, idx: np.ndarray) -> np.ndarray:
        """Which of the samples ``idx`` (a part's, of the whole dataset) are in round ``job``'s batch: all of
        them, or the Poisson batch every replica draws alike from the workers' key."""
        if self.mech.sample_rate >= 1:
            return np.ones(len(idx), dtype=bool)
        if self._batch is None or self._batch[0] != job:
            assert self.key is not None
            self._batch = (job, poisson_batch(self.key, job, self.num_samples, self.mech.sample_rate))
        return self._batch[1].numpy()[np.asarray(idx, dtype=np.int64)]

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
        if not self.mech.is_restart(job) and prev is None:
            raise PrivacyError(f"round {job} is a difference round and the assignment did not carry the "
                               "previous parameters x_(t-1)")
        spec = round_spec(self.mech, job, params, prev)
        if self.answers_ledgered:  # trust: workers: one answer per (job, partition), each charged once
            digest = params_digest(params, prev if spec.kind == "difference" else None)
            self.ledger.check(job, part, digest, on_new=lambda: self.budget.charge(
                part, spec.partition_multiplier, f"round {job} partition {part}", sample_rate=spec.sample_rate))
        flat = torch.from_numpy(np.ascontiguousarray(params)).to(X.device)
        prev_t = None if prev is None else torch.from_numpy(np.ascontiguousarray(prev)).to(X.device)
        m = worker_message(model, loss_fn, X, y, spec=spec, partition=part, key=self.key, params=flat,
                           prev_params=prev_t if spec.kind == "difference" else None)
        return m.detach().double()
