"""Privacy policies: per-sample clipping, accounting against an independent library, messages, trust modes."""

from __future__ import annotations

import copy
import inspect
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from dcoord.privacy import (
    GradientEstimator,
    NoiseKey,
    PrivacyConfig,
    PrivacyError,
    PrivateGD,
    add_coordinator_noise,
    calibrate_noise,
    clip_rows,
    clipped_diff_sum,
    clipped_sum,
    compute_epsilon,
    encode,
    epsilon_per_round,
    flat_params,
    gaussian_noise,
    load_worker_noise_key,
    params_digest,
    per_sample_grad_diffs,
    per_sample_grads,
    plan,
    release_binding,
    round_multipliers,
    step_norm,
    worker_message,
)
from dcoord.privacy.accounting import RDP_ORDERS, noise_std_factors, restart_count

SECRET = "0123456789abcdef-test-secret"


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 1).double()


def _data(n: int = 12, d: int = 5, classes: int | None = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    if classes is None:
        return X, torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X, torch.randint(0, classes, (n,), generator=g)


def _loop_grads(model: nn.Module, loss_fn, X, y, params: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: one backward pass per sample."""
    m = copy.deepcopy(model)
    if params is not None:
        torch.nn.utils.vector_to_parameters(params, m.parameters())
    rows = []
    for i in range(X.shape[0]):
        m.zero_grad()
        loss_fn(m(X[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    return torch.stack(rows)


# ------------------------------------------------------------------------------------- per-sample


@pytest.mark.parametrize(
    "make,loss_fn,classes",
    [(_linear, F.mse_loss, None), (_mlp, F.cross_entropy, 3)],
    ids=["linear-mse", "mlp-ce"],
)
def test_per_sample_grads_match_python_loop(make, loss_fn, classes):
    model = make()
    X, y = _data(d=4 if classes is None else 5, classes=classes)
    G = per_sample_grads(model, loss_fn, X, y)
    ref = _loop_grads(model, loss_fn, X, y)
    assert G.shape == ref.shape == (X.shape[0], sum(p.numel() for p in model.parameters()))
    assert torch.allclose(G, ref, atol=1e-6, rtol=0)
    # at other parameters (flat vector), and the difference between two versions
    x_new = flat_params(model) + 0.1 * torch.randn_like(flat_params(model))
    assert torch.allclose(per_sample_grads(model, loss_fn, X, y, x_new), _loop_grads(model, loss_fn, X, y, x_new), atol=1e-6)
    D = per_sample_grad_diffs(model, loss_fn, X, y, x_new, flat_params(model))
    assert torch.allclose(D, _loop_grads(model, loss_fn, X, y, x_new) - ref, atol=1e-6)
    # the model itself is untouched
    assert torch.equal(flat_params(model), flat_params(make()))


def test_clipped_sums_match_loop_and_bound_holds():
    model = _mlp()
    X, y = _data(n=20)
    ref = _loop_grads(model, F.cross_entropy, X, y)
    C = float(ref.norm(dim=1).median())  # half the rows get clipped
    clipped = torch.stack([g * min(1.0, C / float(g.norm())) for g in ref])
    assert torch.allclose(clipped_sum(model, F.cross_entropy, X, y, C), clipped.sum(0), atol=1e-6)
    x_new = flat_params(model) * 1.05
    ref_d = _loop_grads(model, F.cross_entropy, X, y, x_new) - ref
    C2 = float(ref_d.norm(dim=1).median())
    clipped_d = torch.stack([g * min(1.0, C2 / float(g.norm())) for g in ref_d])
    got = clipped_diff_sum(model, F.cross_entropy, X, y, C2, x_new, flat_params(model))
    assert torch.allclose(got, clipped_d.sum(0), atol=1e-6)


def test_clip_rows_bound_and_identity():
    g = torch.Generator().manual_seed(3)
    G = torch.randn(200, 30, generator=g, dtype=torch.float64) * torch.rand(200, 1, generator=g, dtype=torch.float64) * 5
    G[0] = 0.0
    for C in (0.1, 1.0, 4.0):
        Gc = clip_rows(G, C)
        norms = G.norm(dim=1)
        assert (Gc.norm(dim=1) <= C * (1 + 1e-12)).all()
        small = norms <= C
        assert torch.equal(Gc[small], G[small])  # rows within the bound are untouched
        big = ~small
        assert torch.allclose(Gc[big].norm(dim=1), torch.full_like(norms[big], C))
        cos = (Gc[big] * G[big]).sum(1) / (Gc[big].norm(dim=1) * norms[big])
        assert torch.allclose(cos, torch.ones_like(cos))  # direction kept
    assert torch.equal(clip_rows(G, 0.0), torch.zeros_like(G))
    with pytest.raises(ValueError):
        clip_rows(G, -1.0)


# ------------------------------------------------------------------------------------- accounting


def _dp_accounting_eps(history, delta):
    """Independent check: Google's dp_accounting RDP accountant on the same mechanism sequence."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    events = [
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), steps) for z, q, steps in history if steps
    ]
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "cfg,rounds",
    [
        (dict(mechanism="dp-gd", noise_multiplier=8.0, clip=1.0), 200),
        (dict(mechanism="dp-gd", epsilon=2.0, clip=1.0, delta=1e-6), 50),
        (dict(mechanism="diff2", noise_multiplier=6.0, clip=1.0, restart_every=5), 300),
        (dict(mechanism="diff2", epsilon=4.0, clip=1.0, clip_diff=3.0, restart_every=7), 100),
        (dict(mechanism="diff2", noise_multiplier=3.0, noise_multiplier_diff=20.0, clip=1.0, restart_every=4), 37),
    ],
)
def test_reported_epsilon_matches_independent_accountant(cfg, rounds):
    p = plan(PrivacyConfig(**cfg), rounds=rounds, n_samples=1000, num_partitions=4)
    T = p["restart_every"]
    n_r = -(-rounds // T)
    assert p["restarts"] == n_r and p["differences"] == rounds - n_r
    hist = [(p["noise_multiplier"], 1.0, n_r)]
    if cfg["mechanism"] == "diff2":
        hist.append((p["noise_multiplier_diff"], 1.0, rounds - n_r))
    assert [tuple(h) for h in p["history"]] == hist
    ref = _dp_accounting_eps(hist, p["delta"])
    assert p["epsilon"] == pytest.approx(ref, rel=0.01)


def test_prv_backend_agrees_with_independent_pld():
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    hist = [(4.0, 1.0, 20), (12.0, 1.0, 80)]
    acc = PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), s) for z, _, s in hist]
        )
    )
    ref = acc.get_epsilon(1e-5)
    got = compute_epsilon(hist, 1e-5, "prv")
    assert abs(got - ref) <= 0.02 + 0.01 * ref
    assert got <= compute_epsilon(hist, 1e-5, "rdp")  # PRV is tighter than the RDP bound


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [0.5, 3.0])
def test_calibration_hits_target_dp_gd(target, accountant):
    z, z2 = calibrate_noise(target, 1e-5, 120, accountant=accountant)
    assert z2 is None
    eps = compute_epsilon([(z, 1.0, 120)], 1e-5, accountant)
    assert 0.99 * target <= eps <= target


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibration_hits_target_diff2_with_paper_ratio(target):
    T, R = 6, 200
    z1, z2 = calibrate_noise(target, 1e-5, R, mechanism="diff2", restart_every=T)
    assert z2 / z1 == pytest.approx(2 * math.sqrt(T))  # paper: sqrt(T / (u - 1)), u = 1.25
    n_r = restart_count(R, T)
    eps = _dp_accounting_eps([(z1, 1.0, n_r), (z2, 1.0, R - n_r)], 1e-5)
    assert eps == pytest.approx(target, rel=0.01)


