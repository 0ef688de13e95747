"""Large receive buffers, reused once nothing refers to them any more.

Why: a fresh 50 MB numpy array is mapped lazily, so filling it costs a page fault per 4 KiB (about as long
as moving the bytes over loopback), and glibc returns every such block to the kernel when it is freed. A
data plane that receives a model or a payload of that size every round pays it every round. The pool keeps
the buffers it handed out and gives one out again only when the pool's own reference is the last one:
a payload still stored by a round, held by a late result, or wrapped by a tensor is never overwritten, and
no caller has to give anything back.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# references to a pooled array that mean "free": the pool's list, the loop variable, getrefcount's argument
_FREE_REFS = 3


class BufferPool:
    """Hands out 1-d arrays of a given (count, dtype); reuses one when no one else holds it.

    At most ``per_shape`` buffers of each (count, dtype) are kept; beyond that, fresh untracked arrays.
    Arrays smaller than ``min_bytes`` are always fresh (their page faults cost nothing worth a pool).
    """

    def __init__(self, per_shape: int = 8, min_bytes: int = 1 << 20) -> None:
        self.per_shape = per_shape
        self.min_bytes = min_bytes
        self._kept: dict[tuple[int, str], list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    def take(self, count: int, dtype: np.dtype | str) -> np.ndarray:
        dt = np.dtype(dtype)
        if count * dt.itemsize < self.min_bytes:
            return np.empty(count, dtype=dt)
        key = (int(count), dt.str)
        with self._lock:
            kept = self._kept.setdefault(key, [])
            for a in kept:
                if sys.getrefcount(a) <= _FREE_REFS:
                    self.reused += 1
                    return a
            a = np.empty(count, dtype=dt)
            self.allocated += 1
            if len(kept) < self.per_shape:
                kept.append(a)
            return a

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
