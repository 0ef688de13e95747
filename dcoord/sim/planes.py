"""Per-plane round predictions: the virtual-time simulator's close times plus the network model's wire time
(dcoord.sim.network), for ``dcoord simulate``, ``dcoord tune`` and bench/netcluster.py alike.

A scheme is simulated twice on the same delays: as computed (the collective plane closes on the decodable
set's compute) and with every message queued on the coordinator's inbound link (a star plane closes when the
decodable set's messages are in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from dcoord.coding.base import Scheme
from dcoord.coding.registry import make_scheme
from dcoord.sim.config import SimulateConfig
from dcoord.sim.engine import DelaySource, SimResult, simulate
from dcoord.sim.network import Network, ddp_step_s, message_s, plane_family, predict_planes


def mean_round_s(res: SimResult) -> float:
    """Mean simulated duration of a round (its close time)."""
    return float(np.mean(res.round_durations)) if res.rounds else 0.0


def close_times(factory: Callable[[], Scheme], source: DelaySource, cfg: SimulateConfig, net: Network,
                planes: Iterable[str]) -> tuple[dict[str, float], SimResult]:
    """{"star": s, "collective": s}: mean close time per plane family (only those asked), and a result."""
    out: dict[str, float] = {}
    res = None
    for fam in sorted({plane_family(p) for p in planes}):
        res = simulate(factory(), source, cfg, upload_s=message_s(net) if fam == "star" else 0.0)
        out[fam] = mean_round_s(res)
    assert res is not None
    return out, res


def ddp_compute_s(n: int, source: DelaySource, cfg: SimulateConfig) -> float:
    """Mean per-round compute of plain DDP on ``source``: every rank computes 1/n of the job and everyone waits
    for the slowest (uncoded waits for all, so its simulated rounds are exactly that)."""
    return mean_round_s(simulate(make_scheme("uncoded", n, jobs=cfg.jobs), source, cfg))


def plane_rows(factories: dict[str, Callable[[], Scheme]], n: int, source: DelaySource, cfg: SimulateConfig,
               net: Network, planes: tuple[str, ...]) -> dict:
    """Per-plane predictions for every scheme (label -> factory of a fresh scheme), the DDP step, and the
    (scheme, plane) with the least predicted time per job."""
    rows: dict[str, dict] = {}
    best = None
    for label, factory in factories.items():
        close, res = close_times(factory, source, cfg, net, planes)
        pred = predict_planes(close, n, net, planes)
        per_job = {p: v * res.rounds / max(res.jobs, 1) for p, v in pred.items()}
        rows[label] = {"close_s": close, "round_s": pred, "per_job_s": per_job}
        for p in planes:
            if best is None or per_job[p] < best["per_job_s"]:
                best = {"scheme": label, "plane": p, "round_s": pred[p], "per_job_s": per_job[p]}
    return {"network": {"link_gbps": net.link_gbps, "latency_ms": net.latency_ms, "model_mb": net.model_mb,
                        "overhead_ms": net.overhead_ms},
            "schemes": rows, "ddp_step_s": ddp_step_s(ddp_compute_s(n, source, cfg), n, net), "recommended": best}


def choice_planes(choices, n: int, jobs: int, source: DelaySource, cfg: SimulateConfig, net: Network,
                  planes: tuple[str, ...] = ("tcp", "allreduce")) -> dict:
    """For `dcoord tune`: every scheme's fastest choice (its parameters in the label) on every plane."""
    from dcoord.sim.tune import best_per_scheme

    factories = {}
    for c in sorted(best_per_scheme(choices).values(), key=lambda c: (c.runtime_s, c.load)):
        label = c.scheme + (f" ({c.param_str})" if c.params else "")
        factories[label] = lambda c=c: make_scheme(c.scheme, n, jobs=jobs, **c.kwargs)
    return plane_rows(factories, n, source, cfg, net, planes)
