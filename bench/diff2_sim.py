"""Vectorised simulation of DP-GD and DIFF2-GD on the 8-10-1 softplus MLP: many runs at once, torch only.

Why: the DIFF2 paper's grid (T x C1 x c2 x learning rates x eps x seeds, 2000 full-batch rounds over 16,512
samples) is far too big for dcoord's per-sample torch.func path run by run. For this one architecture the
per-sample gradient has a closed form, and so does its norm without materialising it:

    h = W1 x_i + b1,  a = softplus(h),  out = w2.a + b2,  e_i = 2 (out - y_i)       (l_i = (out - y_i)^2)
    grad_w2 = e_i a,  grad_b2 = e_i,  dh_i = e_i w2 * sigmoid(h),  grad_W1 = dh_i x_i^T,  grad_b1 = dh_i
    ||g_i||^2 = ||e_i a||^2 + e_i^2 + ||dh_i||^2 (||x_i||^2 + 1)

and a difference g_i(x_t) - g_i(x_{t-1}) has the same structure (x_i is shared), so per-sample clipping of
gradients AND of differences costs a few (N, B, 10) element-wise passes and two GEMMs with X per round
for B runs together. The mechanism is dcoord's (``dcoord.privacy.mechanisms``), run by run:

    restart (t % T == 0)  g_t = (1/N) sum_i clip_C1(g_i(x_t))                        + N(0, s1^2 C1^2 I)
    difference            g_t = (1/N) sum_i clip_C2t(g_i(x_t) - g_i(x_{t-1}))         + N(0, s2^2 C2t^2 I)
                          C2t = c2 ||x_t - x_{t-1}||
    v_t = g_t (restart) or v_{t-1} + g_t;  x_{t+1} = x_t - eta v_t;  DP-GD is T = 1.

DP-SGD (Poisson sampling at rate q, T = 1): each round every sample is in run b's batch with probability q_b
(a Bernoulli mask, its own generator), and g_t = (1/(qN)) sum_{i in batch} clip_C1(g_i(x_t)) + N(0, s1^2 C1^2 I).

s1 = z1 k / N (DP-SGD: z1 k / (qN)) and s2 = z2 k / N are the noise per unit clip; the caller takes them from dcoord's calibrated
RoundSpecs (one noise draw on the aggregate, k = 2 under replace-one), so this file needs no dcoord import
and runs wherever torch does (``python bench/diff2_sim.py SPEC.pt --device cuda``: a GPU runs the full grid).
tests/test_privacy_bench_sim.py checks the clipped sums against dcoord's ``clipped_sum``/``clipped_diff_sum``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

D_IN, HIDDEN = 8, 10
DIM = D_IN * HIDDEN + HIDDEN + HIDDEN + 1  # 101, nn.Sequential(Linear(8,10), Softplus(), Linear(10,1)) order
DIVERGED = 10.0  # train loss above 10x that of predicting the (standardised) mean, or not finite


def unpack(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flat (B, 101) parameters in torch's layout -> W1 (B,10,8), b1 (B,10), w2 (B,10), b2 (B,)."""
    B = x.shape[0]
    o = D_IN * HIDDEN
    return x[:, :o].view(B, HIDDEN, D_IN), x[:, o : o + HIDDEN], x[:, o + HIDDEN : o + 2 * HIDDEN], x[:, -1]


def pack(gW1: Tensor, gb1: Tensor, gw2: Tensor, gb2: Tensor) -> Tensor:
    """Inverse of :func:`unpack` for gradients."""
    return torch.cat([gW1.flatten(1), gb1, gw2, gb2[:, None]], dim=1)


