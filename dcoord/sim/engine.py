"""Per-round virtual-time driver over any ``Scheme``: the same policy objects the coordinator drives.

Each round: ask the scheme for every worker's load L, get finish times d(L) from a ``DelaySource``, close the
round the way the coordinator would, tell the scheme, and advance the clock by the round's duration.

- Sequential codes (``uses_straggler_rule()``): the round closes at min((1+mu) * fastest, slowest); workers
  not back by then are stragglers. If the scheme rejects that set, ``wait="all"`` waits for the slowest
  (a wait-all round); ``wait="minimal"`` admits arrivals in time order until the scheme accepts.
- Plain codes close at the first arrival at which ``accepts`` holds (waiting longer buys nothing), or, with
  ``plain_close="straggler-rule"`` (the SGC paper's comparison), by the same rule as sequential codes.
- Sequential codes with ``close="earliest"`` also close at the first arrival at which ``accepts`` holds: the
  late set fits the (B, W, lambda) model given the recorded history (so every pending job stays decodable by
  its deadline) and the job due this round decodes.
- ``carry_over``: a worker cut off by a close keeps working on its stale task and starts the next round
  late by what it had left (persistent worker processes); off, every round starts every worker fresh.
- ``load_model="nominal"`` (the SGC authors' simulator) charges every worker the scheme's full normalised
  load in every round that has any task; ``"actual"`` charges only the minitasks that exist.

Only workers with a task count (fastest, slowest, stragglers). ``accepts`` is monotone in the arrived set
(more arrivals never hurt), so the first accepting arrival is found by bisection: O(log n) checks a round.
Every job must be decodable by its deadline; a scheme that fails is a bug and raises ``SimulationError``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcoord.coding.base import Scheme
from dcoord.errors import SimulationError, StragglerError
from dcoord.sim.config import SimulateConfig
from dcoord.stragglers import InjectConfig, StragglerModel, load_trace_csv, make_straggler_model


class DelaySource(ABC):
    """Finish times of the n workers in a round, given their loads."""

    n: int

    @abstractmethod
    def finish_times(self, round: int, loads: np.ndarray) -> np.ndarray:
        """Seconds from the start of ``round`` until each worker delivers, at normalized loads ``loads``."""

    def describe(self) -> dict:
        return {"kind": type(self).__name__}


class TraceDelays(DelaySource):
    """d_ir(L) = scale * d0[r mod rows, i] + L * base_comp, from a measured profile at load 0."""

    def __init__(self, d0: np.ndarray, n: int | None = None, base_comp: float = 1.0, scale: float = 1.0,
                 name: str = "trace") -> None:
        d0 = np.asarray(d0, dtype=np.float64)
        if d0.ndim != 2 or d0.shape[0] < 1:
            raise StragglerError(f"{name}: need a (rounds x workers) matrix, got shape {d0.shape}")
        n = d0.shape[1] if n is None else n
        if d0.shape[1] < n:
            raise StragglerError(f"{name}: {d0.shape[1]} columns (workers) but {n} workers simulated; simulate "
                                 f"at most {d0.shape[1]} workers or use a trace with {n} columns or more")
        self.n = n
        self.d0 = d0[:, :n] * scale
        self.base_comp = float(base_comp)
        self.name = name

    @classmethod
    def from_csv(cls, path: str | Path, n: int | None = None, base_comp: float = 1.0, scale: float = 1.0,
                 skip_rows: int = 0) -> TraceDelays:
        d0 = load_trace_csv(path)
        if skip_rows >= d0.shape[0]:
            raise ValueError(f"trace file {path}: skip_rows={skip_rows} but it has only {d0.shape[0]} rows")
        return cls(d0[skip_rows:], n, base_comp, scale, name=f"trace file {path}")

    def finish_times(self, round: int, loads: np.ndarray) -> np.ndarray:
        return self.d0[round % self.d0.shape[0]] + loads * self.base_comp

    def describe(self) -> dict:
        return {"kind": "trace", "name": self.name, "rows": int(self.d0.shape[0]), "base_comp": self.base_comp}


class ModelDelays(DelaySource):
    """d_ir(L) = model.times(r, base_time + L * base_comp): an injected straggler model on a nominal time."""

    def __init__(self, model: StragglerModel, base_time: float = 1.0, base_comp: float = 1.0) -> None:
        self.model = model
        self.n = model.n
        self.base_time = float(base_time)
        self.base_comp = float(base_comp)

    def finish_times(self, round: int, loads: np.ndarray) -> np.ndarray:
        return self.model.times(round, self.base_time + loads * self.base_comp)

    def describe(self) -> dict:
        return {"kind": "model", "model": self.model.name, "base_time": self.base_time,
                "base_comp": self.base_comp}


def make_delay_source(n: int, cfg: SimulateConfig, inject: InjectConfig | None = None,
                      seed: int = 0) -> DelaySource:
    """The trace in ``cfg.trace`` if given, else the injected model (default: no stragglers)."""
    if cfg.trace is not None:
        return TraceDelays.from_csv(cfg.trace, n, cfg.base_comp, cfg.trace_scale, cfg.skip_rows)
    model = make_straggler_model(inject or InjectConfig(), n, seed)
    return ModelDelays(model, cfg.base_time, cfg.base_comp)


@dataclass
class SimResult:
    """What one simulated run measured (all times are virtual seconds)."""

    scheme: str
    params: dict
    load: float
    delay: int
    jobs: int
    rounds: int
    runtime_s: float
    wait_all_rounds: int
    extended_rounds: int
    round_durations: np.ndarray
    job_finish_times: np.ndarray
    stragglers_per_round: np.ndarray
    wall_s: float = field(default=0.0, compare=False)

    def summary(self) -> dict:
        """Scalars only (for tables)."""
        return {"scheme": self.scheme, "params": self.params, "load": self.load, "delay": self.delay,
                "jobs": self.jobs, "rounds": self.rounds, "runtime_s": self.runtime_s,
                "wait_all_rounds": self.wait_all_rounds, "extended_rounds": self.extended_rounds,
                "mean_stragglers": float(self.stragglers_per_round.mean()) if self.rounds else 0.0}

    def to_dict(self) -> dict:
        return {**self.summary(), "round_durations": self.round_durations.tolist(),
                "job_finish_times": self.job_finish_times.tolist(),
                "stragglers_per_round": self.stragglers_per_round.tolist(), "sim_wall_s": self.wall_s}


def _first_accepting(accepts: Callable[[np.ndarray], bool], t: np.ndarray, tasked: np.ndarray,
                     order: np.ndarray, lo: int) -> tuple[int, np.ndarray]:
    """Smallest k >= lo such that the k earliest tasked arrivals (ties included) are accepted."""
    untasked = ~tasked

    def arrived_k(k: int) -> np.ndarray:
        return untasked | (t <= t[order[k - 1]]) if k > 0 else untasked.copy()

    hi = order.size
    if not accepts(arrived_k(hi)):
        raise SimulationError("the scheme does not accept a round in which every worker delivered")
    while lo < hi:
        mid = (lo + hi) // 2
        if accepts(arrived_k(mid)):
            hi = mid
        else:
            lo = mid + 1
    return lo, arrived_k(lo)


def queue_on_link(t: np.ndarray, tasked: np.ndarray, upload_s: float) -> np.ndarray:
    """Arrival times at the coordinator when every message takes ``upload_s`` on its one inbound link (a star
    plane): messages queue in finish order, each starting when it is ready and the link is free."""
    out = t.copy()
    free = 0.0
    idx = np.flatnonzero(tasked)
    for i in idx[np.argsort(t[idx], kind="stable")]:
        free = max(free, float(t[i])) + upload_s
        out[i] = free
    return out


def simulate(scheme: Scheme, delays: DelaySource, cfg: SimulateConfig, upload_s: float = 0.0) -> SimResult:
    """Run ``cfg.jobs`` jobs of a FRESH scheme object over ``delays``; returns the virtual-time results.

    ``upload_s`` > 0: each message also crosses the coordinator's inbound link, one at a time
    (:func:`queue_on_link`), so a round closes when the decodable set's messages are in, not just computed.
    """
    wall0 = time.perf_counter()
    n, J = scheme.n, cfg.jobs
    if delays.n != n:
        raise SimulationError(f"delay source has {delays.n} workers, scheme has {n}")
    sj = scheme.jobs
    if sj is not None and sj != J:
        raise SimulationError(f"scheme was built for {sj} jobs but simulate.jobs = {J}")
    T = int(scheme.delay)
    rounds = J + T
    sequential = scheme.uses_straggler_rule()
    rule = (sequential and cfg.close == "straggler-rule") or (not sequential and cfg.plain_close == "straggler-rule")
    nominal = cfg.load_model == "nominal"
    full_load = float(scheme.load())
    durations = np.zeros(rounds)
    stragglers = np.zeros(rounds, dtype=np.int64)
    finish = np.full(J, np.nan)
    wait_all = extended = 0
    now = 0.0
    all_in = np.ones(n, dtype=bool)
    busy = np.zeros(n)  # carry_over: seconds each worker still spends on a stale task when the round starts
    observes = type(scheme).observe_times is not Scheme.observe_times
    for r in range(rounds):
        loads = np.asarray(scheme.worker_loads(r), dtype=np.float64)
        tasked = loads > 0
        if nominal and tasked.any():
            # the authors' accounting: every worker computes the full normalised load in every round that
            # has work, and all of them count for the fastest, the slowest and the straggler rule
            loads = np.full(n, full_load)
            tasked = all_in

        def accepts(arrived: np.ndarray, r: int = r) -> bool:
            return scheme.accepts_mask(r, arrived)

        if not tasked.any():
            arrived, dur = all_in, 0.0
        else:
            t = delays.finish_times(r, loads) + busy
            if upload_s > 0:
                t = queue_on_link(t, tasked, upload_s)
            tt = t[tasked]
            slowest = float(tt.max())
            if rule:
                dur = min((1.0 + cfg.mu) * float(tt.min()), slowest)
                arrived = ~tasked | (t <= dur)
                if not accepts(arrived):
                    extended += 1
                    if cfg.wait == "all":
                        arrived, dur = all_in, slowest
                        wait_all += 1
                    else:
                        order = np.flatnonzero(tasked)[np.argsort(tt, kind="stable")]
                        k0 = int(np.count_nonzero(t[order] <= dur))
                        k, arrived = _first_accepting(accepts, t, tasked, order, k0 + 1)
                        dur = float(t[order[k - 1]])
                        if k == order.size:
                            wait_all += 1
            else:
                # plain codes (decodable) and sequential codes (earliest): the first arrival that may close
                order = np.flatnonzero(tasked)[np.argsort(tt, kind="stable")]
                k, arrived = _first_accepting(accepts, t, tasked, order, 1)
                dur = float(t[order[k - 1]])
            stragglers[r] = int(np.count_nonzero(tasked & ~arrived))
        if cfg.carry_over:
            busy = np.maximum(busy - dur, 0.0) if not tasked.any() else np.where(
                tasked & ~arrived, np.maximum(t - dur, 0.0), np.where(tasked, 0.0, np.maximum(busy - dur, 0.0)))
        newly = scheme.close_round_mask(r, arrived)
        if observes and tasked.any():  # a speed-aware scheme times the round's deliveries (gc-hetero)
            scheme.observe_times(r, {int(w): float(t[w]) for w in np.flatnonzero(arrived & tasked)})
        durations[r] = dur
        now += dur
        for j in newly:
            if 0 <= j < J and np.isnan(finish[j]):
                finish[j] = now
        due = r - T
        if 0 <= due < J and np.isnan(finish[due]):
            raise SimulationError(
                f"{scheme.name} {scheme.params()}: job {due} not decodable at the end of round {r} (its "
                "deadline) although every round conformed or waited; this is a scheme bug"
            )
    return SimResult(
        scheme=scheme.name, params=scheme.params(), load=float(scheme.load()), delay=T, jobs=J, rounds=rounds,
        runtime_s=float(durations.sum()), wait_all_rounds=wait_all, extended_rounds=extended,
        round_durations=durations, job_finish_times=finish, stragglers_per_round=stragglers,
        wall_s=time.perf_counter() - wall0,
    )


def compare(schemes: Mapping[str, Scheme | Callable[[], Scheme]], delays: DelaySource,
            cfg: SimulateConfig) -> dict[str, SimResult]:
    """Simulate several schemes on the same delays (give factories or fresh objects; schemes are stateful)."""
    out = {}
    for label, s in schemes.items():
        out[label] = simulate(s() if callable(s) and not isinstance(s, Scheme) else s, delays, cfg)
    return out
