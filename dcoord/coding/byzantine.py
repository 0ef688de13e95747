"""Exact Byzantine tolerance from repetition (DRACO): which value a group of replicas agrees on, and who lied.

Every worker of a fractional-repetition group computes the same message. With replication r >= 2a + s + 1,
at most ``a`` liars and at most ``s`` stragglers, each group delivers at least 2a + 1 messages of which at
least a + 1 are honest and bit-identical; no wrong value can gather a + 1 copies unless a liar sends the
honest one. So the first value with a + 1 equal digests is the true one, and everyone whose digest differs
from it lied. Pure: no I/O, no clocks; the coordinator feeds it the digests it has received so far.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dcoord.errors import SchemeError

#: schemes whose workers fall into groups that compute the same message (the only ones repetition can check)
BYZANTINE_SCHEMES = ("gc-fr", "gc-binary")

Verdict = Literal["accepted", "waiting", "undecidable"]


def replication(a: int, s: int) -> int:
    """Replicas per group needed to tolerate ``a`` liars and ``s`` stragglers in the same round."""
    return 2 * a + s + 1


def check_byzantine(scheme: str, n: int, a: int, s: int) -> None:
    """Refuse, in one line, a scheme repetition cannot check or an n the replication cannot serve."""
    if a <= 0:
        return
    r = replication(a, s)
    if scheme not in BYZANTINE_SCHEMES:
        raise SchemeError(f"byzantine: {a} needs a repetition code ({' or '.join(BYZANTINE_SCHEMES)}), not "
                          f"{scheme}; set coding.scheme: gc-fr (replication 2a+s+1 = {r})")
    if n < r:
        raise SchemeError(f"byzantine: {a} with stragglers {s} needs replication 2a+s+1 = {r} workers per group, "
                          f"more than the {n} workers; lower coding.byzantine or add workers")
    if scheme == "gc-fr" and n % r:
        raise SchemeError(f"byzantine: {a} with stragglers {s} under gc-fr needs the replication 2a+s+1 = {r} to "
                          f"divide workers (got {n}); use {n - n % r} or {n - n % r + r} workers, or gc-binary")


def digest(payload: np.ndarray) -> bytes:
    """SHA-256 of a payload's bytes as sent (its dtype, C order): what replicas compare."""
    return hashlib.sha256(np.ascontiguousarray(payload).data).digest()


@dataclass(frozen=True)
class GroupDecision:
    """One group's state: ``accepted`` (``value`` has a + 1 copies and no other value has), ``waiting``
    (no value has a + 1 copies yet but one still can), or ``undecidable`` (two values have a + 1 copies, or
    none can reach it any more: more than ``a`` liars in the group). ``offenders``: received workers whose
    digest differs from the accepted value (empty unless accepted)."""

    verdict: Verdict
    value: bytes | None = None
    offenders: frozenset[int] = frozenset()


def decide_group(received: Mapping[int, bytes], members: Sequence[int], a: int) -> GroupDecision:
    """Decide one group from the digests ``received`` so far (worker -> digest) of its ``members``."""
    counts = Counter(received.values())
    backed = [v for v, c in counts.items() if c >= a + 1]
    if len(backed) > 1:
        return GroupDecision("undecidable")
    if backed:
        value = backed[0]
        return GroupDecision("accepted", value, frozenset(w for w, d in received.items() if d != value))
    missing = sum(1 for w in members if w not in received)
    if max(counts.values(), default=0) + missing < a + 1:
        return GroupDecision("undecidable")
    return GroupDecision("waiting")


@dataclass(frozen=True)
class Agreement:
    """Every group's decision this round, and what they add up to."""

    groups: dict[int, GroupDecision]

    @property
    def complete(self) -> bool:
        """Every group accepted a value: the round may close."""
        return all(d.verdict == "accepted" for d in self.groups.values())

    @property
    def undecidable(self) -> list[int]:
        return sorted(g for g, d in self.groups.items() if d.verdict == "undecidable")

    @property
    def offenders(self) -> frozenset[int]:
        return frozenset().union(*(d.offenders for d in self.groups.values()))


def agree(received: Mapping[int, bytes], groups: Sequence[Sequence[int]], a: int) -> Agreement:
    """``decide_group`` for every group (``groups[g]``: its members) from all digests received so far."""
    return Agreement({g: decide_group({w: received[w] for w in members if w in received}, members, a)
                      for g, members in enumerate(groups)})
