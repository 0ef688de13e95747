"""What a run counts: refused peers, rejected and late results, stragglers, decode residuals, payload bytes
on the gRPC work stream, the last loss. Kept apart from the round state machine so that its checkpoint and
its readers (``Coordinator.snapshot()``) have one place to look, and nothing else adds to them."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("dcoord.coordinator")


@dataclass
class RunCounters:
    rejected: Counter[str] = field(default_factory=Counter)  # results the job refused, by reason
    refused: Counter[str] = field(default_factory=Counter)   # peers refused before reaching the job
    dropped_late: int = 0        # results that came after their round had closed
    stragglers_seen: int = 0     # worker-rounds that did not deliver before their round closed
    max_residual: float = 0.0    # largest decode residual so far
    wait_all_fallbacks: int = 0  # rounds whose stragglers did not fit the code (waited for every worker)
    bytes_in: int = 0            # tensor bytes received on the gRPC work stream
    bytes_out: int = 0           # tensor bytes sent on the gRPC work stream
    last_loss: float = math.nan  # of the last decoded job; after the last round, the final model's

    def reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        log.warning("rejected result (%s) %s", reason, detail)

    def refuse(self, reason: str, detail: str = "") -> None:
        self.refused[reason] += 1
        log.warning("refused (%s) %s", reason, detail)

    def state_dict(self) -> dict:
        """What a checkpoint keeps (refusals and byte counts describe one process's life, not the job's)."""
        return {"rejected": dict(self.rejected), "dropped_late": self.dropped_late,
                "stragglers_seen": self.stragglers_seen, "max_residual": self.max_residual,
                "last_loss": self.last_loss}

    def load_state_dict(self, c: dict) -> None:
        self.rejected = Counter({str(k): int(v) for k, v in c["rejected"].items()})
        self.dropped_late, self.stragglers_seen = int(c["dropped_late"]), int(c["stragglers_seen"])
        self.max_residual, self.last_loss = float(c["max_residual"]), float(c["last_loss"])