def test_epsilon_per_round_is_cumulative_and_ends_at_plan():
    cfg = PrivacyConfig(mechanism="diff2", noise_multiplier=5.0, clip=1.0, restart_every=3)
    p = plan(cfg, rounds=30, n_samples=100)
    zs = round_multipliers("diff2", 30, p["noise_multiplier"], p["noise_multiplier_diff"], 3)
    assert zs[0] == zs[3] == p["noise_multiplier"] and zs[1] == p["noise_multiplier_diff"]
    curve = epsilon_per_round(zs, cfg.delta)
    assert all(b > a for a, b in zip(curve, curve[1:], strict=False))
    assert curve[-1] == pytest.approx(p["epsilon"], rel=1e-9)


def test_zero_noise_is_not_private():
    p = plan(PrivacyConfig(noise_multiplier=0.0, clip=1.0), rounds=5, n_samples=10)
    assert p["epsilon"] == math.inf


# ------------------------------------------------------------------------------- schedule, spec


def test_restart_schedule_zero_based():
    mech = PrivateGD(mechanism="diff2", clip=1.0, noise_multiplier=1.0, n_samples=10, clip_diff=2.0,
                     restart_every=3, noise_multiplier_diff=4.0)
    assert [mech.is_restart(t) for t in range(7)] == [True, False, False, True, False, False, True]
    spec = mech.round_spec(4, step_norm=0.5)
    assert spec.kind == "difference" and spec.clip == pytest.approx(1.0) and spec.noise_multiplier == 4.0
    assert spec.partition_std == pytest.approx(4.0 * 1.0 / 10)
    dpgd = PrivateGD(mechanism="dp-gd", clip=1.0, noise_multiplier=1.0, n_samples=10, restart_every=5)
    assert all(dpgd.is_restart(t) for t in range(10))


