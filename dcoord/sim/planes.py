"""Per-plane round predictions: the virtual-time simulator's compute per round plus the network model's wire
time (dcoord.sim.network), for ``dcoord simulate``, ``dcoord tune`` and bench/netcluster.py alike."""

from __future__ import annotations

import numpy as np

from dcoord.coding.registry import make_scheme
from dcoord.sim.config import SimulateConfig
from dcoord.sim.engine import DelaySource, SimResult, simulate
from dcoord.sim.network import Network, best_plane, ddp_step_s, predict_planes


def mean_round_s(res: SimResult) -> float:
    """Mean simulated compute per round (the close time of each round's decodable set)."""
    return float(np.mean(res.round_durations)) if res.rounds else 0.0


def ddp_compute_s(n: int, source: DelaySource, cfg: SimulateConfig) -> float:
    """Mean per-round compute of plain DDP on ``source``: every rank computes 1/n of the job and everyone waits
    for the slowest (uncoded waits for all, so its simulated rounds are exactly that)."""
    return mean_round_s(simulate(make_scheme("uncoded", n, jobs=cfg.jobs), source, cfg))


def plane_report(results: dict[str, SimResult], n: int, source: DelaySource, cfg: SimulateConfig, net: Network,
                 planes: tuple[str, ...] = ("tcp", "allreduce")) -> dict:
    """{"schemes": {label: {"compute_s", "round_s": {plane: s}}}, "ddp_step_s", "recommended": {...}}."""
    out: dict = {"network": {"link_gbps": net.link_gbps, "latency_ms": net.latency_ms, "model_mb": net.model_mb,
                             "overhead_ms": net.overhead_ms}, "schemes": {}}
    best = None
    for label, res in results.items():
        c = mean_round_s(res)
        pred = predict_planes(c, n, net, planes)
        out["schemes"][label] = {"compute_s": c, "round_s": pred}
        p = best_plane(pred)
        per_job = pred[p] * res.rounds / max(res.jobs, 1)
        if best is None or per_job < best["per_job_s"]:
            best = {"scheme": label, "plane": p, "round_s": pred[p], "per_job_s": per_job}
    out["ddp_step_s"] = ddp_step_s(ddp_compute_s(n, source, cfg), n, net)
    out["recommended"] = best
    return out


def choice_planes(choices, n: int, jobs: int, source: DelaySource, cfg: SimulateConfig, net: Network,
                  planes: tuple[str, ...] = ("tcp", "allreduce")) -> dict:
    """For `dcoord tune`: every scheme's fastest choice on every plane, and the fastest (scheme, plane) pair.

    A choice's mean compute per round is its simulated runtime over its rounds (jobs + T); its time per job
    on a plane is that round's predicted time x rounds / jobs.
    """
    from dcoord.sim.tune import best_per_scheme

    rows = []
    for c in sorted(best_per_scheme(choices).values(), key=lambda c: (c.runtime_s, c.load)):
        rounds = jobs + c.delay
        compute = c.runtime_s / rounds
        pred = predict_planes(compute, n, net, planes)
        rows.append({"scheme": c.scheme, "params": dict(c.params), "compute_s": compute, "round_s": pred,
                     "per_job_s": {p: v * rounds / jobs for p, v in pred.items()}})
    best = min(((r, p) for r in rows for p in planes), key=lambda rp: rp[0]["per_job_s"][rp[1]])
    return {"network": {"link_gbps": net.link_gbps, "latency_ms": net.latency_ms, "model_mb": net.model_mb,
                        "overhead_ms": net.overhead_ms},
            "schemes": rows, "ddp_step_s": ddp_step_s(ddp_compute_s(n, source, cfg), n, net),
            "recommended": {"scheme": best[0]["scheme"], "params": best[0]["params"], "plane": best[1],
                            "round_s": best[0]["round_s"][best[1]], "per_job_s": best[0]["per_job_s"][best[1]]}}
