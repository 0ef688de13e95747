"""Per-sample gradients, per-sample clipping and clipped sums, with torch.func (no Python loop over samples).

Why per-sample: the Gaussian mechanism needs a bound on how much ONE sample can move the released sum,
so every sample's gradient (or gradient difference, for DIFF2) is clipped to norm C before summing:
clip_C(v) = v * min(1, C / ||v||). The sum of clipped vectors then changes by at most C when one sample is
added or removed.

Parameters travel as a FLAT float vector (the model's trainable parameters in ``named_parameters()`` order,
each flattened row-major), the same layout as the (batch, d) per-sample gradient matrix. ``flat_params`` and
``unflatten`` convert. Buffers (e.g. BatchNorm running stats) are taken from the model as they are.

Restriction (as for Opacus): the model must treat samples independently (no BatchNorm in train mode, no
cross-sample ops); each sample is run as a batch of one inside ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = Mapping[str, Tensor] | Tensor | None

__all__ = [
    "LossFn",
    "clip_rows",
    "clipped_diff_sum",
    "clipped_sum",
    "flat_params",
    "per_sample_grad_diffs",
    "per_sample_grads",
    "step_norm",
    "unflatten",
]


def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_params(model: nn.Module) -> Tensor:
    """The model's trainable parameters as one detached flat vector (the layout of every gradient here)."""
    return torch.cat([p.detach().reshape(-1) for _, p in _trainable(model)])


def unflatten(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Split a flat vector into a {name: tensor} dict shaped like the model's trainable parameters."""
    out: dict[str, Tensor] = {}
    offset = 0
    for name, p in _trainable(model):
        k = p.numel()
        out[name] = flat[offset : offset + k].view_as(p)
        offset += k
    if offset != flat.numel():
        raise ValueError(f"flat parameter vector has {flat.numel()} entries, the model has {offset}")
    return out


def _as_dict(model: nn.Module, params: Params) -> dict[str, Tensor]:
    if params is None:
        return {n: p.detach() for n, p in _trainable(model)}
    if isinstance(params, Tensor):
        return {n: t.detach() for n, t in unflatten(model, params).items()}
    return {n: t.detach() for n, t in params.items()}


def step_norm(params: Tensor, prev_params: Tensor) -> float:
    """||x_t - x_{t-1}|| of two flat parameter vectors (DIFF2 ties its difference clip to it), in float64."""
    return float(torch.linalg.vector_norm(params.double() - prev_params.double()))


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    params: Params = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Gradient of each sample's loss w.r.t. the trainable parameters, as a (batch, d) matrix.

    ``params`` (flat vector or name->tensor dict) evaluates at other parameter values than the model's own
    (DIFF2 needs x_t and x_{t-1}); ``chunk_size`` bounds vmap's memory. ``loss_fn(outputs, targets)`` must be
    a mean (or sum) loss: on a batch of one both are the sample's loss.
    """
    pdict = _as_dict(model, params)
    names = [n for n, _ in _trainable(model)]
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, t.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(pdict, X, y)
    batch = X.shape[0]
    return torch.cat([grads[n].reshape(batch, -1) for n in names], dim=1)


def per_sample_grad_diffs(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    params: Params,
    prev_params: Params,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """grad l(x_t; z_i) - grad l(x_{t-1}; z_i) for every sample i, as a (batch, d) matrix."""
    g_new = per_sample_grads(model, loss_fn, X, y, params, chunk_size=chunk_size)
    g_old = per_sample_grads(model, loss_fn, X, y, prev_params, chunk_size=chunk_size)
    return g_new - g_old


def clip_rows(G: Tensor, clip: float) -> Tensor:
    """Clip each row to norm <= ``clip``: v * min(1, C/||v||) (zero rows stay zero; C = 0 zeroes all)."""
    if clip < 0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    norms = torch.linalg.vector_norm(G, dim=1, keepdim=True)
    tiny = torch.finfo(G.dtype).tiny
    factor = (clip / norms.clamp_min(tiny)).clamp(max=1.0)
    return G * factor


def clipped_sum(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    clip: float,
    params: Params = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """sum_i clip_C(grad l(x; z_i)) over the given samples, a (d,) vector (an empty set gives zeros)."""
    if X.shape[0] == 0:
        return torch.zeros_like(flat_params(model) if params is None else _flat(model, params))
    return clip_rows(per_sample_grads(model, loss_fn, X, y, params, chunk_size=chunk_size), clip).sum(0)


def clipped_diff_sum(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    clip: float,
    params: Params,
    prev_params: Params,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """sum_i clip_C(grad l(x_t; z_i) - grad l(x_{t-1}; z_i)), a (d,) vector: DIFF2's difference sum."""
    if X.shape[0] == 0:
        return torch.zeros_like(_flat(model, params))
    D = per_sample_grad_diffs(model, loss_fn, X, y, params, prev_params, chunk_size=chunk_size)
    return clip_rows(D, clip).sum(0)


def _flat(model: nn.Module, params: Params) -> Tensor:
    if params is None:
        return flat_params(model)
    if isinstance(params, Tensor):
        return params.detach().reshape(-1)
    return torch.cat([params[n].detach().reshape(-1) for n, _ in _trainable(model)])
