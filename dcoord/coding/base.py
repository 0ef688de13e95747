"""The one interface every coding scheme implements, so the runtime and the simulator drive the same objects.

Data semantics: each job's batch of N samples is cut into parts (``part_fractions``). The gradient of
part j is g_j = (1/N) * sum_{i in part j} grad l_i, so the job's gradient (of the *mean* loss over the
batch) is sum_j g_j. A task's message is f = sum_k coeffs[k] * g_{parts[k]}; decoding a job returns the
coefficients a with g = sum a * f over delivered messages, which is exact whatever the part sizes are.

A round r lasts until the driver closes it with the set of workers that delivered (``arrived``); the
others are stragglers for that round and lose every task they had in it. Jobs belong to models
round-robin (job j -> model j % models), so several models train concurrently when delay > 0.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from dcoord.errors import DecodeError as DecodeError  # re-exported: the coding API
from dcoord.errors import SchemeError as SchemeError


@dataclass(frozen=True)
class Task:
    """One unit of work for one worker in one round: a linear combination of one job's part gradients."""

    job: int
    parts: tuple[int, ...]
    coeffs: tuple[float, ...]
    kind: str = "gc"  # "uncoded" | "gc" | "d1" | "d2" | "repeat" -- for logs and tests only
    slot: int = 0  # position of this task in the worker's list for the round

    @property
    def load(self) -> float:
        """Number of parts computed (the driver multiplies by the part size for the fraction of a job)."""
        return float(len(self.parts))


@dataclass(frozen=True)
class ResultRef:
    """Where a delivered message lives: (round it was computed in, worker, slot in that round's task list)."""

    round: int
    worker: int
    slot: int