def test_noise_split_factors():
    assert noise_std_factors("workers", "partition", 9) == (1.0, 3.0)
    assert noise_std_factors("workers", "aggregate", 9) == (pytest.approx(1 / 3), 1.0)
    assert noise_std_factors("coordinator", "partition", 9) == (0.0, 1.0)


# --------------------------------------------------------------------------- messages and coding


def _partitioned(n: int = 24, J: int = 6, seed: int = 1):
    X, y = _data(n=n, seed=seed)
    idx = [torch.arange(j, n, J) for j in range(J)]
    return X, y, idx


def _messages(model, X, y, idx, spec, key, params=None, prev=None):
    return {
        j: worker_message(model, F.cross_entropy, X[ix], y[ix], spec=spec, partition=j, key=key, params=params,
                          prev_params=prev)
        for j, ix in enumerate(idx)
    }


def test_replicas_produce_identical_messages():
    X, y, idx = _partitioned()
    mech = PrivateGD(mechanism="diff2", clip=0.5, noise_multiplier=2.0, n_samples=24, num_partitions=6,
                     clip_diff=3.0, restart_every=4, noise_multiplier_diff=8.0)
    x0 = flat_params(_mlp())
    x1 = x0 - 0.1 * torch.ones_like(x0)
    for t, (params, prev) in [(0, (x0, None)), (1, (x1, x0))]:
        spec = mech.round_spec(t, 0.0 if prev is None else step_norm(params, prev))
        a = _messages(_mlp(), X, y, idx, spec, NoiseKey(SECRET), params, prev)  # worker A
        b = _messages(_mlp(), X, y, idx, spec, NoiseKey(SECRET), params, prev)  # worker B, own model copy
        for j in a:
            assert a[j].numpy().tobytes() == b[j].numpy().tobytes()
        assert not torch.equal(a[0], a[1])
    # noise differs across partitions and rounds
    key = NoiseKey(SECRET)
    n00, n01, n10 = (gaussian_noise(key, r, p, 50, 1.0) for r, p in [(0, 0), (0, 1), (1, 0)])
    assert not torch.equal(n00, n01) and not torch.equal(n00, n10)


def test_noise_std_matches_spec():
    key = NoiseKey(SECRET)
    mech = PrivateGD(mechanism="dp-gd", clip=2.0, noise_multiplier=3.0, n_samples=100, num_partitions=4,
                     noise_split="aggregate")
    spec = mech.round_spec(0)
    d = 200_000
    total = sum(gaussian_noise(key, 0, j, d, spec.partition_std, dtype=torch.float64) for j in range(4))
    assert float(total.std()) == pytest.approx(3.0 * 2.0 / 100, rel=0.01)  # decoded sum: z C / N


