"""Elastic re-planning of a plain gradient code over the workers that are present.

The data stays cut into the original N parts (so workers need no new partition); the code is re-planned
over n' present workers: a plain scheme for n' "groups", group k being a fixed set of the original parts,
and each of its tasks expanded to the original parts with the group's coefficient. Every group is covered,
so each round still decodes the exact gradient of the whole batch, sum_j g_j.

Each plan has an epoch, carried in the task slot, so a result computed under an older plan (same job,
same model version, different parts) can never be mistaken for one of the current plan.
"""

from __future__ import annotations

import numpy as np

from dcoord.coding.base import ResultRef, Scheme, SchemeError, Task


def elastic_schemes() -> tuple[str, ...]:
    """The registered codes that can be re-planned (each declares ``elastic`` on its SchemeSpec; sequential
    codes carry jobs across rounds; token mode reroutes)."""
    from dcoord.coding.registry import registered_schemes

    return tuple(name for name, spec in registered_schemes().items() if spec.elastic)


def replan_stragglers(scheme: str, n: int, s: int) -> int:
    """The largest s' <= s the scheme allows with n workers (gc-fr needs (s'+1) | n, every code s' < n)."""
    if scheme == "uncoded":
        return 0
    s2 = max(0, min(s, n - 1))
    if scheme == "gc-fr":
        while n % (s2 + 1):
            s2 -= 1
    return s2


class ElasticScheme(Scheme):
    """A plain code over ``members`` (physical worker ids), on the original ``parts`` parts of a job."""

    def __init__(self, scheme: str, members: list[int], n_physical: int, parts: int, s: int,
                 epoch: int, jobs: int | None = None) -> None:
        from dcoord.coding.registry import make_scheme

        if scheme not in elastic_schemes():
            raise SchemeError(f"runtime.elastic: {scheme} cannot be re-planned; use one of {list(elastic_schemes())}")
        if not members:
            raise SchemeError("elastic: no workers to plan over")
        self.base, self.epoch, self.parts_total, self.s_max = scheme, epoch, parts, s
        self.members = sorted(members)
        self.n = n_physical
        n2 = len(self.members)
        self.s = replan_stragglers(scheme, n2, s)
        self.inner = make_scheme(scheme, n2, s=self.s, jobs=jobs)
        self.name = self.inner.name
        self.jobs = jobs
        # group k of the re-planned code = original parts k, k+n', k+2n', ... (n' <= N: none is empty)
        self.groups = [tuple(range(k, parts, n2)) for k in range(n2)]
        self.last_residual = 0.0

    def part_fractions(self) -> np.ndarray:
        return np.full(self.parts_total, 1.0 / self.parts_total)

    def _logical(self, arrived: frozenset[int]) -> frozenset[int]:
        return frozenset(k for k, w in enumerate(self.members) if w in arrived)

    def tasks(self, round: int) -> dict[int, list[Task]]:
        out: dict[int, list[Task]] = {w: [] for w in range(self.n)}
        for k, tasks in self.inner.tasks(round).items():
            for t in tasks:
                parts, coeffs = [], []
                for g, c in zip(t.parts, t.coeffs):
                    parts.extend(self.groups[g])
                    coeffs.extend([c] * len(self.groups[g]))
                out[self.members[k]].append(Task(job=t.job, parts=tuple(parts), coeffs=tuple(coeffs),
                                                 kind=t.kind, slot=self.epoch))
        return out

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return self.inner.accepts(round, self._logical(arrived))

    def close_round(self, round: int, arrived: frozenset[int]) -> list[int]:
        return self.inner.close_round(round, self._logical(arrived))

    def decode(self, job: int) -> dict[ResultRef, float]:
        coeffs = self.inner.decode(job)
        self.last_residual = float(getattr(self.inner, "last_residual", 0.0))
        return {ResultRef(r.round, self.members[r.worker], self.epoch): c for r, c in coeffs.items()}

    def load(self) -> float:
        return self.inner.load()

    def params(self) -> dict:
        return {"n": len(self.members), "s": self.s, "members": self.members, "epoch": self.epoch}

    def state_dict(self) -> dict:
        return {"elastic": {"scheme": self.base, "members": list(self.members), "parts": self.parts_total,
                            "s": self.s_max, "epoch": self.epoch, "jobs": self.jobs},
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])

    @classmethod
    def from_state(cls, state: dict, n_physical: int) -> ElasticScheme:
        e = state["elastic"]
        sch = cls(e["scheme"], [int(w) for w in e["members"]], n_physical, int(e["parts"]), int(e["s"]),
                  int(e["epoch"]), None if e["jobs"] is None else int(e["jobs"]))
        sch.load_state_dict(state)
        return sch


def plan_members(scheme: Scheme, n: int) -> list[int]:
    """The physical workers the current plan uses (all ``n`` while the code was never re-planned)."""
    return list(scheme.members) if isinstance(scheme, ElasticScheme) else list(range(n))


def replan(current: Scheme, workers: list[int], n_physical: int, base: str, parts: int, s: int,
           jobs: int | None) -> ElasticScheme | None:
    """The code ``base`` re-planned over ``workers`` (a new epoch); None when that is the plan already."""
    workers = sorted(workers)
    if not workers or workers == plan_members(current, n_physical):
        return None
    epoch = (current.epoch if isinstance(current, ElasticScheme) else 0) + 1
    return ElasticScheme(base, workers, n_physical, parts, s, epoch, jobs=jobs)
