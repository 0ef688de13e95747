"""Flat parameter vectors and the checked decoding of wire tensors (no pickle: shape + dtype + raw bytes)."""

from __future__ import annotations

import numpy as np
import torch

from dcoord.errors import PayloadError as PayloadError  # re-exported
from dcoord.runtime.messages import TensorData

_DTYPES = {"float32": np.float32, "float64": np.float64}


def flat_params(model: torch.nn.Module) -> np.ndarray:
    """The model's parameters as one float32 vector (the order of ``model.parameters()``)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().numpy().astype(np.float32)


def load_flat_params(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Write a flat vector back into the model's parameters (in place, no autograd)."""
    flat = np.ascontiguousarray(flat)
    vec = torch.from_numpy(flat if flat.flags.writeable else flat.copy())  # wire buffers are read-only
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vec[offset : offset + n].view_as(p).to(p.dtype))
            offset += n
    if offset != vec.numel():
        raise PayloadError(f"parameter vector has {vec.numel()} values, model has {offset}")


def flat_grads_to_model(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Set ``p.grad`` of every parameter from a flat (float64 or float32) gradient vector."""
    vec = torch.from_numpy(np.ascontiguousarray(flat))
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = vec[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def from_proto(t: TensorData, expect_size: int | None = None, check_finite: bool = True) -> np.ndarray:
    """Decode and validate a wire tensor (TensorData or its protobuf twin); every failure is a PayloadError."""
    if t.dtype not in _DTYPES:
        raise PayloadError(f"unknown dtype {t.dtype!r}")
    dtype = np.dtype(_DTYPES[t.dtype])
    count = int(np.prod(t.shape)) if len(t.shape) else 1
    if len(t.data) != count * dtype.itemsize:
        raise PayloadError(f"{len(t.data)} bytes do not hold shape {list(t.shape)} of {t.dtype}")
    if expect_size is not None and count != expect_size:
        raise PayloadError(f"wrong shape: {count} values, expected {expect_size}")
    arr = np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))
    if check_finite and not np.all(np.isfinite(arr)):
        raise PayloadError("non-finite values (NaN or Inf)")
    return arr


def check_array(arr: np.ndarray, expect_size: int | None = None) -> np.ndarray:
    """Validate a payload that arrived as an array (a data plane): the same checks as ``from_proto``."""
    if str(arr.dtype) not in _DTYPES:
        raise PayloadError(f"unknown dtype {arr.dtype}")
    if expect_size is not None and arr.size != expect_size:
        raise PayloadError(f"wrong shape: {arr.size} values, expected {expect_size}")
    if not np.all(np.isfinite(arr)):
        raise PayloadError("non-finite values (NaN or Inf)")
    return arr
