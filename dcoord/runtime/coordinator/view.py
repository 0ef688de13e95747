"""A frozen view of a coordinator at one moment: what metrics, progress and status show.

Why a copy and not the live object: readers (a Prometheus scrape, the progress bar, the status RPC) must
not reach into the round state machine, and a value read twice in one scrape must not change in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CoordinatorView:
    name: str
    job_id: str
    scheme: str
    state: str                  # waiting-for-workers, running, done, failed
    round: int                  # the round in progress (or the last one), -1 before the first
    total_rounds: int
    workers_total: int
    workers_alive: int
    last_loss: float            # of the last decoded job; after the last round, the final model's loss
    stragglers_seen: int
    wait_all_fallbacks: int
    max_residual: float
    payload_bytes_in: int       # tensor bytes received: gRPC work stream and data plane together
    payload_bytes_out: int      # tensor bytes sent, likewise
    dropped_late: int
    elapsed_s: float
    message: str
    private: bool
    stragglers_tolerated: int   # the scheme's s
    slack_left: int             # s minus the workers lost now
    lost_workers: tuple[int, ...] = ()
    rejected: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    offences: dict[int, int] = field(default_factory=dict)  # coding.byzantine: worker -> offences so far
    excluded: tuple[int, ...] = ()  # coding.byzantine: workers excluded for the rest of the run