def pieces(x: Tensor, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample gradient factors at x: e (N,B), e*a (N,B,10), dh (N,B,10), and the train loss (B,).

    Sample-major layout so that both products with X are single GEMMs over all B runs.
    """
    W1, b1, w2, b2 = unpack(x)
    B, N = x.shape[0], X.shape[0]
    h = (X @ W1.permute(2, 0, 1).reshape(D_IN, B * HIDDEN)).view(N, B, HIDDEN) + b1
    a = F.softplus(h)
    res = (a * w2).sum(-1) + b2 - y[:, None]
    e = 2.0 * res
    ea = e[..., None] * a
    dh = (e[..., None] * w2) * torch.sigmoid(h)
    return e, ea, dh, (res * res).mean(0)


def _grad_w1(r: Tensor, X: Tensor) -> Tensor:
    """sum_i r_i x_i^T for every run: (N,B,10) -> (B,10,8), one GEMM."""
    N, B, K = r.shape
    return (X.T @ r.reshape(N, B * K)).view(D_IN, B, K).permute(1, 2, 0)


def clipped_sum(q: Tensor, p: Tensor, r: Tensor, X: Tensor, xx: Tensor, clip: Tensor,
                weight: Tensor | None = None) -> Tensor:
    """sum_i clip_C(u_i) for per-sample vectors u_i given by (grad_b2 = q, grad_w2 = p, dh = r); (B, 101).

    ``xx`` = ||x_i||^2 + 1 (grad_W1 = r x_i^T, grad_b1 = r); ``clip`` (B,) is each run's C.
    Clip factor min(1, C / ||u_i||) as dcoord's ``clip_rows``. ``weight`` (N, B): 1 for the samples in each
    run's batch, 0 for the others (Poisson sampling); None: every sample.
    """
    nrm2 = (p * p).sum(-1) + q * q + (r * r).sum(-1) * xx[:, None]
    tiny = torch.finfo(nrm2.dtype).tiny
    c = (clip / nrm2.sqrt().clamp_min(tiny)).clamp(max=1.0)
    if weight is not None:
        c = c * weight
    cr = c[..., None] * r
    return pack(_grad_w1(cr, X), cr.sum(0), (c[..., None] * p).sum(0), (c * q).sum(0))


def full_grad(e: Tensor, ea: Tensor, dh: Tensor, X: Tensor) -> Tensor:
    """grad f(x) of the mean loss (unclipped, noiseless; a metric, never released)."""
    N = X.shape[0]
    return pack(_grad_w1(dh, X) / N, dh.mean(0), ea.mean(0), e.mean(0))


@dataclass
class Batch:
    """B runs of one seed: per-run hyperparameters (eta, C1, c2, T), noise per unit clip (s1, s2) and Poisson
    sample rate (1: full batch)."""

    eta: Tensor
    clip: Tensor
    clip_diff: Tensor
    restart_every: Tensor  # int64; 1 = DP-GD
    s1: Tensor
    s2: Tensor
    sample_rate: Tensor | None = None  # (B,) q per run; None: every run full-batch


def simulate(batch: Batch, x0: Tensor, X: Tensor, y: Tensor, Xt: Tensor, yt: Tensor, rounds: int, seed: int,
             log_every: int = 50, compact_every: int = 50) -> dict[str, Tensor]:
    """Run every configuration of ``batch`` for ``rounds`` rounds from x0 (101,); returns per-run metrics.

    Diverged runs (train loss > DIVERGED or not finite at a check) are dropped from the batch and reported
    with loss inf. Returns loss, grad_norm, test_loss (B,), diverged (B,), curve (B, rounds//log_every+1)
    and the final parameters x (B, 101; NaN for diverged runs).
    """
    dev, dt = X.device, X.dtype
    B, N = batch.eta.shape[0], X.shape[0]
    gen = torch.Generator(device=dev)
    gen.manual_seed(1_000_003 * seed + 17)
    qrate = torch.ones(B, device=dev, dtype=dt) if batch.sample_rate is None else batch.sample_rate.to(dev, dt)
    if bool((qrate < 1).any()):  # Poisson batches from their own generator: the noise draws stay as they were
        if bool((batch.restart_every.to(dev)[qrate < 1] != 1).any()):
            raise ValueError("Poisson sampling is for DP-GD runs (restart_every 1)")
        gen_batch = torch.Generator(device=dev)
        gen_batch.manual_seed(1_000_033 * seed + 29)
    xx = (X * X).sum(1) + 1.0
    yv = y.reshape(-1)
    alive = torch.arange(B, device=dev)
    x = x0.to(dev, dt).expand(B, DIM).clone()
    v = torch.zeros_like(x)
    prev: tuple[Tensor, Tensor, Tensor] | None = None
    step = torch.zeros(B, device=dev, dtype=dt)
    eta, C1, c2, T, s1, s2 = (t.to(dev) for t in (batch.eta, batch.clip, batch.clip_diff, batch.restart_every,
                                                   batch.s1, batch.s2))
    eta, C1, c2, s1, s2 = (t.to(dt) for t in (eta, C1, c2, s1, s2))
    n_log = rounds // log_every + 1
    curve = torch.full((B, n_log), math.inf, device=dev, dtype=dt)
    diverged = torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(rounds):
        e, ea, dh, loss = pieces(x, X, yv)
        if t % log_every == 0:
            curve[alive, t // log_every] = loss
        if t % compact_every == 0 or t == rounds - 1:
            bad = ~torch.isfinite(loss) | (loss > DIVERGED)
            if bool(bad.any()):
                diverged[alive[bad]] = True
                keep = ~bad
                alive, x, v, step, eta, C1, c2, T, s1, s2, qrate = (
                    a[keep] for a in (alive, x, v, step, eta, C1, c2, T, s1, s2, qrate))
                e, ea, dh = e[:, keep], ea[:, keep], dh[:, keep]
                prev = None if prev is None else tuple(p[:, keep] for p in prev)  # type: ignore[assignment]
                if alive.numel() == 0:
                    break
        restart = (t % T) == 0
        if prev is None:  # t == 0: every run restarts
            q, p, r, clip = e, ea, dh, C1
            std = s1 * C1
        else:
            q = torch.where(restart, e, e - prev[0])
            rs3 = restart[:, None]
            p = torch.where(rs3, ea, ea - prev[1])
            r = torch.where(rs3, dh, dh - prev[2])
            clip = torch.where(restart, C1, c2 * step)
            std = torch.where(restart, s1 * C1, s2 * c2 * step)
        sampled = qrate < 1
        weight = None
        if bool(sampled.any()):  # one Bernoulli(q_b) draw per sample and run; full-batch runs keep weight 1
            u = torch.rand((N, qrate.shape[0]), generator=gen_batch, device=dev, dtype=dt)
            weight = torch.where(sampled, (u < qrate).to(dt), 1.0)
        g = clipped_sum(q, p, r, X, xx, clip, weight) / (N * qrate)[:, None]
        g = g + std[:, None] * torch.randn(g.shape, generator=gen, device=dev, dtype=dt)
        v = torch.where(restart[:, None], g, v + g) if prev is not None else g
        x_new = x - eta[:, None] * v
        step = (x_new - x).norm(dim=1)
        prev, x = (e, ea, dh), x_new
    out_loss = torch.full((B,), math.inf, device=dev, dtype=dt)
    out_gn = torch.full((B,), math.inf, device=dev, dtype=dt)
    out_test = torch.full((B,), math.inf, device=dev, dtype=dt)
    out_x = torch.full((B, DIM), math.nan, device=dev, dtype=dt)
    if alive.numel():
        out_x[alive] = x
        e, ea, dh, loss = pieces(x, X, yv)
        ok = torch.isfinite(loss) & (loss <= DIVERGED)
        diverged[alive[~ok]] = True
        curve[alive, -1] = torch.where(ok, loss, math.inf)
        out_loss[alive] = torch.where(ok, loss, math.inf)
        out_gn[alive] = torch.where(ok, full_grad(e, ea, dh, X).norm(dim=1), math.inf)
        out_test[alive] = torch.where(ok, pieces(x, Xt, yt.reshape(-1))[3], math.inf)
    return {"loss": out_loss.cpu(), "grad_norm": out_gn.cpu(), "test_loss": out_test.cpu(),
            "diverged": diverged.cpu(), "curve": curve.cpu(), "x": out_x.cpu()}


def run_batches(configs: dict[str, Tensor], x0: Tensor, data: dict[str, Tensor], rounds: int, seed: int,
                batch_size: int, device: str, dtype: torch.dtype, log_every: int = 50) -> dict[str, Tensor]:
    """simulate() over all configurations, ``batch_size`` at a time (memory ~ 12 * batch_size * N * 10)."""
    X, y, Xt, yt = (data[k].to(device, dtype) for k in ("X", "y", "X_test", "y_test"))
    n = configs["eta"].shape[0]
    parts = []
    for lo in range(0, n, batch_size):
        sl = slice(lo, lo + batch_size)
        b = Batch(*(configs[k][sl] for k in ("eta", "clip", "clip_diff", "restart_every", "s1", "s2")),
                  sample_rate=configs["sample_rate"][sl] if "sample_rate" in configs else None)
        parts.append(simulate(b, x0, X, y, Xt, yt, rounds, seed * 7919 + lo, log_every=log_every))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def run_spec(spec: dict, device: str, batch_size: int, on_job=None) -> dict:
    """Run a spec exported by bench/privacy.py: {'jobs': [{'name', 'seed', 'configs'}], data, x0s, ...}.

    ``on_job(results_so_far)`` is called after every job (the CLI saves partial results with it)."""
    dtype = torch.float32 if spec.get("dtype", "float32") == "float32" else torch.float64
    out = {}
    for job in spec["jobs"]:
        t0 = time.perf_counter()
        res = run_batches(job["configs"], spec["x0"][job["seed"]], spec["data"], spec["rounds"], job["seed"],
                          batch_size, device, dtype, spec.get("log_every", 50))
        out[job["name"]] = {k: v.tolist() for k, v in res.items() if k != "x"}
        print(f"{job['name']}: {job['configs']['eta'].shape[0]} runs in {time.perf_counter() - t0:.1f} s",
              flush=True)
        if on_job is not None:
            on_job(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="run a DIFF2/DP-GD sweep spec exported by bench/privacy.py")
    ap.add_argument("spec")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=2048)
    args = ap.parse_args()
    spec = torch.load(args.spec, weights_only=False)
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"

    def save(res: dict) -> None:
        with open(args.out, "w") as f:
            json.dump({"device": name, "wall_s": time.perf_counter() - t0, "results": res}, f)

    save(run_spec(spec, args.device, args.batch_size, on_job=save))


if __name__ == "__main__":
    main()
