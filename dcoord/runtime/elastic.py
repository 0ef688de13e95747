"""Elastic membership (runtime.elastic): shrink the code to the workers present, grow it back when they return.

Called by the coordinator at the start of every round (grow) and when a round has starved for longer than
runtime.worker_wait_s (shrink). Each re-plan is a line in metrics.jsonl.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from dcoord.coding.elastic import ElasticScheme

if TYPE_CHECKING:
    from dcoord.runtime.coordinator import Coordinator

log = logging.getLogger("dcoord.elastic")


def members(coord: Coordinator) -> list[int]:
    return list(getattr(coord.scheme, "members", range(coord.n)))


def replan(coord: Coordinator, r: int, workers: list[int], why: str) -> bool:
    """Re-plan round ``r`` (and later ones) over ``workers``; False when there is nothing to change."""
    workers = sorted(workers)
    if not workers or workers == members(coord):
        return False
    cfg = coord.cfg
    epoch = getattr(coord.scheme, "epoch", 0) + 1
    coord.scheme = ElasticScheme(cfg.coding.scheme, workers, coord.n, cfg.workers, cfg.coding.stragglers,
                                 epoch, jobs=cfg.rounds)
    coord.stored.pop(r, None)  # results of the abandoned plan for this round are not used
    coord.part_losses.pop(r, None)
    log.warning("round %d: re-planned %s over %d workers (s=%d): %s", r, coord.scheme.name, len(workers),
                coord.scheme.s, why)
    coord.rundir.log_event({"event": "replan", "from_round": r, "why": why, "workers": workers,
                            "n": len(workers), "s": coord.scheme.s, "scheme": coord.scheme.name,
                            "epoch": epoch, "time": time.time()})
    return True


def grow(coord: Coordinator, r: int) -> None:
    """Before round ``r``: take workers that came back (or joined) into the plan."""
    alive = coord.alive_ids()
    if alive - set(members(coord)):
        replan(coord, r, sorted(alive), "workers back")


def shrink(coord: Coordinator, r: int) -> bool:
    """Round ``r`` cannot finish with the workers left: re-plan it over them; False if none are left."""
    if replan(coord, r, sorted(coord.alive_ids()), "too many workers gone"):
        coord._start_round(r)
        return True
    return False