class Scheme(ABC):
    """A coding policy. Pure: no I/O, no clocks; the driver tells it what happened."""

    name: str = "scheme"
    n: int
    delay: int = 0  # T: job j must be decodable at the end of round j + delay
    models: int = 1  # models trained concurrently; job j belongs to model j % models
    jobs: int | None = None  # jobs the scheme plans for (None = open-ended)
    s: int = 0  # stragglers tolerated per round (plain codes; for messages)
    last_residual: float = 0.0  # max |decode check| of the last decode (0 where decoding is exact by design)

    @abstractmethod
    def part_fractions(self) -> np.ndarray:
        """Fraction of a job's samples in each part (float64, sums to 1)."""

    @abstractmethod
    def tasks(self, round: int) -> dict[int, list[Task]]:
        """Tasks of every worker for ``round`` (may depend on earlier closed rounds). Keys 0..n-1."""

    @abstractmethod
    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        """May the round close with only ``arrived`` having delivered (the rest straggling)?

        The round loop asks this after every batch of results and passes its own growing set (no copy per
        result): read it, do not keep or hash it (``close_round`` gets a frozenset)."""

    @abstractmethod
    def close_round(self, round: int, arrived: frozenset[int]) -> list[int]:
        """Record the round's outcome; return the jobs that became decodable with it (in job order)."""

    @abstractmethod
    def decode(self, job: int) -> dict[ResultRef, float]:
        """Decoding coefficients for a decodable job: g_job = sum coeff * message[ref]."""

    @abstractmethod
    def load(self) -> float:
        """Normalized load: fraction of one full job's gradient each worker computes per round."""

    def uses_straggler_rule(self) -> bool:
        """True when the driver should wait for (1+mu)*fastest before closing (sequential schemes).

        Plain codes close as soon as ``accepts`` holds: waiting longer buys nothing.
        """
        return False

    def model_of(self, job: int) -> int:
        return job % self.models

    def num_parts(self) -> int:
        return len(self.part_fractions())

    def last_job(self, rounds: int) -> int:
        """Jobs 0..rounds-1 are started; all are due by round rounds-1+delay."""
        return rounds - 1

    # -- optional, vectorized entry points (the simulator drives these; defaults derive them) -------
    def worker_loads(self, round: int) -> np.ndarray:
        """Normalized load of every worker in ``round`` (fraction of one job's gradient; 0 = no task).

        The simulator's time model. Call before ``close_round(round)``. The default sums the part fractions
        of ``tasks(round)``; schemes override it with an O(n) version that builds no Task objects.
        """
        frac = self.part_fractions()
        out = np.zeros(self.n)
        if frac.size and np.all(frac == frac[0]):  # equal parts: count them
            for w, tasks in self.tasks(round).items():
                out[w] = frac[0] * sum(len(t.parts) for t in tasks)
            return out
        for w, tasks in self.tasks(round).items():
            out[w] = sum(float(frac[list(t.parts)].sum()) for t in tasks)
        return out

    def accepts_mask(self, round: int, arrived: np.ndarray) -> bool:
        """``accepts`` with the arrived set as a boolean mask of length n (no frozenset per call)."""
        return self.accepts(round, frozenset(np.flatnonzero(arrived).tolist()))

    def close_round_mask(self, round: int, arrived: np.ndarray) -> list[int]:
        """``close_round`` with the arrived set as a boolean mask of length n."""
        return self.close_round(round, frozenset(np.flatnonzero(arrived).tolist()))

    def params(self) -> dict:
        """The scheme's parameters, for reports (subclasses add theirs)."""
        return {"n": self.n}

    # -- optional hooks the runtime calls on every scheme (do-nothing defaults; override what you need) ----
    def bind_data(self, batch_size: int) -> None:
        """Told once, before round 0, how many samples a job's batch has (token walks size their shards)."""
        return None

    def reroute(self, round: int, alive: frozenset[int]) -> bool:
        """Workers outside ``alive`` are gone mid-round: move their work to live ones if the scheme can.

        Return True when ``tasks(round)`` changed (the coordinator re-sends the changed task lists).
        """
        return False

    def observe_times(self, round: int, busy_s: dict[int, float]) -> dict | None:
        """Told, after ``round`` closed and decoded, each delivering worker's busy seconds (compute plus any
        injected delay): a speed-aware scheme may re-plan later rounds and return the record of the re-plan
        for the metrics (None: nothing changed)."""
        return None

    def round_info(self, round: int) -> dict:
        """Extra fields for the closed round's metrics record."""
        return {}

    def report(self) -> dict:
        """Extra fields for the run summary."""
        return {}

    # -- checkpoints ---------------------------------------------------------------------------------
    #: attributes that change as rounds close: everything a later round depends on
    _state: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        """The scheme's round-to-round state as plain values (numpy arrays, lists, dicts), for a checkpoint.

        Taken between rounds; a scheme built from the same config and given it with ``load_state_dict``
        plans and decodes every later round exactly as this one would."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self._state}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in self._state if k not in state]
        if missing:
            raise SchemeError(f"{self.name}: checkpoint lacks scheme state {missing}")
        for k in self._state:
            setattr(self, k, copy.deepcopy(state[k]))


# -- what the registry knows about a scheme, declared beside its class ------------------------------------
@dataclass(frozen=True)
class SchemeParams:
    """The scheme parameters of a ``coding:`` section (None = not given)."""

    s: int = 0
    B: int | None = None
    W: int | None = None
    lam: int | None = None
    jobs: int | None = None
    models: int | None = None
    speeds: tuple[float, ...] | None = None  # gc-hetero: declared relative worker speeds


@dataclass(frozen=True)
class GridSpace:
    """What a tuning grid may range over (``dcoord tune``, ``simulate --compare``)."""

    n: int
    max_delay: int
    lambdas: tuple[int, ...]  # candidate lambda values (sorted)
    ss: tuple[int, ...]  # candidate s values (sorted, < n)
    max_window: int = 10


@dataclass(frozen=True)
class SchemeSpec:
    """One registered scheme: its name, how to build it, which ``coding:`` keys it reads, its tuning grid.

    ``params``: config keys under ``coding:`` it reads (subset of stragglers, B, W, lambda, models); a
    scheme without ``models`` trains one model. ``required``: those that must be given. ``grid``: every
    parameter dict the tuner simulates (keys s, B, W, lambda); None = cannot be tuned. ``tunable``: in the
    tuner's default set. ``color``: matplotlib colour in plots (None = picked by position). ``elastic``: a
    plain code built from (n, s) alone, so ``runtime.elastic`` may re-plan it over the workers present
    (coding/elastic.py; sequential codes carry jobs across rounds and cannot be). ``precision(n, params)``:
    the (plain code, s) whose decoding this scheme's is, ``"inner"`` naming the sequential codes' inner code
    (coding/precision.py measures it); None = not measured (a biased code, or a user's scheme: its decoding
    is its own business). ``real_coefficients``: it decodes with real (not 0/1) coefficients, which can
    amplify the payloads' rounding (the precision warning then suggests a 0/1 code). ``paper``: one of the
    schemes the sequential-gradient-coding paper compares (``dcoord tune`` also reports its pick among them).
    """

    name: str
    build: Callable[[int, SchemeParams], Scheme]
    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    grid: Callable[[GridSpace], Iterable[dict[str, int]]] | None = None
    tunable: bool = True
    display: str = ""
    color: str | None = None
    description: str = ""
    elastic: bool = False
    precision: Callable[[int, SchemeParams], tuple[str, int]] | None = None
    real_coefficients: bool = False
    paper: bool = False


_REGISTERED: dict[str, SchemeSpec] = {}


def register_scheme(spec: SchemeSpec, *, replace: bool = False) -> SchemeSpec:
    """Add a scheme to the registry (the config, simulator, tuner, CLI help and docs read it from there)."""
    if spec.name in _REGISTERED and not replace:
        raise SchemeError(f"scheme {spec.name!r} is already registered")
    _REGISTERED[spec.name] = spec
    return spec


def registered_schemes() -> dict[str, SchemeSpec]:
    """The registered specs in registration order (built-ins come from dcoord.coding.registry)."""
    return dict(_REGISTERED)
