"""Apply decoding coefficients to delivered messages: g = sum_i a_i f_i, in float64.

Blocked so the accumulator block and one scratch block stay in cache: every message is read once and
the output written once, close to the speed of copying the messages. (A BLAS axpy is faster on an idle
machine but its threads collapse to a tenth of that when the cores are shared, as a coordinator's are.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

BLOCK = 1 << 14  # float64 values per block: 128 KiB, fits L2 alongside the scratch block


def combine(coeffs: Mapping[Hashable, float], messages: Mapping[Hashable, np.ndarray], size: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """Sum of coefficient * message over ``coeffs`` into a float64 vector of ``size`` values.

    Every product is formed in float64 (the coefficient is a float64 scalar: a Python float beside a
    float32 message would make NumPy multiply in float32 and round each product to 24 bits before the
    float64 sum). ``out``: a float64 buffer to write into (the coordinator reuses one, since a fresh 100 MB
    array costs a page fault per 4 KiB); by default a new array.
    """
    if out is None:
        out = np.empty(size, dtype=np.float64)
    elif out.dtype != np.float64 or out.shape != (size,):
        raise ValueError(f"out must be float64 of shape ({size},), got {out.dtype} {out.shape}")
    items = [(np.float64(c), messages[k]) for k, c in coeffs.items()]
    if not items:
        out.fill(0.0)
        return out
    scratch = np.empty(min(BLOCK, max(size, 1)), dtype=np.float64)
    for lo in range(0, size, BLOCK):
        acc = out[lo : lo + BLOCK]
        tmp = scratch[: len(acc)]
        (c0, m0), rest = items[0], items[1:]
        if c0 == 1.0:  # uncoded and 0/1 codes: a widening copy, exact, no multiply
            np.copyto(acc, m0[lo : lo + BLOCK])
        else:
            np.multiply(m0[lo : lo + BLOCK], c0, out=acc)  # 0 + c*m is c*m: no zero fill needed
        for c, m in rest:
            if c == 1.0:
                np.add(acc, m[lo : lo + BLOCK], out=acc)  # the message widens to float64 exactly
            else:
                np.multiply(m[lo : lo + BLOCK], c, out=tmp)
                acc += tmp
    return out
