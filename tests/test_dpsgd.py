"""Mini-batch DP-SGD: ``privacy.sampling: poisson`` with rate q (``privacy.sample_rate``).

Accounting is compared with Opacus's own RDP accountant stepped the way Opacus steps it for DP-SGD, and with
dp-accounting's Poisson-sampled Gaussian event; the coded run (real worker processes, a straggler) with a
single-process DP-SGD written out here: per-sample gradients by a plain autograd loop, clipping, the sum
over the round's batch divided by the expected batch q * N, and the SGD step. What the two share is the data
of the comparison: the workload, the round's Poisson batch and the workers' noise, drawn by the library from
the workers' secret.
"""

import copy
import dataclasses
import json
import re
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from dcoord.config import load_config
from dcoord.privacy.accounting import calibrate_noise, compute_epsilon, mechanism_history, plan
from dcoord.privacy.config import PrivacyConfig
from dcoord.privacy.mechanisms import NoiseKey, PrivateGD, poisson_batch, worker_message
from dcoord.runtime.local import run_local
from dcoord.workloads import load, split_parts

SECRET = "test-secret-dpsgd-0123456789abcdef-not-for-production"
WORKERS, ROUNDS, LR, Q, Z, CLIP = 4, 8, 0.5, 0.1, 1.0, 1.0


# -- accounting ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("q", "z", "steps"), [(0.01, 1.1, 1000), (0.1, 1.0, 100), (0.05, 2.0, 300)])
def test_poisson_epsilon_equals_opacus_rdp_accountant(q, z, steps):
    cfg = PrivacyConfig(mechanism="dp-gd", noise_multiplier=z, clip=1.0, sampling="poisson", sample_rate=q)
    eps = plan(cfg, steps, 1797)["epsilon"]
    opacus = RDPAccountant()  # stepped as Opacus's DP-SGD optimizer steps it: once per batch
    for _ in range(steps):
        opacus.step(noise_multiplier=z, sample_rate=q)
    assert round(eps, 4) == round(opacus.get_epsilon(delta=1e-5), 4)
    ev = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)),
                                           steps)
    other = dp_accounting.rdp.RdpAccountant()
    other.compose(ev)
    assert eps == pytest.approx(other.get_epsilon(1e-5), rel=1e-3)
    # amplification by subsampling: far below the same noise on full batches
    assert eps < compute_epsilon(mechanism_history("dp-gd", steps, z), 1e-5) / 5


def test_calibrated_poisson_noise_reaches_the_target_epsilon():
    cfg = PrivacyConfig(mechanism="dp-gd", epsilon=2.0, clip=1.0, sampling="poisson", sample_rate=0.05)
    p = plan(cfg, 200, 1797)
    assert p["history"] == [[p["noise_multiplier"], 0.05, 200]]
    assert 2.0 * (1 - 1e-3) <= p["epsilon"] <= 2.0
    z_full, _ = calibrate_noise(2.0, 1e-5, 200)
    assert p["noise_multiplier"] < z_full  # subsampling buys the same epsilon with less noise per release
    # the noise is on the mean over the expected batch q * N
    assert p["expected_batch_size"] == pytest.approx(0.05 * 1797)
    assert p["noise_std_partition"] == pytest.approx(p["noise_multiplier"] * 1.0 / (0.05 * 1797))


# -- the batch ---------------------------------------------------------------------------------------------
def test_poisson_batch_is_the_same_for_every_replica_and_new_each_round():
    key, same = NoiseKey(SECRET), NoiseKey(SECRET)
    n = 20000
    masks = [poisson_batch(key, t, n, 0.1) for t in range(3)]
    assert torch.equal(masks[0], poisson_batch(same, 0, n, 0.1))  # replicas: one batch, exact decoding
    assert not torch.equal(masks[0], masks[1])
    sizes = [int(m.sum()) for m in masks]
    assert all(abs(s - 0.1 * n) < 5 * np.sqrt(n * 0.1 * 0.9) for s in sizes), sizes
    # another secret, another batch: the coordinator (no secret) cannot tell which samples a round used
    assert not torch.equal(masks[0], poisson_batch(NoiseKey(SECRET + "x"), 0, n, 0.1))


