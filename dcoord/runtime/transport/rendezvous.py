"""The key-value store the workers of a collective plane form their all-reduce group through.

Why not torch's TCPStore: it listens on a port of its own that anyone who can reach it may read and
write, with no authentication. Here the coordinator hosts the store behind its gRPC control plane (the
``Rendezvous`` RPC): every call carries the job's token (or its TLS client certificate) and a registered
worker's session, keys must belong to a group the coordinator formed, and sizes and counts are bounded.
The worker side, :class:`ControlPlaneStore`, is a ``torch.distributed.Store`` that gloo uses as it would a
TCPStore; it only polls (no call waits on the server), so one slow worker never holds a server thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

from dcoord.errors import DcoordError

#: bounds of the coordinator's store: gloo exchanges a few hundred bytes per rank and group
MAX_KEY = 512
MAX_VALUE = 64 << 10
KEYS_PER_RANK = 64


class StoreRefused(DcoordError):
    """A store call the coordinator will not serve (unknown group, too large, too many keys)."""


class RendezvousStore:
    """Coordinator side: one bounded dict per group prefix; only the current groups' prefixes are open."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[str, int] = {}  # prefix -> group size
        self.data: dict[str, dict[str, bytes]] = {}

    def open_group(self, prefix: str, size: int) -> None:
        """Accept keys under ``prefix`` (a new group); older groups' keys are dropped."""
        with self.lock:
            self.groups = {prefix: size}
            self.data = {prefix: {}}

    def close(self) -> None:
        with self.lock:
            self.groups, self.data = {}, {}

    def _space(self, key: str) -> dict[str, bytes]:
        if len(key) > MAX_KEY:
            raise StoreRefused(f"key longer than {MAX_KEY} characters")
        for prefix in self.groups:
            if key.startswith(prefix):
                return self.data[prefix]
        raise StoreRefused("key outside every group the coordinator formed")

    def handle(self, op: str, keys: list[str], value: bytes, amount: int) -> tuple[bool, bytes, int]:
        """Serve one call: (found, value, number). Raises StoreRefused on anything out of bounds."""
        if not keys or len(keys) > 256:
            raise StoreRefused("a store call names 1 to 256 keys")
        with self.lock:
            if op == "num_keys":
                return True, b"", sum(len(d) for d in self.data.values())
            if op == "compare_set" and len(keys) == 2:  # keys: (key, expected value in hex)
                keys, expected = keys[:1], bytes.fromhex(keys[1]) if len(keys[1]) <= 2 * MAX_VALUE else b""
            spaces = [self._space(k) for k in keys]
            space, key = spaces[0], keys[0]
            if op == "check":
                return all(k in s for k, s in zip(keys, spaces)), b"", 0
            if op == "get":
                got = space.get(key)
                return got is not None, got or b"", 0
            if op == "delete":
                return space.pop(key, None) is not None, b"", 0
            if op == "num_keys":
                return True, b"", sum(len(d) for d in self.data.values())
            if op == "compare_set":
                cur = space.get(key)
                if (cur is None and not expected) or cur == expected:
                    if len(value) > MAX_VALUE:
                        raise StoreRefused(f"value larger than {MAX_VALUE} bytes")
                    space[key] = bytes(value)
                    return True, bytes(value), 0
                return False, cur if cur is not None else expected, 0
            if op not in ("set", "add"):
                raise StoreRefused(f"unknown store operation {op!r}")
            size = self.groups[next(p for p in self.groups if key.startswith(p))]
            if key not in space and len(space) >= KEYS_PER_RANK * max(size, 1):
                raise StoreRefused("too many keys in this group")
            if op == "set":
                if len(value) > MAX_VALUE:
                    raise StoreRefused(f"value larger than {MAX_VALUE} bytes")
                space[key] = bytes(value)
                return True, b"", 0
            try:
                number = int(space.get(key, b"0")) + int(amount)
            except ValueError:
                raise StoreRefused("add on a key that holds no number") from None
            space[key] = str(number).encode()
            return True, b"", number


def _bytes(v) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


#: call(op, keys, value, amount) -> (found, value, number): the worker's Rendezvous RPC (worker/link.py)
StoreCall = Callable[[str, list[str], bytes, int], tuple[bool, bytes, int]]


class ControlPlaneStore(dist.Store):
    """Worker side: a torch.distributed Store whose every operation is a Rendezvous call.

    ``get`` and ``wait`` poll (5 ms, doubling to 100 ms) until the key is there or ``timeout`` passes."""

    def __init__(self, call: StoreCall, timeout: float = 60.0) -> None:
        super().__init__()
        self.call = call
        self.wait_timeout = timeout

    def set(self, key: str, value) -> None:  # noqa: A003 - the Store interface
        self.call("set", [key], _bytes(value), 0)

    def get(self, key: str) -> bytes:
        self.wait([key])
        return self.call("get", [key], b"", 0)[1]

    def add(self, key: str, amount: int) -> int:
        return self.call("add", [key], b"", int(amount))[2]

    def check(self, keys: list[str]) -> bool:
        return self.call("check", list(keys), b"", 0)[0]

    def delete_key(self, key: str) -> bool:
        return self.call("delete", [key], b"", 0)[0]

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        limit = timeout.total_seconds() if timeout is not None else self.wait_timeout
        deadline = time.monotonic() + limit
        delay = 0.005
        while not self.check(keys):
            if time.monotonic() > deadline:
                raise DcoordError(f"the all-reduce group did not form within {limit:g} s (waiting for "
                                  f"{', '.join(keys)})")
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def compare_set(self, key: str, expected, desired) -> bytes:
        return self.call("compare_set", [key, _bytes(expected).hex()], _bytes(desired), 0)[1]

    def num_keys(self) -> int:
        return self.call("num_keys", ["-"], b"", 0)[2]