def test_coding_linearity_recovers_uncoded_private_aggregate():
    """A random cyclic-support code over partitions, decoded by lstsq from the non-stragglers.

    (8 workers for 6 partitions: the survivors span every partition, so the coordinator could even isolate
    single partitions -- which is why ``noise_split: partition`` is the default.)
    """
    J, n_workers, s = 6, 8, 2
    X, y, idx = _partitioned(J=J)
    mech = PrivateGD(mechanism="diff2", clip=0.7, noise_multiplier=1.5, n_samples=24, num_partitions=J,
                     clip_diff=2.0, restart_every=3, noise_multiplier_diff=5.0)
    model = _mlp()
    x0 = flat_params(model)
    x1 = x0 + 0.05 * torch.randn_like(x0)
    rng = np.random.default_rng(0)
    for t, params, prev in [(0, x0, None), (1, x1, x0)]:
        spec = mech.round_spec(t, 0.0 if prev is None else step_norm(params, prev))
        msgs = _messages(model, X, y, idx, spec, NoiseKey(SECRET), params, prev)
        uncoded = sum(msgs.values())
        B = np.zeros((n_workers, J))
        coded = []
        for w in range(n_workers):
            parts = [(w + k) % J for k in range(s + 1)]
            coeffs = rng.uniform(0.5, 2.0, size=s + 1)
            B[w, parts] = coeffs
            coded.append(encode(parts, coeffs.tolist(), msgs))
        alive = [0, 1, 3, 4, 5, 6, 7]  # worker 2 straggles
        assert np.linalg.matrix_rank(B[alive]) == J
        a, *_ = np.linalg.lstsq(B[alive].T, np.ones(J), rcond=None)
        assert np.allclose(B[alive].T @ a, 1.0, atol=1e-12)
        decoded = sum(float(ai) * coded[w] for ai, w in zip(a, alive, strict=True))
        assert decoded.dtype == torch.float64
        assert torch.allclose(decoded, uncoded, atol=1e-9, rtol=0)


def test_worker_message_is_the_clipped_mean_plus_seeded_noise():
    X, y, idx = _partitioned()
    mech = PrivateGD(mechanism="dp-gd", clip=0.3, noise_multiplier=2.0, n_samples=24, num_partitions=6)
    spec = mech.round_spec(5)
    model = _mlp()
    m = worker_message(model, F.cross_entropy, X[idx[2]], y[idx[2]], spec=spec, partition=2, key=NoiseKey(SECRET))
    ref = clipped_sum(model, F.cross_entropy, X[idx[2]], y[idx[2]], 0.3) / 24
    ref = ref + gaussian_noise(NoiseKey(SECRET), 5, 2, ref.numel(), spec.partition_std, dtype=torch.float64,
                               binding=release_binding(spec, 2, params_digest(model, None)))
    assert torch.equal(m, ref)
    with pytest.raises(PrivacyError):  # noise needs the workers' key
        worker_message(model, F.cross_entropy, X, y, spec=spec, partition=0, key=None)
    dspec = PrivateGD(mechanism="diff2", clip=0.3, noise_multiplier=2.0, n_samples=24, clip_diff=1.0,
                      restart_every=2, noise_multiplier_diff=4.0).round_spec(1, 0.1)
    with pytest.raises(PrivacyError):  # a difference needs x_(t-1)
        worker_message(model, F.cross_entropy, X, y, spec=dspec, partition=0, key=NoiseKey(SECRET))


# ------------------------------------------------------------------------------------ trust modes


def test_workers_trust_keeps_the_secret_on_the_workers(tmp_path):
    key = NoiseKey(SECRET)
    # the key cannot be serialised, copied or printed
    for leak in (pickle.dumps, copy.copy, copy.deepcopy, json.dumps, lambda k: torch.save(k, tmp_path / "k.pt")):
        with pytest.raises(TypeError):
            leak(key)
    assert SECRET not in repr(key) and SECRET not in str(key)
    with pytest.raises(AttributeError):
        key._key = b"x"
    # messages from two secrets differ; the message bytes do not contain the secret
    X, y, idx = _partitioned()
    mech = PrivateGD(mechanism="dp-gd", clip=1.0, noise_multiplier=1.0, n_samples=24, num_partitions=6)
    spec = mech.round_spec(0)
    model = _mlp()
    m1 = worker_message(model, F.cross_entropy, X[idx[0]], y[idx[0]], spec=spec, partition=0, key=key)
    m2 = worker_message(model, F.cross_entropy, X[idx[0]], y[idx[0]], spec=spec, partition=0,
                        key=NoiseKey(SECRET + "-other"))
    assert isinstance(m1, torch.Tensor) and not torch.equal(m1, m2)
    assert SECRET.encode() not in m1.numpy().tobytes()
    # the coordinator side neither accepts nor returns a seed/key in workers mode
    est = GradientEstimator(mech)
    with pytest.raises(PrivacyError):
        est.update(0, m1, seed=1234)
    with pytest.raises(PrivacyError):
        mech.add_coordinator_noise(m1, 0, 1234)
    with pytest.raises(PrivacyError):
        add_coordinator_noise(m1, 0, key, 1.0)  # a worker key is refused as a coordinator seed
    for fn in (PrivateGD.round_spec, GradientEstimator.update, plan, PrivateGD.from_config):
        for prm in inspect.signature(fn).parameters.values():
            assert "NoiseKey" not in str(prm.annotation) and "key" not in prm.name
    p = plan(PrivacyConfig(epsilon=1.0, clip=1.0), rounds=10, n_samples=24, num_partitions=6)
    blob = json.dumps(p)
    assert SECRET not in blob and "secret" not in blob.lower()
    with pytest.raises(ValidationError):  # the shared config has no place for a secret or coordinator seed
        PrivacyConfig(epsilon=1.0, clip=1.0, secret=SECRET)
    with pytest.raises(ValidationError, match="coordinator_seed"):
        PrivacyConfig(epsilon=1.0, clip=1.0, coordinator_seed=1)


