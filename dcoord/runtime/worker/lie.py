"""TEST ONLY: make this worker lie, to test coding.byzantine with real worker processes.

Read from the environment variable ``DCOORD_TEST_LIE`` of the worker process itself, never from the job
config: the config comes from the coordinator, and a coordinator must not be able to make honest workers lie.
Anyone who can set a worker's environment controls that worker anyway, so this adds no power an attacker
lacks. Format: comma-separated ``WORKER:ATTACK[:EVERY]``; the worker with that id applies ATTACK to its
payloads in every round r with (r + 1) % EVERY == 0 (EVERY defaults to 1: every round). Attacks:

- ``scaled``: -100 times the true message; ``constant``: every value 1.0; ``noise``: Gaussian noise of the
  message's own scale; ``alie``: a small shift within the honest spread (1e-3 of each value's magnitude);
- ``payload``: the honest digest, but the ``scaled`` payload (caught when its payload is the one used).

The digest is computed by the worker from what it sends, so the lie is consistent with its own digest
except for ``payload``.
"""

from __future__ import annotations

import os

import numpy as np

from dcoord.errors import DcoordError

ENV = "DCOORD_TEST_LIE"
ATTACKS = ("scaled", "constant", "noise", "alie", "payload")


class Liar:
    def __init__(self, worker: int, attack: str, every: int) -> None:
        self.worker, self.attack, self.every = worker, attack, every

    def lies_in(self, r: int) -> bool:
        return (r + 1) % self.every == 0

    def tamper(self, r: int, payload: np.ndarray) -> np.ndarray:
        """The lie this worker sends instead of ``payload`` (a new array)."""
        x = np.array(payload, copy=True)
        if self.attack in ("scaled", "payload"):
            x *= -100
        elif self.attack == "constant":
            x[...] = 1.0
        elif self.attack == "noise":
            rng = np.random.default_rng([self.worker, r])
            x += rng.standard_normal(x.shape).astype(x.dtype) * (np.abs(x).mean() + 1e-3)
        elif self.attack == "alie":
            x += (1e-3 * np.abs(x)).astype(x.dtype)
        return x


def liar_from_env(worker: int) -> Liar | None:
    """This worker's lie, if ``DCOORD_TEST_LIE`` names it (test only)."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    for item in spec.split(","):
        parts = item.strip().split(":")
        try:
            w, attack, every = int(parts[0]), parts[1], int(parts[2]) if len(parts) > 2 else 1
        except (ValueError, IndexError):
            raise DcoordError(f"{ENV}: {item!r} is not WORKER:ATTACK[:EVERY]") from None
        if attack not in ATTACKS or every < 1:
            raise DcoordError(f"{ENV}: {item!r}: attack must be one of {', '.join(ATTACKS)}, EVERY >= 1")
        if w == worker:
            return Liar(worker, attack, every)
    return None
