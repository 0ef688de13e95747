"""The collective plane: gradient coding decoded by one SUM all-reduce among the workers.

Why: on a star plane every coded gradient goes into the coordinator's link and a model comes out to every
worker: 2nM bytes a round through one link, which loses to DDP's ring (2M(n-1)/n per link) as soon as
there are more than a few machines. The decode is linear (sum_i b_i m_i with b_i = 0 outside the survivor
set), so here each worker scales its own message by the coefficient the coordinator sends and the group
all-reduces the shares; every worker applies the decoded gradient to its own replica with the same
optimizer, as DDP does. The coordinator carries control messages only (runtime/coordinator/collective.py);
the group forms through a store behind the coordinator's authenticated control plane
(transport/rendezvous.py); the worker's side is runtime/worker/replica.py.
"""

from __future__ import annotations

from typing import Any

from dcoord.dtypes import NATIVE_FLOATS
from dcoord.runtime.transport.base import Plane


class AllreducePlane(Plane):
    name = "allreduce"
    description = ("workers all-reduce their coefficient-scaled messages (gloo) and step their own replicas; "
                   "no gradient or model through the coordinator")
    runs_under = ("none", "torchrun", "mpirun")
    carries_payloads = False  # nothing beside the control plane reaches the coordinator
    collective = True
    sums_in_payload_dtype = True  # the decode's sum runs across ranks in the payload dtype (precision guard)
    payload_dtypes = NATIVE_FLOATS
    speed = -1  # chosen by name (or by `dcoord tune`): it wins on a network, a star wins on one machine
    default_for_private = False

    def check(self, cfg: Any) -> str | None:
        """What this plane cannot run while keeping its guarantees (a one-line config error), or None."""
        if cfg.mode == "token":
            return ("transport: allreduce decodes gradient codes by all-reduce; token mode passes one model "
                    "between workers: use transport tcp or grpc (or leave it out)")
        if cfg.privacy is not None:
            return ("transport: allreduce does not run private jobs yet (privacy.trust: coordinator would "
                    "show every worker the un-noised sum); use transport tcp or grpc (or leave it out)")
        if cfg.runtime.elastic or cfg.runtime.restart_workers:
            which = "runtime.elastic" if cfg.runtime.elastic else "runtime.restart_workers"
            return (f"transport: allreduce does not re-form its group in flight yet ({which}): a worker that leaves "
                    "stops the run at its last checkpoint, and --resume continues it; set it to false or use "
                    "transport tcp")
        return None
