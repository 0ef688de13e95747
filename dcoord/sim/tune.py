"""Probe-then-pick parameter tuning (the SGC authors' method): simulate every scheme and parameter tuple on a
measured delay profile and keep the fastest.

Grids (documented because they decide what "best" means; each is declared beside its scheme's class and
read from the registry):
- gc-cyclic / gc-binary / ignore-stragglers: s over ``s_grid`` (default 1..8 then roughly geometric up to n/2; larger s
  only adds load); gc-fr: the same grid restricted to (s+1) | n; uncoded: no parameter.
- sr-sgc: B = 1..max_delay (T = B), W = 1 + k B for W <= max_window, lambda over ``lambda_grid``.
- m-sgc: 1 <= B < W with T = W-2+B <= max_delay, lambda over ``lambda_grid``.
- lambda_grid default: 1..8, then roughly geometric up to n (about 25 values at n = 256).
Runtime is the virtual time to finish ``jobs`` jobs; ties are broken by lower load, then by the order above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcoord.coding.base import GridSpace, SchemeError
from dcoord.coding.registry import make_scheme, registered_schemes
from dcoord.sim.config import SimulateConfig
from dcoord.sim.engine import DelaySource, TraceDelays, simulate
from dcoord.stragglers import load_trace_csv


def default_schemes() -> tuple[str, ...]:
    """The schemes the tuner tries by default: every registered scheme with a grid marked tunable."""
    return tuple(k for k, v in registered_schemes().items() if v.tunable and v.grid is not None)


def __getattr__(name: str):  # TUNABLE stays importable and always current
    if name == "TUNABLE":
        return default_schemes()
    raise AttributeError(name)


@dataclass(frozen=True)
class Choice:
    """One simulated (scheme, parameters) candidate."""

    scheme: str
    params: tuple[tuple[str, int], ...]  # e.g. (("B", 1), ("W", 2), ("lambda", 27)); () for uncoded
    runtime_s: float
    load: float
    delay: int
    wait_all_rounds: int

    @property
    def kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``make_scheme`` (lambda -> lam)."""
        return {("lam" if k == "lambda" else k): v for k, v in self.params}

    @property
    def param_str(self) -> str:
        """Parameters as text, e.g. B=1, W=2, lambda=27 ("-" when there are none)."""
        return ", ".join(f"{k}={v}" for k, v in self.params) or "-"

    def row(self) -> str:
        return (f"{self.scheme:<12} {self.param_str:<24} T={self.delay:<2} load={self.load:.6f} "
                f"runtime={self.runtime_s:10.3f}s wait-all={self.wait_all_rounds}")

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "params": dict(self.params), "runtime_s": self.runtime_s,
                "load": self.load, "delay": self.delay, "wait_all_rounds": self.wait_all_rounds}


def default_grid(n: int, points: int = 18, small: int = 8) -> list[int]:
    """1..small, then about ``points`` roughly geometric values up to n."""
    vals = set(range(1, min(small, n) + 1))
    if n > small:
        vals.update(int(round(x)) for x in np.geomspace(small, n, points))
    return sorted(v for v in vals if 1 <= v <= n)


