"""Flat parameter vectors and the checked decoding of wire tensors (no pickle: shape + dtype + raw bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ml_dtypes
import numpy as np
import torch

from dcoord.errors import PayloadError as PayloadError  # re-exported
from dcoord.wire.messages import TensorData

_DTYPES = {"float32": np.float32, "float64": np.float64, "bfloat16": ml_dtypes.bfloat16}


def flat_params(model: torch.nn.Module, out: np.ndarray | None = None) -> np.ndarray:
    """The model's parameters as one float32 vector (the order of ``model.parameters()``), a copy.

    ``out``: a float32 buffer of the right size to write into (the coordinator's reused buffers)."""
    params = [p.detach().reshape(-1) for p in model.parameters()]
    if out is not None and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params):
        torch.cat(params, out=torch.from_numpy(out))
        return out
    flat = torch.cat(params).cpu()  # a copy: never the model's own memory
    return (flat if flat.dtype == torch.float32 else flat.float()).numpy()  # one copy, not two


def load_flat_params(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Write a flat vector back into the model's parameters (in place, no autograd)."""
    flat = np.ascontiguousarray(flat)
    vec = torch.from_numpy(flat if flat.flags.writeable else flat.copy())  # wire buffers are read-only
    first = next(iter(model.parameters()), None)
    if first is not None and first.device.type != "cpu":
        vec = vec.to(first.device)  # one host-to-device copy, not one per parameter
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vec[offset : offset + n].view_as(p).to(p.dtype))
            offset += n
    if offset != vec.numel():
        raise PayloadError(f"parameter vector has {vec.numel()} values, model has {offset}")


def flat_grads_to_model(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Set ``p.grad`` of every parameter from a flat (float64 or float32) gradient vector.

    Writes into the existing ``p.grad`` tensors when they fit (every round after the first): a fresh 50 MB
    gradient per round costs more in page faults than the copy itself. The cast rounds to nearest, as
    ``.to()`` does."""
    vec = torch.from_numpy(np.ascontiguousarray(flat))
    total = sum(p.numel() for p in model.parameters())
    if vec.numel() != total:
        raise PayloadError(f"gradient vector has {vec.numel()} values, model has {total}")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            src = vec[offset : offset + n].view_as(p)
            g = p.grad
            if g is not None and g.shape == p.shape and g.dtype == p.dtype and g.device == p.device:
                g.copy_(src)
            else:
                p.grad = src.to(device=p.device, dtype=p.dtype, copy=True)
            offset += n


class GradVector:
    """A model's gradients kept as views of one flat vector, so a decode can write straight into them.

    The coordinator's decode accumulates in float64 and rounds into this memory (``coding.combine``),
    which saves writing a float64 gradient and copying it into each ``p.grad`` every round. ``array()``
    re-binds the views if anything replaced a ``p.grad``, and is None when the parameters do not share one
    floating dtype on the CPU (then the caller copies with ``flat_grads_to_model``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = list(model.parameters())
        dtypes = {p.dtype for p in self.params}
        self.ok = (len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}
                   and all(p.device.type == "cpu" for p in self.params))
        self.flat: torch.Tensor | None = None
        self._ptrs: list[int] = []

    def _bound(self) -> bool:
        return all(p.grad is not None and p.grad.data_ptr() == q and p.grad.shape == p.shape
                   for p, q in zip(self.params, self._ptrs))

    def array(self) -> np.ndarray | None:
        """The flat gradient memory (numpy view, model order), bound to every ``p.grad``; or None."""
        if not self.ok:
            return None
        if self.flat is None or not self._bound():
            total = sum(p.numel() for p in self.params)
            self.flat = torch.zeros(total, dtype=self.params[0].dtype) if self.flat is None else self.flat
            offset = 0
            for p in self.params:
                n = p.numel()
                p.grad = self.flat[offset : offset + n].view_as(p)
                offset += n
            self._ptrs = [p.grad.data_ptr() for p in self.params]
        return self.flat.numpy()


def round_payload(acc: np.ndarray, dtype: str) -> np.ndarray:
    """A float64 message rounded once, to nearest (ties to even), into the payload dtype.

    bfloat16 is rounded here rather than by ml_dtypes, whose float64 cast goes through float32 and so
    rounds twice (1 + 2^-8 + 2^-30 would become 1 instead of 1 + 2^-7). Values below float32's normal
    range (< 1.2e-38) may still round twice; they are zero for any gradient's purposes.
    """
    if dtype == "float64":
        return np.asarray(acc, dtype=np.float64)
    if dtype == "float32":
        return np.asarray(acc, dtype=np.float64).astype(np.float32)
    if dtype == "bfloat16":
        m, e = np.frexp(np.asarray(acc, dtype=np.float64))
        r = np.ldexp(np.rint(np.ldexp(m, 8)), e - 8)  # 8 significant bits, exact in float64
        with np.errstate(over="ignore"):  # beyond bfloat16's range: inf, as a cast would give
            return r.astype(np.float32).astype(ml_dtypes.bfloat16)  # both casts exact now
    raise PayloadError(f"unsupported payload dtype {dtype!r} (float64, float32 or bfloat16)")


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
    if t.dtype == "bfloat16":  # exact widening, so decoding and the data plane see a plain float dtype
        arr = arr.astype(np.float32)
    if check_finite and not all_finite(arr):
        raise PayloadError("non-finite values (NaN or Inf)")
    return arr


def check_array(arr: np.ndarray, expect_size: int | None = None) -> np.ndarray:
    """Validate a payload that arrived as an array (a data plane): the same checks as ``from_proto``."""
    if str(arr.dtype) not in _DTYPES:
        raise PayloadError(f"unknown dtype {arr.dtype}")
    if expect_size is not None and arr.size != expect_size:
        raise PayloadError(f"wrong shape: {arr.size} values, expected {expect_size}")
    if not all_finite(arr):
        raise PayloadError("non-finite values (NaN or Inf)")
    return arr


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch ops on this thread alone for a moment (restored after).

    For work done while other processes hold the cores: the coordinator checks each result as it
    arrives, while the other workers still compute, and a parallel torch op then waits at its barrier
    for a core a worker holds (2-3x the CPU per result measured with four workers on two cores)."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def all_finite(arr: np.ndarray) -> bool:
    """No NaN or Inf in ``arr``. A NaN or an Inf makes any sum non-finite, so a finite sum (one fast pass,
    no temporary) proves it; only a non-finite sum, which finite values can also give by overflowing, needs
    the element-wise check. The sum runs on one thread (``one_torch_thread``)."""
    if arr.dtype.kind == "f":
        with np.errstate(all="ignore"):
            fast = arr.flags.writeable and arr.flags.c_contiguous  # torch wraps it without a copy (or a warning)
            if fast:
                with one_torch_thread():
                    total = float(torch.from_numpy(arr).sum())
            else:
                total = float(np.sum(arr))
        if np.isfinite(total):
            return True
    return bool(np.all(np.isfinite(arr)))
