"""Injected straggler models: extra per-worker delay for local runs and for the virtual-time simulator.

Every model is a pure function of (seed, round, worker): the delay a worker gets in round r does not depend
on which rounds or workers were asked for before (each round draws from its own generator, seeded from
``SeedSequence(seed, spawn_key=(round,))``), so a worker process and the simulator see the same stragglers.

Models (``InjectConfig.model``), with the extra delay each returns for a worker whose real compute took c s:
- ``none``: 0.
- ``fixed``: the listed ``workers`` are always slow: (slowdown - 1) * c.
- ``bernoulli``: each worker, each round, independently slow with probability ``p``: (slowdown - 1) * c.
- ``gilbert-elliott``: each worker is a two-state Markov chain (good -> bad with ``p_good_to_bad``, bad ->
  good with ``p_bad_to_good``; round 0 drawn from the stationary law), slow while bad: (slowdown - 1) * c.
  Bursty stragglers, the case sequential gradient coding is designed for.
- ``shifted-exponential``: shift + Exp(rate) seconds for every worker every round (rate in 1/s, mean
  1/rate); the classic straggler model of the coded-computing literature, added to the real compute.
- ``pareto``: scale * Lomax(shape) seconds, i.e. a Pareto(shape, scale) time minus its minimum ``scale``,
  so the fastest a worker can be is its real compute; heavy-tailed for small shape.
- ``speeds``: a mixed cluster: worker i's compute is stretched by max(speeds) / speeds[i], i.e.
  (max(speeds) / speeds[i] - 1) * c. ``speeds`` also combines with every other model: the stretch is
  applied first and the other model sees the stretched compute (a slow machine that also straggles).
- ``trace``: replay a measured CSV (rows = rounds, columns = workers, seconds): trace[r mod rows, i] *
  ``scale`` seconds, added to the real compute. Rounds wrap around; worker i reads column i.

Every model's extra delay is capped at ``MAX_INJECTED_DELAY_S`` (one day) per round, and its parameters are
bounded (slowdown <= 1000, shift and scale <= 3600 s, rate >= 0.001/s): a worker slower than that is a lost
worker, which a kill tests better than a sleep.
"""

from __future__ import annotations

import csv
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from dcoord.configbase import MAX_WORKERS, ConfigModel, FilePath, Seed
from dcoord.errors import StragglerError

MODELS = ("none", "fixed", "bernoulli", "gilbert-elliott", "shifted-exponential", "pareto", "trace", "speeds")


#: the largest injected slowdown: a worker 1000x slower than its compute is a lost worker (test that instead)
MAX_SLOWDOWN = 1000.0
#: the largest injected delay parameter, seconds (shift; trace and pareto scale): an hour per round
MAX_DELAY_S = 3600.0
#: the longest delay a model injects in one round (one day): a longer one is a lost worker, test that with a kill
MAX_INJECTED_DELAY_S = 86_400.0
#: the smallest shifted-exponential rate, 1/s (a mean extra delay of at most 1000 s)
MIN_RATE = 1e-3