def candidates(n: int, max_delay: int, schemes: Iterable[str] | None = None, lambda_grid: list[int] | None = None,
               s_grid: list[int] | None = None, max_window: int = 10) -> Iterator[tuple[str, dict[str, int]]]:
    """Every (scheme, params) tuple the tuner simulates."""
    schemes = default_schemes() if schemes is None else schemes
    lams = sorted(set(lambda_grid or default_grid(n)))
    ss = sorted(set(s_grid or [s for s in default_grid(n // 2 or 1) if s < n]))
    space = GridSpace(n, max_delay, tuple(lams), tuple(ss), max_window)
    for name in schemes:
        spec = registered_schemes().get(name)
        if spec is None or spec.grid is None:
            tunable = [k for k, v in registered_schemes().items() if v.grid is not None]
            raise SchemeError(f"cannot tune scheme {name!r}; tunable: {', '.join(tunable)}")
        for params in spec.grid(space):
            yield name, dict(params)


def tune_source(n: int, source: DelaySource, jobs: int, max_delay: int, *, mu: float = 1.0,
                wait: str = "all", plain_close: str = "decodable", close: str = "straggler-rule",
                load_model: str = "actual", schemes: Iterable[str] | None = None,
                lambda_grid: list[int] | None = None,
                s_grid: list[int] | None = None, max_window: int = 10, top: int | None = None) -> list[Choice]:
    """Simulate every candidate on ``source``; all choices (or the ``top`` fastest), fastest first.

    ``close`` is the sequential codes' close rule, ``plain_close`` the plain codes' (see SimulateConfig).
    """
    cfg = SimulateConfig(jobs=jobs, mu=mu, wait=wait, plain_close=plain_close, close=close,  # type: ignore[arg-type]
                         load_model=load_model)  # type: ignore[arg-type]
    out = []
    for name, p in candidates(n, max_delay, schemes, lambda_grid, s_grid, max_window):
        kw = {("lam" if k == "lambda" else k): v for k, v in p.items()}
        try:
            scheme = make_scheme(name, n, jobs=jobs, **kw)
        except SchemeError:
            continue
        res = simulate(scheme, source, cfg)
        out.append(Choice(name, tuple(p.items()), res.runtime_s, res.load, res.delay, res.wait_all_rounds))
    out.sort(key=lambda c: (c.runtime_s, c.load))
    return out if top is None else out[:top]


def tune(profile_csv: Path, jobs: int, max_delay: int, n: int | None = None, base_comp: float = 1.0,
         mu: float = 1.0, top: int | None = 5, *, schemes: Iterable[str] | None = None,
         lambda_grid: list[int] | None = None, wait: str = "all", plain_close: str = "decodable",
         skip_rows: int = 0, max_window: int = 10) -> list[Choice]:
    """Rank every scheme and parameter tuple by simulated runtime on a load-0 delay profile.

    ``profile_csv``: per-worker times at load 0 (rows = rounds); d(L) = d(0) + L * base_comp. ``n`` defaults
    to the profile's column count. Returns the ``top`` fastest (all when top is None).
    """
    d0 = load_trace_csv(profile_csv)[skip_rows:]
    n = d0.shape[1] if n is None else n
    source = TraceDelays(d0, n, base_comp, name=f"trace file {profile_csv}")
    return tune_source(n, source, jobs, max_delay, mu=mu, wait=wait, plain_close=plain_close, schemes=schemes,
                       lambda_grid=lambda_grid, max_window=max_window, top=top)


def best_per_scheme(choices: Iterable[Choice]) -> dict[str, Choice]:
    """The fastest choice of every scheme (input in any order)."""
    best: dict[str, Choice] = {}
    for c in choices:
        b = best.get(c.scheme)
        if b is None or (c.runtime_s, c.load) < (b.runtime_s, b.load):
            best[c.scheme] = c
    return best


def estimate_base_comp(profile_l0: Path | np.ndarray, profile_l1: Path | np.ndarray, load0: float = 0.0,
                       load1: float = 1.0, skip_rows: int = 0) -> float:
    """Seconds per full job gradient from two probes of the same workers at two loads (the authors' method):
    (mean time at load1 - mean time at load0) / (load1 - load0). Clipped at 0."""
    a = profile_l0 if isinstance(profile_l0, np.ndarray) else load_trace_csv(profile_l0)
    b = profile_l1 if isinstance(profile_l1, np.ndarray) else load_trace_csv(profile_l1)
    if math.isclose(load0, load1):
        raise ValueError("estimate_base_comp needs two different loads")
    return max(0.0, float((b[skip_rows:].mean() - a[skip_rows:].mean()) / (load1 - load0)))


def format_choices(choices: Iterable[Choice]) -> str:
    """One line per choice, ready to print."""
    return "\n".join(f"{i + 1:>3}. {c.row()}" for i, c in enumerate(choices))
