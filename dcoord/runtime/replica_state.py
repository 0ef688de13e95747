"""A model and its optimizer as named flat tensors, checked both ways, and their digest.

Why: on the collective plane (transport: allreduce) every worker steps a replica of the model, so the
state crosses the control plane in both directions: down to start (or resume) a replica, up for a
checkpoint or the end of the run. Neither side trusts the other: only tensors of the names, shapes and
dtypes the receiving model and optimizer have are accepted (no pickle), and they must be finite. The
digest (sha256 of exactly these bytes) is how replicas prove they are identical.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from dcoord.errors import PayloadError
from dcoord.runtime.tensors import flat_params, from_proto, load_flat_params
from dcoord.wire.messages import ReplicaState, TensorData

#: optimizer state entries a replica may carry (torch.optim.SGD and Adam)
OPT_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")


def state_arrays(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """``params`` (flat, float32 as on the wire) and ``opt.<index>.<key>`` for each optimizer state tensor."""
    out = {"params": flat_params(model)}
    for idx, st in sorted(optimizer.state_dict()["state"].items()):
        for key in sorted(st):
            val = st[key]
            if key in OPT_KEYS and isinstance(val, torch.Tensor):
                out[f"opt.{idx}.{key}"] = val.detach().cpu().numpy().copy()
    return out


def digest(arrays: dict[str, np.ndarray]) -> bytes:
    """sha256 over names, shapes, dtypes and bytes, in name order: equal exactly when the states are."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.digest()


def to_message(model_index: int, version: int, arrays: dict[str, np.ndarray]) -> ReplicaState:
    return ReplicaState(model=model_index, version=version, tensors={k: TensorData.of(v) for k, v in arrays.items()})


def load_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: ReplicaState) -> None:
    """Put a received state into ``model`` and ``optimizer``; PayloadError (nothing changed) if it does not fit."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    if "params" not in state.tensors:
        raise PayloadError("replica state without params")
    flat = from_proto(state.tensors["params"], expect_size=n)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in state.tensors.items():
        if name == "params":
            continue
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "opt" or parts[2] not in OPT_KEYS or not parts[1].isdigit():
            raise PayloadError(f"replica state has an unknown tensor {name[:80]!r}")
        idx, key = int(parts[1]), parts[2]
        if idx >= len(params):
            raise PayloadError(f"replica state names parameter {idx}; the model has {len(params)}")
        shape = () if key == "step" else tuple(params[idx].shape)
        if tuple(t.shape) != shape:
            raise PayloadError(f"replica state {name}: shape {tuple(t.shape)}, expected {shape}")
        arr = from_proto(t, expect_size=int(np.prod(shape)) if shape else 1).reshape(shape)
        opt_state.setdefault(idx, {})[key] = torch.from_numpy(arr.copy())
    load_flat_params(model, flat)
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": opt_state, "param_groups": sd["param_groups"]})