def test_poisson_message_divides_by_the_expected_batch_and_binds_q_into_the_noise():
    wl = load("logreg-digits", 0)
    n = wl.num_samples
    X, y = wl.X[:0], wl.y[:0]  # no sample: the message is the noise alone
    key = NoiseKey(SECRET)
    x = torch.cat([p.detach().reshape(-1) for p in wl.model.parameters()])
    full = PrivateGD(mechanism="dp-gd", clip=1.0, noise_multiplier=1.0, n_samples=n).round_spec(0)
    sub = PrivateGD(mechanism="dp-gd", clip=1.0, noise_multiplier=1.0, n_samples=n, sample_rate=0.1).round_spec(0)
    assert sub.partition_std == pytest.approx(10 * full.partition_std)
    a = worker_message(wl.model, wl.loss_fn, X, y, spec=full, partition=0, key=key, params=x)
    b = worker_message(wl.model, wl.loss_fn, X, y, spec=sub, partition=0, key=key, params=x)
    # independent draws, not one draw scaled: two rates asked about the same round reveal nothing extra
    assert abs(float(torch.corrcoef(torch.stack([a, b]).double())[0, 1])) < 0.2


def test_poisson_sampling_needs_the_workers_secret_even_with_trust_coordinator(monkeypatch):
    from dcoord.errors import DcoordError
    from dcoord.runtime.worker.worker import _worker_privacy

    cfg = load_config(None, data={
        "workload": "logreg-digits", "workers": 4, "rounds": 3, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
        "privacy": {"mechanism": "dp-gd", "noise_multiplier": 1.0, "clip": 1.0, "trust": "coordinator",
                    "coordinator_seed": 5, "sampling": "poisson", "sample_rate": 0.1}})
    wl = load("logreg-digits", 0)
    for var in ("DCOORD_NOISE_SECRET", "DCOORD_NOISE_SECRET_FILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DcoordError, match="sampling: poisson"):
        _worker_privacy(cfg, wl, 4, None)
    monkeypatch.setenv("DCOORD_NOISE_SECRET", SECRET)
    wp = _worker_privacy(cfg, wl, 4, None)
    part = np.arange(100, 400)
    keep = wp.in_batch(2, part)
    assert np.array_equal(keep, poisson_batch(NoiseKey(SECRET), 2, wl.num_samples, 0.1).numpy()[part])
    assert not wp.answers_ledgered  # trust: coordinator: the key draws batches, no noise


# -- config ------------------------------------------------------------------------------------------------
BASE = {"workload": "logreg-digits", "workers": 4, "rounds": 5, "coding": {"scheme": "gc-cyclic", "stragglers": 1}}
DPGD = {"mechanism": "dp-gd", "noise_multiplier": 1.0, "clip": 1.0}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"batch_size": 64, "privacy": DPGD}, "privacy.sampling: poisson"),
        ({"batch_size": 64, "privacy": {**DPGD, "sampling": "poisson", "sample_rate": 0.1}}, "batch_size: null"),
        ({"privacy": {**DPGD, "mechanism": "diff2", "sampling": "poisson", "sample_rate": 0.1}},
         "needs mechanism: dp-gd"),
        ({"privacy": {**DPGD, "sampling": "poisson"}}, "privacy.sample_rate in (0, 1)"),
        ({"privacy": {**DPGD, "sampling": "poisson", "sample_rate": 1.5}}, "privacy.sample_rate in (0, 1)"),
        ({"privacy": {**DPGD, "sample_rate": 0.1}}, "applies to sampling: poisson only"),
    ],
)
def test_bad_sampling_configs_are_one_line_config_errors(extra, match):
    from dcoord.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(match)) as exc:
        load_config(None, data={**BASE, **extra})
    assert "\n" not in str(exc.value)


