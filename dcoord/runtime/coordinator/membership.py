"""Which workers the coordinator has, which it lost, and how much straggler slack the code has left.

Why apart from the round loop: a lost worker changes what the user should expect (the code tolerates s
stragglers; every worker lost spends one of them, and once they are spent every round waits for its
slowest worker). The round loop only asks "who is alive"; this module also keeps the lost/back history
and says it in words, for the console, summary.json, metrics.jsonl and ``dcoord status``.

A worker is declared lost while the job runs when its work stream closes (killed, crashed, network
gone), or when nothing was heard from it (heartbeats or results) for ``stale_s`` seconds
(``max(5, 10 * runtime.heartbeat_s)``). It is back when its stream is up again (a restarted worker with
the same id, or a replacement), or when it is heard from again.

Liveness is kept incrementally (a set updated on attach, detach and every message, and one sweep for
silence at most every ``sweep_s``), so asking "who is alive" costs O(1) however many workers there are: the
round loop asks once per worker and per result, which was O(n^2) per round with a scan per question.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

log = logging.getLogger("dcoord.coordinator")

#: never call a worker silent sooner than this, whatever runtime.heartbeat_s says
MIN_STALE_S = 5.0


@dataclass
class WorkerConn:
    """One attached worker: where to send it messages, and when it was last heard from."""

    worker_id: int
    outbox: asyncio.Queue
    hostname: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    alive: bool = True
    session: str = ""                # its session credential (runtime/coordinator/sessions.py)
    attached: bool = False           # its Work stream is up
    reserved_until: float = math.inf  # a registered id waits this long for its Work stream
    reserved_at: float = -math.inf   # since when its id has waited for a stream (claimable after claim_s)


@dataclass(frozen=True)
class WorkerEvent:
    """A worker lost or back, with the straggler slack the code has left after it."""

    kind: str            # "lost" or "rejoined"
    worker: int
    round: int           # the round in progress when it happened
    reason: str          # e.g. "its connection closed", "no heartbeat for 5 s"
    alive: int           # workers alive after it
    tolerated: int       # stragglers the code tolerates per round (the scheme's s)
    slack_left: int      # tolerated minus the workers lost now (negative: rounds cannot finish)
    slow: tuple[int, ...] = ()  # live workers known to be slow (inject: fixed), for what the slack means

    def describe(self, worker_wait_s: float | None = None) -> str:
        """One line for the console: who, when, why, and what it means for the rounds to come."""
        what = "lost" if self.kind == "lost" else "back"
        head = f"worker {self.worker} {what} at round {max(self.round, 0) + 1} ({self.reason}); "
        return head + slack_words(self.tolerated, self.slack_left, worker_wait_s, self.slow)

    def as_dict(self) -> dict:
        return asdict(self)


def slack_words(tolerated: int, left: int, worker_wait_s: float | None = None, slow: tuple[int, ...] = ()) -> str:
    """What ``left`` of ``tolerated`` straggler slack means for the rounds to come (``slow``: live workers
    known to be slow; more of them than the slack left means every round waits for one)."""
    s = f"the code tolerates {tolerated} straggler{'s' if tolerated != 1 else ''}"
    if 0 <= left < len(slow) and left < tolerated:
        names = ", ".join(str(w) for w in slow)
        return (f"{s}, {left or 'none'} now left: every round now waits for a slow worker "
                f"(worker{'s' if len(slow) > 1 else ''} {names} {'are' if len(slow) > 1 else 'is'} slow)")
    if left == tolerated:
        return f"{s}, all {tolerated} left" if tolerated else f"{s}: every round waits for its slowest worker"
    if left > 0:
        return f"{s}, {left} now left: rounds wait for a slow worker once more than {left} are slow"
    if left == 0:
        return f"{s}, none left: every round now waits for its slowest worker"
    wait = f" (up to {worker_wait_s:g} s, runtime.worker_wait_s)" if worker_wait_s is not None else ""
    return f"{s} and {tolerated - left} are lost: rounds cannot finish until a worker comes back{wait}"


class Membership:
    """The workers of one job: registration, attach/detach, liveness, and the lost/back history.

    ``tolerated()`` and ``members()`` are asked of the current scheme (it may be re-planned); ``round()`` and
    ``running()`` of the round loop; ``record(event)`` writes an event line (metrics.jsonl)."""

    def __init__(self, n: int, heartbeat_s: float, tolerated: Callable[[], int], members: Callable[[], list[int]],
                 round: Callable[[], int], running: Callable[[], bool], record: Callable[[dict], None],
                 slow: Callable[[], set[int]] = set) -> None:
        self.n = n
        self.stale_s = max(MIN_STALE_S, 10 * heartbeat_s)
        self._tolerated, self._members, self._round, self._running = tolerated, members, round, running
        self._record, self._slow = record, slow
        self.conns: dict[int, WorkerConn] = {}
        self.lost_ids: set[int] = set()
        self.events: list[WorkerEvent] = []
        self.observers: list[Callable[[WorkerEvent], None]] = []
        self._alive: set[int] = set()   # attached, not let go, heard from within stale_s (as of the last sweep)
        self._frozen: frozenset[int] | None = frozenset()  # alive_ids() until the set changes
        self.version = 0                # bumped whenever the alive set changes (callers cache on it)
        self.sweep_s = min(0.25, self.stale_s / 20)
        self._swept = -math.inf
        self._cursor = 0                # where free_worker_id looks first

    # -- registration and streams ------------------------------------------------------------------
    def _taken(self, worker: int, now: float) -> bool:
        """An id is taken while its stream is up or its reservation has not expired."""
        c = self.conns.get(worker)
        return c is not None and c.alive and (c.attached or now < c.reserved_until)

    def free_worker_id(self, requested: int = -1, claim_s: float = math.inf) -> int | None:
        """``requested`` when it is free, else the lowest free id at or after where the last search stopped
        (ids are handed out in order, so a job registering costs O(1) per call, not a scan of every id).

        When no id is free, the id that has waited longest for a Work stream, if that is at least ``claim_s``,
        is taken over: registrations that never attach cannot keep an id from a worker that would (a token
        holder re-registering every id keeps none of them: the wait is the id's, not the registration's)."""
        now = time.monotonic()
        if 0 <= requested < self.n and not self._taken(requested, now):
            return requested
        for k in range(self.n):
            i = (self._cursor + k) % self.n
            if not self._taken(i, now):
                self._cursor = (i + 1) % self.n
                return i
        return self._claimable(now, claim_s)

    def _claimable(self, now: float, claim_s: float) -> int | None:
        """The id whose unattached reservation is oldest and at least ``claim_s`` old (O(n): only when full)."""
        if not math.isfinite(claim_s):
            return None
        waiting = [(c.reserved_at, w) for w, c in self.conns.items()
                   if c.alive and not c.attached and now < c.reserved_until and now - c.reserved_at >= claim_s]
        return min(waiting)[1] if waiting else None

    def reserve(self, conn: WorkerConn) -> None:
        """A registered worker: its id is held for it until its stream attaches (or the reservation ends).

        A reservation taken over from one that never attached keeps the time the id has waited since: re-
        registering an id resets nothing, so whoever comes next may take it (a squatter keeps no id)."""
        prev = self.conns.get(conn.worker_id)
        if prev is not None and prev.alive and not prev.attached and conn.reserved_at < prev.reserved_until:
            conn.reserved_at = min(conn.reserved_at, prev.reserved_at)
        self.conns[conn.worker_id] = conn
        self._set_alive(conn.worker_id, False)

    def attach(self, conn: WorkerConn) -> None:
        conn.alive, conn.attached, conn.last_seen = True, True, time.monotonic()
        self.conns[conn.worker_id] = conn
        self._set_alive(conn.worker_id, True)
        log.info("worker %d attached (%d alive)", conn.worker_id, self.alive_count())
        if conn.worker_id in self.lost_ids:  # a worker that died (or its replacement) is back
            self._back(conn.worker_id, "its work stream is up again")

    def detach(self, conn: WorkerConn) -> None:
        """Its stream ended; while the job runs that makes it lost."""
        if self.conns.get(conn.worker_id) is not conn or not conn.attached:
            return
        was_alive, conn.alive, conn.attached = conn.alive, False, False
        self._set_alive(conn.worker_id, False)
        level = logging.WARNING if self._running() else logging.INFO
        log.log(level, "worker %d is gone (%d alive)", conn.worker_id, self.alive_count())
        if was_alive and self._running() and conn.worker_id not in self.lost_ids:
            self._lost(conn.worker_id, "its connection closed")

    def heard_from(self, conn: WorkerConn) -> bool:
        """A heartbeat or a message from ``conn``; False when the coordinator has let it go."""
        if conn.alive:
            conn.last_seen = time.monotonic()
            if conn.attached and conn.worker_id not in self._alive and self.conns.get(conn.worker_id) is conn:
                self._set_alive(conn.worker_id, True)  # silent, and now heard from again
        return conn.alive

    # -- liveness ------------------------------------------------------------------------------------
    def _set_alive(self, worker: int, alive: bool) -> None:
        if alive == (worker in self._alive):
            return
        (self._alive.add if alive else self._alive.discard)(worker)
        self._frozen = None
        self.version += 1

    def sweep(self, now: float | None = None) -> None:
        """Take workers silent for ``stale_s`` out of the alive set (O(n); at most once per ``sweep_s``)."""
        now = time.monotonic() if now is None else now
        if now - self._swept < self.sweep_s:
            return
        self._swept = now
        stale = now - self.stale_s
        conns = self.conns
        for w in [w for w in self._alive if conns[w].last_seen < stale]:
            self._set_alive(w, False)

    def alive_ids(self) -> frozenset[int]:
        """Workers whose stream is up and who were heard from recently (heartbeats or results); the same
        frozen set is returned until it changes (O(1) per call)."""
        self.sweep()
        if self._frozen is None:
            self._frozen = frozenset(self._alive)
        return self._frozen

    def alive_count(self) -> int:
        self.sweep()
        return len(self._alive)

    def check(self) -> None:
        """Declare silent workers lost, and silent ones heard from again back (the round loop calls this)."""
        if not self._running():
            return
        alive = self.alive_ids()
        for w, c in list(self.conns.items()):
            if c.alive and c.attached and w not in alive and w not in self.lost_ids:
                self._lost(w, f"no heartbeat for {self.stale_s:g} s")
        for w in [w for w in self.lost_ids if w in alive]:
            self._back(w, "heard from again")

    # -- what the user is told -----------------------------------------------------------------------
    def slack(self) -> tuple[int, int]:
        """(stragglers the code tolerates per round, how many of them are left with the lost workers gone)."""
        tolerated = int(self._tolerated())
        lost = len(self.lost_ids & set(self._members()))
        return tolerated, tolerated - lost

    def slow_alive(self) -> tuple[int, ...]:
        return tuple(sorted(self._slow() & self.alive_ids()))

    def report(self) -> dict:
        """The ``membership`` section of summary.json."""
        tolerated, left = self.slack()
        return {"lost": sorted(self.lost_ids), "alive_at_end": self.alive_count(),
                "stragglers_tolerated": tolerated, "slack_left": left, "slow": list(self.slow_alive()),
                "events": [e.as_dict() for e in self.events]}

    def _lost(self, worker: int, reason: str) -> None:
        self.lost_ids.add(worker)
        self._emit("lost", worker, reason)

    def _back(self, worker: int, reason: str) -> None:
        self.lost_ids.discard(worker)
        self._emit("rejoined", worker, reason)

    def _emit(self, kind: str, worker: int, reason: str) -> None:
        tolerated, left = self.slack()
        ev = WorkerEvent(kind, worker, self._round(), reason, self.alive_count(), tolerated, left, self.slow_alive())
        self.events.append(ev)
        log.warning("%s", ev.describe())
        self._record({"event": f"worker-{kind}", "worker": worker, "during_round": ev.round, "reason": reason,
                      "alive": ev.alive, "stragglers_tolerated": tolerated, "slack_left": left,
                      "time": time.time()})
        for observe in list(self.observers):
            try:
                observe(ev)
            except Exception as exc:  # noqa: BLE001 - a broken display must not stop the run
                log.warning("worker event observer failed: %s", exc)