class InjectConfig(ConfigModel):
    """The ``inject:`` section of a job config: which straggler model to inject, and its parameters."""

    model: Literal["none", "fixed", "bernoulli", "gilbert-elliott", "shifted-exponential", "pareto", "trace",
                   "speeds"] = Field(
        "none", description="which straggler model to inject in local runs"
    )
    workers: list[int] = Field([], description="fixed: the slow workers' ids")
    slowdown: float = Field(1.0, description="fixed, bernoulli, gilbert-elliott: a slow worker takes this many times "
                            f"its compute time (1..{MAX_SLOWDOWN:g})")
    p: float | None = Field(None, description="bernoulli: probability a worker is slow in a round")
    p_good_to_bad: float | None = Field(None, description="gilbert-elliott: chance a fast worker turns slow")
    p_bad_to_good: float | None = Field(None, description="gilbert-elliott: chance a slow worker turns fast")
    shift: float | None = Field(None, description=f"shifted-exponential: the fixed part of the delay, seconds (0..{MAX_DELAY_S:g})")
    rate: float | None = Field(None, description=f"shifted-exponential: rate of the exponential part, 1/seconds (>= {MIN_RATE:g})")
    shape: float | None = Field(None, description="pareto: tail index")
    scale: float = Field(1.0, description=f"pareto: scale, seconds; trace: multiply the trace's times by this (<= {MAX_DELAY_S:g})")
    path: FilePath | None = Field(None, description="trace: CSV of delays in seconds (rows = rounds, columns = workers)")
    seed: Seed | None = Field(None, description="seed of the injected delays (null = the job seed)")
    speeds: list[float] | None = Field(
        None, description="speeds (or with any model): each worker's relative speed; its compute is stretched by "
        "max(speeds) / speed (emulates a mixed cluster)")

    @field_validator("speeds")
    @classmethod
    def _speeds(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v or not all(math.isfinite(x) and x > 0 for x in v):
            raise StragglerError(f"inject.speeds must be finite speeds > 0, one per worker (got {v})")
        if max(v) / min(v) > MAX_SLOWDOWN:
            raise StragglerError(f"inject.speeds: the slowest worker is {max(v) / min(v):g}x slower than the fastest, "
                                 f"over {MAX_SLOWDOWN:g}; a worker that slow is a lost worker: kill it instead")
        return v

    @field_validator("workers")
    @classmethod
    def _worker_ids(cls, v: list[int]) -> list[int]:
        bad = [w for w in v if not 0 <= w < MAX_WORKERS]
        if bad:
            raise StragglerError(f"inject.workers must be worker ids >= 0 and < {MAX_WORKERS} (got {bad})")
        return sorted(set(v))

    @field_validator("slowdown")
    @classmethod
    def _slowdown(cls, v: float) -> float:
        if not (math.isfinite(v) and 1.0 <= v <= MAX_SLOWDOWN):
            raise StragglerError(f"inject.slowdown must be a factor >= 1 and <= {MAX_SLOWDOWN:g} (got {v:g}); a worker "
                                 "that slow is a lost worker: kill it instead")
        return v

    @field_validator("p", "p_good_to_bad", "p_bad_to_good")
    @classmethod
    def _probability(cls, v: float | None, info) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise StragglerError(f"inject.{info.field_name} must be in [0, 1] (got {v})")
        return v

    @field_validator("shift")
    @classmethod
    def _shift(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= MAX_DELAY_S):
            raise StragglerError(f"inject.shift must be seconds from 0 to {MAX_DELAY_S:g} (got {v:g})")
        return v

    @field_validator("rate", "shape", "scale")
    @classmethod
    def _positive(cls, v: float | None, info) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0.0):
            raise StragglerError(f"inject.{info.field_name} must be > 0 (got {v})")
        if info.field_name == "rate" and v is not None and v < MIN_RATE:
            raise StragglerError(f"inject.rate must be >= {MIN_RATE:g} per second, a mean delay of at most "
                                 f"{1 / MIN_RATE:g} s (got {v:g})")
        if info.field_name == "scale" and v > MAX_DELAY_S:
            raise StragglerError(f"inject.scale must be at most {MAX_DELAY_S:g} (got {v:g})")
        return v

    @model_validator(mode="after")
    def _required_per_model(self) -> InjectConfig:
        need = {
            "fixed": ["workers"],
            "bernoulli": ["p"],
            "gilbert-elliott": ["p_good_to_bad", "p_bad_to_good"],
            "shifted-exponential": ["rate"],
            "pareto": ["shape"],
            "trace": ["path"],
            "speeds": ["speeds"],
        }.get(self.model, [])
        for name in need:
            if getattr(self, name) in (None, []):
                raise StragglerError(f"inject.{name} is required for inject.model '{self.model}'")
        return self


def _round_rng(seed: int, round: int) -> np.random.Generator:
    """The generator of one round: independent of every other round and of call order."""
    if round < 0:
        raise StragglerError(f"round must be >= 0 (got {round})")
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(round,)))


