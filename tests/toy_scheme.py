"""A toy coding scheme added from outside dcoord, the way docs/extending.md says: one module
that defines a Scheme subclass and registers it. Worker w computes part w; a round needs every worker."""

from __future__ import annotations

import numpy as np

from dcoord.coding.base import ResultRef, Scheme, SchemeSpec, Task
from dcoord.coding.registry import register_scheme


class ToyUncoded(Scheme):
    name = "toy-uncoded"

    def __init__(self, n: int, jobs: int | None = None) -> None:
        self.n, self.jobs = n, jobs
        self._done: set[int] = set()

    def part_fractions(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def tasks(self, round: int) -> dict[int, list[Task]]:
        if self.jobs is not None and round >= self.jobs:
            return {w: [] for w in range(self.n)}
        return {w: [Task(job=round, parts=(w,), coeffs=(1.0,), kind="uncoded")] for w in range(self.n)}

    def accepts(self, round: int, arrived: frozenset[int]) -> bool:
        return len(arrived) == self.n

    def close_round(self, round: int, arrived: frozenset[int]) -> list[int]:
        if self.jobs is not None and round >= self.jobs:
            return []
        self._done.add(round)
        return [round]

    def decode(self, job: int) -> dict[ResultRef, float]:
        return {ResultRef(job, w, 0): 1.0 for w in range(self.n)}

    def load(self) -> float:
        return 1.0 / self.n


register_scheme(SchemeSpec("toy-uncoded", lambda n, p: ToyUncoded(n, jobs=p.jobs), grid=lambda g: [{}],
                           color="C9", description="test-only copy of uncoded"), replace=True)
