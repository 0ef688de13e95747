"""What every data plane's frame headers say: the message tag, the kinds and the dtype codes.

A module of its own so the planes and the model stream (models_down) share them without importing each
other (the base class builds the model stream lazily)."""

from __future__ import annotations

import numpy as np

#: tag of every data-plane message (headers and payloads)
TAG = 7
KIND_DATA, KIND_END = 1, 2
#: dtype codes in the header
DTYPES: dict[int, np.dtype] = {0: np.dtype(np.float32), 1: np.dtype(np.float64)}
DTYPE_CODES: dict[np.dtype, int] = {v: k for k, v in DTYPES.items()}