class StragglerModel(ABC):
    """Extra delay per worker per round; pure in (seed, round, worker)."""

    name: str = "none"

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed

    def extra_delay(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        """Seconds each of the n workers additionally sleeps in ``round`` given its real compute times, at most
        MAX_INJECTED_DELAY_S (a heavy tail's rare draw must not become a sleep no clock can hold, or inf)."""
        return np.minimum(self._draw(round, compute_s), MAX_INJECTED_DELAY_S)

    @abstractmethod
    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        """The model's extra delay, before the cap."""

    def times(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        """Finish time of every worker: its compute plus the injected delay."""
        c = self._compute(compute_s)
        return c + self.extra_delay(round, c)

    def _compute(self, compute_s: np.ndarray | float) -> np.ndarray:
        c = np.broadcast_to(np.asarray(compute_s, dtype=np.float64), (self.n,))
        return c


class NoStragglers(StragglerModel):
    name = "none"

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        return np.zeros(self.n)


class FixedStragglers(StragglerModel):
    """The same workers are slow in every round (a misconfigured or overloaded machine)."""

    name = "fixed"

    def __init__(self, n: int, workers: list[int], slowdown: float, seed: int = 0) -> None:
        super().__init__(n, seed)
        self.mask = np.zeros(n, dtype=bool)
        self.mask[list(workers)] = True
        self.slowdown = slowdown

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        return np.where(self.mask, (self.slowdown - 1.0) * self._compute(compute_s), 0.0)


class BernoulliStragglers(StragglerModel):
    """Independent stragglers: every worker slow with probability p in every round."""

    name = "bernoulli"

    def __init__(self, n: int, p: float, slowdown: float, seed: int = 0) -> None:
        super().__init__(n, seed)
        self.p, self.slowdown = p, slowdown

    def slow(self, round: int) -> np.ndarray:
        return _round_rng(self.seed, round).random(self.n) < self.p

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        return np.where(self.slow(round), (self.slowdown - 1.0) * self._compute(compute_s), 0.0)


class GilbertElliottStragglers(StragglerModel):
    """Bursty stragglers: a good/bad Markov chain per worker; slow while bad.

    States are computed by iterating rounds from 0 (each transition drawn from that round's generator),
    with checkpoints every ``_EVERY`` rounds so any round is reachable in bounded time and memory.
    """

    name = "gilbert-elliott"
    _EVERY = 64

    def __init__(self, n: int, p_good_to_bad: float, p_bad_to_good: float, slowdown: float, seed: int = 0):
        super().__init__(n, seed)
        self.p_gb, self.p_bg, self.slowdown = p_good_to_bad, p_bad_to_good, slowdown
        total = p_good_to_bad + p_bad_to_good
        pi_bad = p_good_to_bad / total if total > 0 else 0.0
        self._checkpoints: dict[int, np.ndarray] = {0: _round_rng(seed, 0).random(n) < pi_bad}
        self._last: tuple[int, np.ndarray] = (0, self._checkpoints[0])

    def _step(self, state: np.ndarray, round: int) -> np.ndarray:
        u = _round_rng(self.seed, round).random(self.n)
        return np.where(state, u >= self.p_bg, u < self.p_gb)

    def bad(self, round: int) -> np.ndarray:
        """Which workers are in the bad state in ``round``."""
        if round < 0:
            raise StragglerError(f"round must be >= 0 (got {round})")
        r = max(k for k in self._checkpoints if k <= round)
        state = self._checkpoints[r]
        last_r, last_s = self._last
        if r < last_r <= round:
            r, state = last_r, last_s
        while r < round:
            r += 1
            state = self._step(state, r)
            if r % self._EVERY == 0:
                self._checkpoints.setdefault(r, state)
        self._last = (r, state)
        return state

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        return np.where(self.bad(round), (self.slowdown - 1.0) * self._compute(compute_s), 0.0)


class ShiftedExponentialStragglers(StragglerModel):
    """shift + Exp(rate) seconds added to every worker in every round."""

    name = "shifted-exponential"

    def __init__(self, n: int, shift: float, rate: float, seed: int = 0) -> None:
        super().__init__(n, seed)
        self.shift, self.rate = shift, rate

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        return self.shift + _round_rng(self.seed, round).exponential(1.0 / self.rate, self.n)


class ParetoStragglers(StragglerModel):
    """Heavy-tailed delay: scale * Lomax(shape) seconds (a Pareto(shape, scale) time minus ``scale``)."""

    name = "pareto"

    def __init__(self, n: int, shape: float, scale: float, seed: int = 0) -> None:
        super().__init__(n, seed)
        self.shape, self.scale = shape, scale

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        return self.scale * _round_rng(self.seed, round).pareto(self.shape, self.n)


class TraceStragglers(StragglerModel):
    """Replay measured per-worker times: trace[round mod rows, worker] * scale seconds."""

    name = "trace"

    def __init__(self, n: int, trace: np.ndarray, scale: float = 1.0, seed: int = 0, source: str = "trace"):
        super().__init__(n, seed)
        trace = np.asarray(trace, dtype=np.float64)
        if trace.ndim != 2 or trace.shape[0] == 0:
            raise StragglerError(f"{source}: a trace needs at least one row of per-worker times")
        if trace.shape[1] < n:
            raise StragglerError(
                f"{source}: the trace has {trace.shape[1]} columns (workers) but the job has {n} workers; "
                f"use a trace with >= {n} columns or fewer workers"
            )
        self.trace = trace[:, :n]
        self.scale = scale

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        if round < 0:
            raise StragglerError(f"round must be >= 0 (got {round})")
        return self.trace[round % self.trace.shape[0]] * self.scale


def load_trace_csv(path: str | Path) -> np.ndarray:
    """Read a straggler trace (rows = rounds, columns = workers, seconds >= 0) as a float64 matrix.

    Errors are ValueError naming the file and the 1-based row, so a bad trace is fixed in one look.
    """
    p = Path(path)
    if p.is_dir():
        raise StragglerError(f"trace file {p} is a directory; give a CSV file (rows = rounds, columns = workers)")
    if not p.is_file():
        raise StragglerError(f"trace file {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StragglerError(f"trace file {p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                             f"{exc.start}); a trace is a CSV of numbers") from None
    except OSError as exc:
        raise StragglerError(f"trace file {p}: cannot read it ({exc.strerror})") from None
    rows: list[list[float]] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not cells or all(c == "" for c in cells):
            continue
        try:
            vals = [float(c) for c in cells]
        except ValueError:
            bad = next(c for c in cells if not _is_float(c))
            raise StragglerError(f"trace file {p} row {lineno}: non-numeric value {bad!r}") from None
        for v in vals:
            if not math.isfinite(v) or v < 0:
                raise StragglerError(f"trace file {p} row {lineno}: times must be finite seconds >= 0 (got {v})")
        if rows and len(vals) != len(rows[0]):
            raise StragglerError(
                f"trace file {p} row {lineno}: {len(vals)} columns, expected {len(rows[0])} like row 1"
            )
        rows.append(vals)
    if not rows:
        raise StragglerError(f"trace file {p} has no rows")
    return np.asarray(rows, dtype=np.float64)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


class SpeedStragglers(StragglerModel):
    """A mixed cluster: worker i computes at speeds[i] / max(speeds) of the fastest; ``base`` (another model)
    then adds its delay on top of the stretched compute."""

    name = "speeds"

    def __init__(self, n: int, speeds: list[float], base: StragglerModel | None = None, seed: int = 0) -> None:
        super().__init__(n, seed)
        if len(speeds) != n:
            raise StragglerError(f"inject.speeds has {len(speeds)} values but the job has {n} workers; give one "
                                 "speed per worker")
        c = np.asarray(speeds, dtype=np.float64)
        self.stretch = c.max() / c
        self.base = base

    def _draw(self, round: int, compute_s: np.ndarray) -> np.ndarray:
        c = self._compute(compute_s)
        out = (self.stretch - 1.0) * c
        if self.base is not None:
            out = out + self.base._draw(round, self.stretch * c)
        return out


def make_straggler_model(cfg: InjectConfig, n: int, seed: int) -> StragglerModel:
    """Build the configured model for n workers; ``cfg.seed`` overrides the job seed when given; ``speeds``
    (with any model) stretches every worker's compute first."""
    if n < 1:
        raise StragglerError(f"workers must be >= 1 (got {n})")
    if cfg.speeds is not None:
        sd = cfg.seed if cfg.seed is not None else seed
        base = None if cfg.model in ("none", "speeds") else _base_model(cfg, n, seed)
        return SpeedStragglers(n, cfg.speeds, base, sd)
    return _base_model(cfg, n, seed)


def _base_model(cfg: InjectConfig, n: int, seed: int) -> StragglerModel:
    sd = cfg.seed if cfg.seed is not None else seed
    if cfg.model in ("none", "speeds"):
        return NoStragglers(n, sd)
    if cfg.model == "fixed":
        too_big = [w for w in cfg.workers if w >= n]
        if too_big:
            raise StragglerError(f"inject.workers {too_big} out of range: there are {n} workers (ids 0..{n - 1})")
        return FixedStragglers(n, cfg.workers, cfg.slowdown, sd)
    if cfg.model == "bernoulli":
        return BernoulliStragglers(n, float(cfg.p), cfg.slowdown, sd)  # type: ignore[arg-type]
    if cfg.model == "gilbert-elliott":
        return GilbertElliottStragglers(n, float(cfg.p_good_to_bad), float(cfg.p_bad_to_good),  # type: ignore[arg-type]
                                        cfg.slowdown, sd)
    if cfg.model == "shifted-exponential":
        return ShiftedExponentialStragglers(n, float(cfg.shift or 0.0), float(cfg.rate), sd)  # type: ignore[arg-type]
    if cfg.model == "pareto":
        return ParetoStragglers(n, float(cfg.shape), cfg.scale, sd)  # type: ignore[arg-type]
    if cfg.model == "trace":
        trace = load_trace_csv(cfg.path)  # type: ignore[arg-type]
        return TraceStragglers(n, trace, cfg.scale, sd, source=f"trace file {cfg.path}")
    raise StragglerError(f"inject.model must be one of {', '.join(MODELS)} (got {cfg.model!r})")
