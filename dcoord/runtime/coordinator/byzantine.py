"""coding.byzantine on the coordinator: collect each round's digests, accept a group's value once a + 1 agree
(dcoord.coding.byzantine), use one payload per group whose own digest checks, and count, report and exclude
the workers that lied.

Why digests and not tensors: comparing n full payloads costs n times the model size in memory traffic every
round; 32-byte digests cost nothing, and only the one payload used per group is hashed (a liar that sends an
honest digest with a wrong payload is caught when its payload is the one used; otherwise its payload is never
used). Results that come after their round closed are still checked against the value accepted then, so a
liar slower than its honest replicas is identified in the round it lied too.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from dcoord.coding.byzantine import Agreement, agree, digest, replication
from dcoord.errors import RunFailed

#: rounds whose accepted digests are kept to check late results against
KEEP_ROUNDS = 8


def scheme_groups(scheme) -> list[list[int]]:
    """The replica groups of a repetition code (gc-fr, gc-binary): members of each group, by group."""
    groups: dict[int, list[int]] = {}
    for w in range(scheme.n):
        groups.setdefault(scheme.group_of(w), []).append(w)
    return [groups[g] for g in sorted(groups)]


class ByzantineCheck:
    """One run's agreement state, offence counts and exclusions (the latter two are checkpointed)."""

    def __init__(self, scheme, a: int, s: int, exclude_after: int, record: Callable[[dict], None]) -> None:
        self.a, self.s, self.exclude_after = a, s, exclude_after
        self.groups = scheme_groups(scheme)
        self.group_of = {w: g for g, members in enumerate(self.groups) for w in members}
        self.record = record  # a line in metrics.jsonl
        self.offences: Counter[int] = Counter()
        self.excluded: set[int] = set()
        self.events: list[dict] = []  # every offence, in order (summary.json)
        self.round = -1
        self.received: dict[int, bytes] = {}  # this round: worker -> digest of its (only) task
        self.accepted: dict[int, dict[int, bytes]] = {}  # recent rounds: group -> accepted digest
        self.round_events: list[dict] = []  # this round's offences (the round's metrics record)

    # -- a round ------------------------------------------------------------------------------------------
    def start(self, r: int) -> None:
        self.round, self.received, self.round_events = r, {}, []

    def note(self, worker: int, digests: list[bytes]) -> str | None:
        """A result of the current round; a reason to reject it, or None."""
        if worker in self.excluded:
            return "excluded"
        if len(digests) != 1 or len(digests[0]) != 32:
            return "no-digest"
        self.received[worker] = digests[0]
        return None

    def agreement(self) -> Agreement:
        return agree(self.received, self.groups, self.a)

    def check(self, ag: Agreement) -> bool:
        """May the round close? Raises RunFailed when a group cannot decide (more than a liars in it)."""
        if ag.undecidable:
            g = ag.undecidable[0]
            seen = Counter(self.received[w] for w in self.groups[g] if w in self.received)
            raise RunFailed(
                f"round {self.round}: the replicas of group {g} (workers {self.groups[g]}) do not have one value "
                f"that {self.a + 1} of them agree on ({len(seen)} different digests from "
                f"{sum(seen.values())} workers): more than coding.byzantine = {self.a} liars in one group; "
                "stopped without accepting a value (the last checkpoint stands)")
        return ag.complete

    def close(self, ag: Agreement, payloads: dict[int, np.ndarray]) -> frozenset[int]:
        """The round closed with every group accepted: count the offenders, then pick per group the lowest
        worker whose payload's own digest is the accepted one (a mismatch is an offence too). Returns the
        chosen workers (one per group), whose payloads decode the round."""
        for w in sorted(ag.offenders):
            self.offend(w, self.round, "digest")
        chosen = []
        self.accepted[self.round] = {g: d.value for g, d in ag.groups.items()}
        for r in [r for r in self.accepted if r <= self.round - KEEP_ROUNDS]:
            del self.accepted[r]
        for g, d in ag.groups.items():
            for w in sorted(w for w in self.groups[g] if self.received.get(w) == d.value):
                if digest(payloads[w]) == d.value:
                    chosen.append(w)
                    break
                self.offend(w, self.round, "payload")
            else:
                raise RunFailed(f"round {self.round}: no payload of group {g} matches the digest {self.a + 1} of its "
                                f"replicas agreed on: more than coding.byzantine = {self.a} liars; stopped")
        return frozenset(chosen)

    def late(self, r: int, worker: int, digests: list[bytes]) -> None:
        """A result that came after round ``r`` closed: its digest against the value accepted then."""
        accepted = self.accepted.get(r)
        if accepted is None or worker in self.excluded or len(digests) != 1:
            return
        if digests[0] != accepted[self.group_of[worker]]:
            self.offend(worker, r, "digest (late)")

    def offend(self, worker: int, r: int, kind: str) -> None:
        self.offences[worker] += 1
        event = {"event": "offence", "worker": worker, "round": r, "kind": kind,
                 "offences": self.offences[worker], "time": time.time()}
        if self.offences[worker] >= self.exclude_after and worker not in self.excluded:
            self.excluded.add(worker)
            event["excluded"] = True
        self.events.append(event)
        self.round_events.append(event)
        self.record(event)

    # -- reports and checkpoints -------------------------------------------------------------------------
    def report(self) -> dict:
        return {"byzantine": {
            "tolerated": self.a, "replication": replication(self.a, self.s), "exclude_after": self.exclude_after,
            "offences": {str(w): c for w, c in sorted(self.offences.items())}, "excluded": sorted(self.excluded),
            "events": [{k: v for k, v in e.items() if k not in ("event", "time")} for e in self.events]}}

    def state_dict(self) -> dict:
        return {"offences": dict(self.offences), "excluded": sorted(self.excluded), "events": list(self.events)}

    def load_state_dict(self, state: dict) -> None:
        self.offences = Counter({int(w): int(c) for w, c in state["offences"].items()})
        self.excluded = {int(w) for w in state["excluded"]}
        self.events = list(state["events"])


def describe(event: dict) -> str:
    """One console line for an offence."""
    what = ("its digest disagreed with its group's accepted value" if event["kind"].startswith("digest")
            else "its payload did not match its own digest")
    out = f"worker {event['worker']} lied in round {event['round'] + 1}: {what} (offence {event['offences']})"
    return out + ("; excluded for the rest of the run" if event.get("excluded") else "")
