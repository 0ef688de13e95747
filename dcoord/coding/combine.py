"""Apply decoding coefficients to delivered messages: g = sum_i a_i f_i, in float64.

Blocked so the accumulator block and one scratch block stay in cache: every message is read once and
the output written once, close to the speed of copying the messages. (A BLAS axpy is faster on an idle
machine but its threads collapse to a tenth of that when the cores are shared, as a coordinator's are.)
Large vectors are cut into a few contiguous ranges combined on threads (NumPy releases the GIL in its
loops): each value is still summed in the same order, so the result does not depend on the threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK = 1 << 14  # float64 values per block: 128 KiB, fits L2 alongside the scratch block
PARALLEL_MIN = 1 << 21  # values (16 MiB of float64) from which a combine is split over threads
MAX_THREADS = 4

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="dcoord-combine")
        return _pool


def combine(coeffs: Mapping[Hashable, float], messages: Mapping[Hashable, np.ndarray], size: int,
            out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """Sum of coefficient * message over ``coeffs``, accumulated in float64, as a vector of ``size`` values.

    Every product is formed in float64 (the coefficient is a float64 scalar: a Python float beside a
    float32 message would make NumPy multiply in float32 and round each product to 24 bits before the
    float64 sum). ``out``: a buffer to write into (the coordinator reuses one, since a fresh 100 MB array
    costs a page fault per 4 KiB); by default a new float64 array. A float32 ``out`` (the model's own
    gradient memory) gets the float64 sum rounded once to nearest, block by block: the same values as
    rounding a float64 result afterwards, without writing and re-reading a float64 vector.
    ``threads``: how many ranges to combine at once (default: the cores this process may use, at most 4,
    for vectors of ``PARALLEL_MIN`` values or more); the values are the same for any number.
    """
    if out is None:
        out = np.empty(size, dtype=np.float64)
    elif out.dtype not in (np.float64, np.float32) or out.shape != (size,):
        raise ValueError(f"out must be float64 or float32 of shape ({size},), got {out.dtype} {out.shape}")
    items = [(np.float64(c), messages[k]) for k, c in coeffs.items()]
    if not items:
        out.fill(0.0)
        return out
    if threads is None:
        threads = _threads() if size >= PARALLEL_MIN else 1
    threads = max(1, min(threads, MAX_THREADS, -(-size // BLOCK)))
    if threads == 1:
        _combine_range(items, out, 0, size)
        return out
    step = -(-size // (threads * BLOCK)) * BLOCK  # whole blocks per range: the same blocks as one thread
    ranges = [(lo, min(lo + step, size)) for lo in range(0, size, step)]
    futures = [_executor().submit(_combine_range, items, out, lo, hi) for lo, hi in ranges[1:]]
    _combine_range(items, out, *ranges[0])  # this thread takes the first range
    for f in futures:
        f.result()
    return out


def _combine_range(items: list[tuple[np.float64, np.ndarray]], out: np.ndarray, start: int, stop: int) -> None:
    scratch = np.empty(min(BLOCK, max(stop - start, 1)), dtype=np.float64)
    narrow = out.dtype != np.float64  # accumulate in a float64 block, then round it into out
    acc_block = np.empty_like(scratch) if narrow else None
    (c0, m0), rest = items[0], items[1:]
    for lo in range(start, stop, BLOCK):
        hi = min(lo + BLOCK, stop)
        dest = out[lo:hi]
        acc = acc_block[: hi - lo] if acc_block is not None else dest
        tmp = scratch[: hi - lo]
        if c0 == 1.0:  # uncoded and 0/1 codes: a widening copy, exact, no multiply
            np.copyto(acc, m0[lo:hi])
        else:
            np.multiply(m0[lo:hi], c0, out=acc)  # 0 + c*m is c*m: no zero fill needed
        for c, m in rest:
            if c == 1.0:
                np.add(acc, m[lo:hi], out=acc)  # the message widens to float64 exactly
            else:
                np.multiply(m[lo:hi], c, out=tmp)
                acc += tmp
        if narrow:
            np.copyto(dest, acc)  # round to nearest, ties to even (as torch's cast does)