def test_load_worker_noise_key(tmp_path):
    """The worker's own settings pick the secret: --noise-secret-file, $DCOORD_NOISE_SECRET_FILE, then
    $DCOORD_NOISE_SECRET; the job config (which comes from the coordinator) has no say."""
    k = load_worker_noise_key(env={"DCOORD_NOISE_SECRET": SECRET})
    assert torch.equal(gaussian_noise(k, 0, 0, 10, 1.0), gaussian_noise(NoiseKey(SECRET), 0, 0, 10, 1.0))
    with pytest.raises(PrivacyError, match="DCOORD_NOISE_SECRET"):
        load_worker_noise_key(env={})
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    for k2 in (load_worker_noise_key(str(f), env={"DCOORD_NOISE_SECRET": "x" * 32}),
               load_worker_noise_key(env={"DCOORD_NOISE_SECRET_FILE": str(f)})):
        assert torch.equal(gaussian_noise(k2, 3, 1, 10, 1.0), gaussian_noise(NoiseKey(SECRET), 3, 1, 10, 1.0))
    with pytest.raises(PrivacyError, match="nope"):
        load_worker_noise_key(str(tmp_path / "nope"), env={})
    for key in ("secret_file", "secret_env"):  # the coordinator's config cannot choose the worker's key
        with pytest.raises(ValidationError, match=f"privacy.{key} was removed.*--noise-secret-file"):
            PrivacyConfig(epsilon=1.0, clip=1.0, **{key: str(f)})
    with pytest.raises(PrivacyError):
        NoiseKey("short")


def test_coordinator_trust_adds_noise_after_decoding():
    X, y, idx = _partitioned()
    mech = PrivateGD(mechanism="dp-gd", clip=0.5, noise_multiplier=2.0, n_samples=24, num_partitions=6,
                     trust="coordinator")
    spec = mech.round_spec(0)
    assert spec.partition_std == 0 and spec.coordinator_std == pytest.approx(2.0 * 0.5 / 24)
    model = _mlp()
    msgs = _messages(model, X, y, idx, spec, key=None)
    decoded = sum(msgs.values())
    assert torch.allclose(decoded, clipped_sum(model, F.cross_entropy, X, y, 0.5) / 24, atol=1e-12)
    v1 = GradientEstimator(mech).update(0, decoded, seed=7)
    v2 = GradientEstimator(mech).update(0, decoded, seed=7)
    v3 = GradientEstimator(mech).update(0, decoded, seed=8)
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)
    with pytest.raises(PrivacyError):
        GradientEstimator(mech).update(0, decoded)  # needs the coordinator's seed
    big = mech.add_coordinator_noise(torch.zeros(100_000, dtype=torch.float64), 0, 7)
    assert float(big.std()) == pytest.approx(spec.coordinator_std, rel=0.02)


# --------------------------------------------------------------------------------- DIFF2 dynamics


