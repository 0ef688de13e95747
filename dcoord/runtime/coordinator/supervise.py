"""Restart local worker processes that die while a run goes on (what Kubernetes does for a pod).

The replacement is started with the same worker id; it registers, receives the current model version
with its next assignment, and is used again from the round in progress or the next one.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable

log = logging.getLogger("dcoord.supervise")


class WorkerSupervisor:
    """Polls the local worker processes; a dead one is replaced after ``delay_s`` while the run is running.

    ``procs`` is updated in place (index = worker id), so callers holding the list see the replacements.
    At most ``max_restarts`` restarts per worker id: a worker that cannot start at all does not loop forever
    (the coordinator then fails the round with its usual message once too few workers are alive).
    """

    def __init__(self, coord, procs: list[subprocess.Popen], start: Callable[[int], subprocess.Popen],
                 delay_s: float = 0.5, max_restarts: int = 1000) -> None:
        self.coord = coord
        self.procs = procs
        self.start_worker = start
        self.delay_s = delay_s
        self.max_restarts = max_restarts
        self.restarts: dict[int, int] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        dead_since: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            if self.coord.state not in ("waiting-for-workers", "running"):
                continue
            for i, p in enumerate(self.procs):
                if p.poll() is None:
                    dead_since.pop(i, None)
                    continue
                since = dead_since.setdefault(i, loop.time())
                if loop.time() - since < self.delay_s or self.restarts.get(i, 0) >= self.max_restarts:
                    continue
                if i in self.coord.alive_ids():  # the coordinator has not noticed yet: wait for it
                    continue
                self.restarts[i] = self.restarts.get(i, 0) + 1
                log.warning("worker %d exited (code %s); starting a replacement", i, p.returncode)
                self.procs[i] = self.start_worker(i)
                dead_since.pop(i, None)
