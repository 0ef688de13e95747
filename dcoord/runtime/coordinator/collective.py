"""The coordinator's side of the collective plane (transport: allreduce): it owns the group, not the bytes.

On this plane the coordinator never receives a gradient or sends a model during a round. It forms the
workers' all-reduce group (the rendezvous store behind its control plane), starts every replica from its
own state (the initial model, or a checkpoint on --resume), turns each decode into per-worker
coefficients (``Decode`` messages: b_i = 0 for everyone outside the survivor set), compares the replicas'
digests, and fetches one replica's state when it needs the model itself: a checkpoint and the end of the
run. Control bytes per round do not grow with the model.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Mapping
from typing import Any

from dcoord.coding.base import ResultRef
from dcoord.errors import PayloadError, RunFailed
from dcoord.runtime.replica_state import load_state, state_arrays, to_message
from dcoord.runtime.transport.rendezvous import RendezvousStore
from dcoord.wire.messages import Decode, Group, ReplicaState, SyncRequest

log = logging.getLogger("dcoord.coordinator")


class CollectiveRun:
    """Group, replicas and digests of one job on the collective plane."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.store = RendezvousStore()
        self.epoch = 0
        self.members: list[int] = []  # worker ids in rank order
        self.digests: dict[tuple[int, int], dict[int, bytes]] = {}  # (model, version) -> worker -> digest
        self.checked = 0  # digest checks passed
        self.synced_round = -1  # the round as of which the coordinator's models are a replica's
        self._state_wait: asyncio.Future | None = None
        self._state_from: int | None = None
        self.state_bytes = 0  # replica state fetched for checkpoints and the end (not gradients)
        self.control_bytes_in = 0  # every other work-stream message, serialized (hello, results)
        self.control_bytes_out = 0  # (assignments, decodes, group and sync messages, shutdown)

    # -- the group ---------------------------------------------------------------------------------------
    def form(self, workers: list[int]) -> None:
        """(Re-)form the group over ``workers``: a fresh store prefix, a Group message and the coordinator's
        state (every replica starts from the same bits) to each."""
        c = self.coord
        self.epoch += 1
        self.members = sorted(workers)
        prefix = f"g{self.epoch}-{secrets.token_hex(8)}/"
        self.store.open_group(prefix, len(self.members))
        states = [to_message(m, c.steps[m], state_arrays(model, c.optimizers[m])) for m, model in enumerate(c.models)]
        for rank, w in enumerate(self.members):  # one group, then every model's state (sequential codes: several)
            conn = c.conns[w]
            conn.outbox.put_nowait(Group(epoch=self.epoch, rank=rank, size=len(self.members), prefix=prefix))
            for st in states:
                conn.outbox.put_nowait(st)
        log.info("all-reduce group %d formed over workers %s", self.epoch, self.members)
        c.rundir.log_event({"event": "group", "epoch": self.epoch, "workers": self.members,
                            "from_round": c.round + 1})

    def check_members(self, alive: set[int]) -> None:
        """A member that is gone would hold every all-reduce: end the run (the last checkpoint resumes it)."""
        gone = sorted(set(self.members) - alive)
        if gone:
            raise RunFailed(f"worker(s) {gone} left the all-reduce group (transport: allreduce); the run stops at "
                            f"its last checkpoint (round {self.synced_round}): continue it with --resume")

    # -- a decode --------------------------------------------------------------------------------------
    def send_decode(self, job: int, model: int, version: int, coeffs: Mapping[ResultRef, float],
                    keep_from_job: int) -> None:
        """Every member's coefficients for ``job`` (none: it joins with zeros)."""
        terms: dict[int, list[tuple[int, int, float]]] = {w: [] for w in self.members}
        for ref, coeff in coeffs.items():
            if ref.worker not in terms:
                raise RunFailed(f"job {job}: decode names worker {ref.worker}, which is not in the group")
            if coeff != 0.0:
                terms[ref.worker].append((ref.round, ref.slot, float(coeff)))
        for w, t in terms.items():
            self.coord.conns[w].outbox.put_nowait(
                Decode(job=job, model=model, version=version, terms=t, group_epoch=self.epoch,
                       keep_from_job=keep_from_job))

    # -- digests ---------------------------------------------------------------------------------------
    def note_digest(self, worker: int, model: int, version: int, value: bytes) -> None:
        """A replica's digest of ``model`` at ``version``; once every member reported, they must agree."""
        if not value:
            return
        got = self.digests.setdefault((model, version), {})
        got[worker] = bytes(value)
        if set(got) >= set(self.members):
            self._compare((model, version), self.digests.pop((model, version)))
        for key in [k for k in self.digests if k[0] == model and k[1] < version - 8]:  # stragglers never sent theirs
            self._compare(key, self.digests.pop(key))

    def _compare(self, key: tuple[int, int], got: dict[int, bytes]) -> None:
        if len(set(got.values())) <= 1:
            self.checked += 1
            return
        majority, _ = Counter(got.values()).most_common(1)[0]
        odd = sorted(w for w, d in got.items() if d != majority)
        raise RunFailed(f"replica(s) of worker(s) {odd} differ from the others at model {key[0]} version {key[1]} "
                        "(transport: allreduce keeps every replica bit-identical; this one is not)")

    def report(self) -> dict:
        """What summary.json says of the plane: the group, the digest checks, and every payload byte the
        coordinator received or sent beside control messages (replica states only; never a gradient)."""
        c = self.coord
        return {"group_epochs": self.epoch, "members": list(self.members), "digest_checks": self.checked,
                "replica_state_bytes_in": self.state_bytes, "payload_bytes_in": c.bytes_in,
                "payload_bytes_out": c.bytes_out, "control_bytes_in": self.control_bytes_in,
                "control_bytes_out": self.control_bytes_out}

    # -- the model, from a replica -------------------------------------------------------------------------
    async def fetch_state(self, alive: set[int], timeout: float) -> None:
        """Load the coordinator's models from one live replica (checkpoints, the final model)."""
        c = self.coord
        source = min(set(self.members) & alive, default=None)
        if source is None:
            raise RunFailed("no replica left to take the model from (transport: allreduce)")
        loop = asyncio.get_running_loop()
        for m in range(len(c.models)):
            self._state_wait, self._state_from = loop.create_future(), source
            c.conns[source].outbox.put_nowait(SyncRequest(model=m, version=c.steps[m]))
            try:
                state: ReplicaState = await asyncio.wait_for(self._state_wait, timeout)
            except asyncio.TimeoutError:
                raise RunFailed(f"worker {source} did not send its replica within {timeout:g} s") from None
            finally:
                self._state_wait = None
            if (state.model, state.version) != (m, c.steps[m]):
                raise RunFailed(f"worker {source} sent model {state.model} at version {state.version}, expected "
                                f"model {m} at {c.steps[m]}")
            try:
                load_state(c.models[m], c.optimizers[m], state)
            except PayloadError as exc:
                raise RunFailed(f"worker {source} sent a replica that does not fit the model: {exc}") from None
        self.synced_round = c.round

    def on_state(self, worker: int, state: ReplicaState, nbytes: int) -> bool:
        """A replica's state arrived on ``worker``'s stream; False (to be counted as rejected) if unasked."""
        if self._state_wait is None or self._state_wait.done() or worker != self._state_from:
            return False
        self.state_bytes += nbytes
        self._state_wait.set_result(state)
        return True