def test_diff2_without_noise_or_clipping_is_plain_gd():
    X, y, idx = _partitioned(n=30, J=3)
    N, eta, R = 30, 0.5, 25
    mech = PrivateGD(mechanism="diff2", clip=1e6, noise_multiplier=0.0, n_samples=N, num_partitions=3,
                     clip_diff=1e6, restart_every=7, noise_multiplier_diff=0.0)
    model = _mlp()
    est = GradientEstimator(mech)
    x = flat_params(model)
    x_prev = None
    x_gd = x.clone()
    for t in range(R):
        sn = 0.0 if x_prev is None else step_norm(x, x_prev)
        spec = mech.round_spec(t, sn)
        msgs = _messages(model, X, y, idx, spec, NoiseKey(SECRET), x, x_prev)
        v = est.update(t, sum(msgs.values()), step_norm=sn)
        x_prev, x = x, x - eta * v
        g = per_sample_grads(model, F.cross_entropy, X, y, x_gd).mean(0)
        x_gd = x_gd - eta * g
        assert torch.allclose(x, x_gd, atol=1e-10, rtol=0), t
    assert step_norm(x, flat_params(model)) > 0.1  # it actually moved


def test_estimator_enforces_order():
    mech = PrivateGD(mechanism="diff2", clip=1.0, noise_multiplier=1.0, n_samples=10, clip_diff=1.0,
                     restart_every=3, noise_multiplier_diff=2.0)
    est = GradientEstimator(mech)
    with pytest.raises(PrivacyError):
        est.update(1, torch.zeros(3))  # a difference before any restart
    est.update(0, torch.ones(3))
    with pytest.raises(PrivacyError):
        est.update(2, torch.ones(3))  # skipped round 1
    v = est.update(1, torch.ones(3))
    assert torch.equal(v, 2 * torch.ones(3))
    assert torch.equal(est.update(2, torch.ones(3)), 3 * torch.ones(3))
    assert torch.equal(est.update(3, torch.full((3,), 5.0)), torch.full((3,), 5.0))  # restart


def test_from_config_resolves_paper_defaults():
    cfg = PrivacyConfig(mechanism="diff2", epsilon=2.0, clip=1.0)
    mech = PrivateGD.from_config(cfg, rounds=500, n_samples=1000, num_partitions=10)
    assert mech.restart_every == 5 and mech.clip_diff == 30.0
    assert mech.noise_multiplier_diff / mech.noise_multiplier == pytest.approx(2 * math.sqrt(5))
    p = plan(cfg, 500, 1000, 10)
    assert p["noise_multiplier"] == pytest.approx(mech.noise_multiplier)
    assert p["epsilon"] <= 2.0
    assert PrivacyConfig(mechanism="diff2", epsilon=2.0, clip=1.0).resolved_restart_every(50) == 2


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(clip=1.0), "exactly one of `epsilon`"),
        (dict(clip=1.0, epsilon=1.0, noise_multiplier=1.0), "exactly one of `epsilon`"),
        (dict(epsilon=1.0), "clip"),
        (dict(epsilon=1.0, clip=-1.0), "privacy.clip"),
        (dict(epsilon=-1.0, clip=1.0), "privacy.epsilon"),
        (dict(epsilon=1.0, clip=1.0, delta=1.5), "privacy.delta"),
        (dict(epsilon=1.0, clip=1.0, clip_diff=3.0), "clip_diff applies to mechanism: diff2"),
        (dict(epsilon=1.0, clip=1.0, restart_every=4), "restart_every must be 1"),
        (dict(mechanism="diff2", epsilon=1.0, clip=1.0, restart_every=0), "restart_every"),
        (dict(mechanism="diff2", epsilon=1.0, clip=1.0, clip_diff=0.0), "clip_diff"),
        (dict(mechanism="diff2", epsilon=1.0, clip=1.0, noise_multiplier_diff=2.0), "noise_multiplier_diff"),
        (dict(mechanism="dp-sgd", epsilon=1.0, clip=1.0), "mechanism"),
        (dict(epsilon=1.0, clip=1.0, trust="nobody"), "trust"),
        (dict(epsilon=1.0, clip=1.0, accountant="gdp"), "accountant"),
        (dict(epsilon=1.0, clip=1.0, restart_share=1.0), "restart_share"),
        (dict(epsilon=1.0, clip=1.0, trust="coordinator", noise_split="aggregate"), "noise_split"),
        (dict(epsilon=1.0, clip=1.0, sigma=3.0), "sigma"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        PrivacyConfig(**kwargs)
