"""Virtual-time simulation of the coding schemes: the same policy objects the coordinator drives.

``simulate_job`` is the entry point for ``dcoord simulate``: plain inputs in (workers, the ``coding`` and
``simulate`` sections, optional ``inject`` section, seed), ``simulation.json`` and ``simulation.png`` out.
Schemes named in ``compare`` are tuned on the same delays (``tune_source``: every parameter tuple of the
grid, fastest kept), except schemes without parameters (``uncoded``) and those registered as not tunable
(``ignore-stragglers``: biased, so "fastest" is meaningless; it uses the job's ``coding.stragglers`` when > 0, else 5% of the workers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dcoord.coding.base import SchemeError
from dcoord.coding.registry import make_scheme, scheme_names, scheme_spec
from dcoord.sim.config import SimulateConfig
from dcoord.sim.engine import (
    DelaySource,
    ModelDelays,
    SimResult,
    SimulationError,
    TraceDelays,
    compare,
    make_delay_source,
    simulate,
)
from dcoord.stragglers import InjectConfig

__all__ = [
    "DelaySource", "ModelDelays", "SimResult", "SimulateConfig", "SimulationError", "TraceDelays", "compare",
    "make_delay_source", "scheme_args", "simulate", "simulate_job",
]

_CODING_KEYS = {"stragglers": "s", "s": "s", "B": "B", "W": "W", "lambda": "lam", "lam": "lam", "models": "models",
                "speeds": "speeds"}


def scheme_args(coding: Mapping[str, Any] | Any) -> tuple[str, dict[str, int]]:
    """(scheme name, make_scheme keyword arguments) from a ``coding:`` section (dict or pydantic model).

    Only the scheme parameters are read (stragglers/s, B, W, lambda/lam, models); the section's other keys
    are runtime settings, validated by the job config.
    """
    if not isinstance(coding, Mapping):
        coding = coding.model_dump(by_alias=True) if hasattr(coding, "model_dump") else vars(coding)
    c = dict(coding)
    name = c.pop("scheme", None)
    if name not in scheme_names():
        raise SchemeError(f"coding.scheme must be one of {', '.join(scheme_names())} (got {name!r})")
    kw: dict[str, int] = {}
    for key, val in c.items():
        target = _CODING_KEYS.get(key)
        if val is not None and target is not None:  # other keys are runtime settings (mu, wait, dtype, ...)
            kw[target] = val
    return name, kw


def _coding_close(coding: Mapping[str, Any] | Any) -> str | None:
    """``coding.close`` (the sequential codes' close rule) from a dict or a pydantic section, if set."""
    if isinstance(coding, Mapping):
        return coding.get("close")
    return getattr(coding, "close", None)


def _tuned(name: str, n: int, source: DelaySource, cfg: SimulateConfig, coding_kw: dict) -> tuple[dict, bool]:
    from dcoord.sim.tune import tune_source

    spec = scheme_spec(name)
    if not spec.params:  # nothing to tune
        return {}, False
    if not spec.tunable:  # e.g. ignore-stragglers: biased, so "fastest" means nothing
        s = coding_kw.get("s") or max(1, math.ceil(0.05 * n))
        return {"s": min(int(s), n - 1)}, False
    best = tune_source(n, source, cfg.jobs, cfg.max_delay, mu=cfg.mu, wait=cfg.wait,
                       plain_close=cfg.plain_close, close=cfg.close, load_model=cfg.load_model, schemes=[name],
                       lambda_grid=cfg.lambda_grid, top=1)
    if not best:
        raise SchemeError(f"--compare {name}: no valid parameters for {n} workers and max delay {cfg.max_delay}")
    return best[0].kwargs, True


def simulate_job(n: int, coding: Mapping[str, Any] | Any, simulate_cfg: SimulateConfig | Mapping[str, Any] | None,
                 out: Path, compare: Iterable[str] | str | None = None,
                 inject: InjectConfig | Mapping[str, Any] | None = None, seed: int = 0,
                 plot: bool = True) -> dict:
    """Simulate the configured scheme (and the ``compare`` schemes, tuned) and write the report.

    Writes ``out/simulation.json`` ({"schemes": {label: {runtime_s, wait_all_rounds, load, params, ...}},
    plus the inputs) and ``out/simulation.png``; returns the JSON data.
    """
    from dcoord.sim.report import plot_simulation, write_json

    t0 = time.perf_counter()
    cfg = simulate_cfg if isinstance(simulate_cfg, SimulateConfig) else SimulateConfig.model_validate(
        dict(simulate_cfg or {}))
    close = _coding_close(coding)
    if close is not None and "close" not in cfg.model_fields_set:  # coding.close drives the simulator too
        cfg = cfg.model_copy(update={"close": close})
    inj = inject if isinstance(inject, InjectConfig) or inject is None else InjectConfig.model_validate(
        dict(inject))
    planes = None
    if cfg.network is not None:  # checked before anything runs or is written
        from dcoord.sim.planes import check_planes

        planes = check_planes(cfg.network.planes, "simulate.network.planes")
    source = make_delay_source(n, cfg, inj, seed)
    name, kw = scheme_args(coding)
    results: dict[str, SimResult] = {name: simulate(make_scheme(name, n, jobs=cfg.jobs, **kw), source, cfg)}
    tuned_flags = {name: False}
    factories = {name: (name, kw)}  # label -> make_scheme arguments, for the network model
    if isinstance(compare, str):
        compare = [c.strip() for c in compare.split(",") if c.strip()]
    for other in compare or []:
        if other not in scheme_names():
            raise SchemeError(f"--compare {other!r}: unknown scheme; allowed: {', '.join(scheme_names())}")
        params, tuned = _tuned(other, n, source, cfg, kw)
        label = other if other not in results else f"{other} (tuned)"
        if label in results:
            continue
        results[label] = simulate(make_scheme(other, n, jobs=cfg.jobs, **params), source, cfg)
        tuned_flags[label] = tuned
        factories[label] = (other, params)
    out = Path(out)
    data = {
        "n": n,
        "seed": seed,
        "simulate": cfg.model_dump(mode="json"),
        "delays": source.describe(),
        "schemes": {k: {**r.to_dict(), "tuned": tuned_flags[k]} for k, r in results.items()},
        "wall_s": time.perf_counter() - t0,
    }
    if cfg.network is not None:
        from dcoord.sim.planes import plane_rows

        data["network"] = plane_rows({k: (lambda f=f: make_scheme(f[0], n, jobs=cfg.jobs, **f[1]))
                                      for k, f in factories.items()}, n, source, cfg, cfg.network.model(),
                                     planes)
    write_json(out / "simulation.json", data)
    if plot:
        plot_simulation(results, out / "simulation.png", title=f"{n} workers, {cfg.jobs} jobs")
    return data
