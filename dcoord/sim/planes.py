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
from dcoord.errors import ConfigError
from dcoord.sim.config import SimulateConfig
from dcoord.sim.engine import DelaySource, SimResult, simulate
from dcoord.sim.network import Network, ddp_step_s, message_s, round_s


# -- the registered planes, by family (the network model itself knows only "star" and "collective") ------
def star_planes() -> tuple[str, ...]:
    """Registered planes that route every payload through the coordinator (and run without a launcher)."""
    from dcoord.runtime.transport.registry import get_plane, plane_names

    return tuple(p for p in plane_names() if not get_plane(p).collective and "none" in get_plane(p).runs_under)


def collective_planes() -> tuple[str, ...]:
    """Registered planes whose workers decode by all-reduce among themselves."""
    from dcoord.runtime.transport.registry import get_plane, plane_names

    return tuple(p for p in plane_names() if get_plane(p).collective)


def default_planes() -> tuple[str, ...]:
    """What the model compares unless told: the default star plane without a launcher, and the collective ones."""
    from dcoord.runtime.transport.registry import get_plane

    return (max(star_planes(), key=lambda p: get_plane(p).speed), *collective_planes())


def plane_family(plane: str) -> str:
    """``star`` or ``collective`` for a registered plane (or a family name); unknown planes are refused."""
    if plane in star_planes() or plane == "star":
        return "star"
    if plane in collective_planes() or plane == "collective":
        return "collective"
    raise ValueError(f"unknown plane {plane!r}; the network model knows {', '.join(star_planes() + collective_planes())}")


def check_planes(planes, what: str) -> tuple[str, ...]:
    """The planes asked for (None: the defaults), each one the model knows; else a one-line ConfigError."""
    if planes is None:
        return default_planes()
    planes = tuple(planes)
    known = star_planes() + collective_planes()
    bad = [p for p in planes if p not in known]
    if bad or not planes:
        raise ConfigError(f"{what}: unknown plane(s) {bad or list(planes)}; choose from {', '.join(known)}")
    return planes


def plane_round_s(plane: str, close_s: float, n: int, net: Network) -> float:
    """Predicted round time on ``plane`` from the round's close time (network.round_s by its family)."""
    return round_s(plane_family(plane), close_s, n, net)


def predict_planes(close_s: dict[str, float], n: int, net: Network, planes: tuple[str, ...] | None = None) -> dict:
    """{plane: predicted round seconds} from each plane family's close time ({"star": s, "collective": s})."""
    return {p: plane_round_s(p, close_s[plane_family(p)], n, net) for p in planes or default_planes()}


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
                  planes: tuple[str, ...] | None = None) -> dict:
    """For `dcoord tune`: every scheme's fastest choice (its parameters in the label) on every plane."""
    from dcoord.sim.tune import best_per_scheme

    factories = {}
    for c in sorted(best_per_scheme(choices).values(), key=lambda c: (c.runtime_s, c.load)):
        label = c.scheme + (f" ({c.param_str})" if c.params else "")
        factories[label] = lambda c=c: make_scheme(c.scheme, n, jobs=jobs, **c.kwargs)
    return plane_rows(factories, n, source, cfg, net, planes)