@pytest.mark.slow  # a whole CLI process; the fast tier keeps the in-process refusals
def test_bad_sampling_config_exits_2_with_one_line_and_no_run_directory(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("workload: logreg-digits\nworkers: 4\nrounds: 5\ncoding: {scheme: gc-cyclic, stragglers: 1}\n"
                   "privacy: {mechanism: diff2, noise_multiplier: 1.0, clip: 1.0, sampling: poisson, "
                   "sample_rate: 0.1}\n")
    p = subprocess.run([sys.executable, "-m", "dcoord", "run", str(job), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "needs mechanism: dp-gd" in err[0], p.stderr
    assert not (tmp_path / "out").exists()


# -- a coded run against single-process DP-SGD ----------------------------------------------------------
def _cfg():
    data = {
        "name": "dpsgd", "workload": "logreg-digits", "seed": 0, "workers": WORKERS, "rounds": ROUNDS,
        "optimizer": {"name": "sgd", "lr": LR}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
        "inject": {"model": "fixed", "workers": [2], "slowdown": 5},
        "privacy": {"mechanism": "dp-gd", "noise_multiplier": Z, "clip": CLIP, "sampling": "poisson",
                    "sample_rate": Q},
        "runtime": {"progress": False},
    }
    return load_config(None, data=data)


def _dp_sgd_step_direction(model: torch.nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """(1/(qN)) * sum over the batch of per-sample gradients clipped to CLIP, by a plain autograd loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(X.shape[0]):
        g = torch.autograd.grad(loss_fn(model(X[i : i + 1]), y[i : i + 1]), params)
        g = torch.cat([t.reshape(-1) for t in g]).double()
        total += g * min(1.0, CLIP / max(float(g.norm()), 1e-300))
    return total / (Q * n)


@pytest.mark.slow
def test_coded_poisson_run_equals_single_process_dp_sgd(tmp_path, monkeypatch):
    monkeypatch.setenv("DCOORD_NOISE_SECRET", SECRET)  # inherited by the spawned worker processes
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []

    def on_started(coord, procs, address):
        original = coord.privacy.direction

        def spy(job, decoded, params):
            seen.append((job, decoded.copy(), params.copy()))
            return original(job, decoded, params)

        coord.privacy.direction = spy

    summary = run_local(_cfg(), tmp_path, progress=False, on_started=on_started)
    assert summary["rounds_completed"] == ROUNDS
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(2 in r["stragglers"] for r in recs)  # decoded without the slow worker
    assert [s[0] for s in seen] == list(range(ROUNDS))
    assert summary["privacy"]["sample_rate"] == Q
    assert summary["epsilon"] == pytest.approx(compute_epsilon([(Z, Q, ROUNDS)], 1e-5), rel=1e-9)

    wl = load("logreg-digits", 0)
    model, n = copy.deepcopy(wl.model).double(), wl.num_samples
    X, y = wl.X.double(), wl.y
    parts = split_parts(np.arange(n), np.full(WORKERS, 1.0 / WORKERS))
    key = NoiseKey(SECRET)
    spec = PrivateGD(mechanism="dp-gd", clip=CLIP, noise_multiplier=Z, n_samples=n, num_partitions=WORKERS,
                     sample_rate=Q).round_spec(0)
    sizes = []
    for t, decoded, x_run in seen:
        x_ref = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert np.abs(x_ref.numpy() - x_run).max() < 1e-6 * max(1.0, np.abs(x_run).max()), t
        batch = np.flatnonzero(poisson_batch(key, t, n, Q).numpy())
        sizes.append(len(batch))
        g = _dp_sgd_step_direction(model, wl.loss_fn, X[batch], y[batch], n)
        # the workers' noise, one draw per partition: their message about no sample at the run's x_t
        x_t = torch.from_numpy(x_run)
        for j in range(len(parts)):
            g += worker_message(wl.model, wl.loss_fn, wl.X[:0], wl.y[:0], spec=dataclasses.replace(spec, round=t), partition=j, key=key,
                                params=x_t).double()
        assert np.abs(decoded - g.numpy()).max() < 1e-6 * max(1.0, np.abs(g.numpy()).max()), t
        with torch.no_grad():
            off = 0
            for p in model.parameters():
                p -= LR * g[off : off + p.numel()].view_as(p)
                off += p.numel()
    assert len(set(sizes)) > 1 and all(0 < s < n / 2 for s in sizes)  # a new batch of about q * N each round
    final = torch.load(tmp_path / "model.pt")
    ref = dict(model.named_parameters())
    for name, v in final.items():
        assert (v.double() - ref[name].detach()).abs().max() < 1e-6 * max(1.0, float(v.abs().max())), name
