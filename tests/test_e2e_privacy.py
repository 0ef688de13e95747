"""Private training end to end: real coordinator and worker processes over gRPC, DP-GD and DIFF2.

Each run is compared with a single-process reference: the privacy library's per-part messages and seeded
noise (the data of the comparison), DIFF2's running estimate and the SGD step written out here from the
paper's update; epsilon is checked against dp-accounting's RDP accountant (a test dependency), and coded
runs with the uncoded run: gradient coding of privatized messages must decode exactly.
"""

import json
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
import torch
from reference import max_rel_diff

from dcoord.config import load_config
from dcoord.privacy.accounting import compute_epsilon, mechanism_history
from dcoord.privacy.mechanisms import NoiseKey, PrivateGD, worker_message
from dcoord.privacy.per_sample import flat_params, step_norm, unflatten
from dcoord.runtime.local import run_local
from dcoord.wire import result_to_proto
from dcoord.workloads import load, split_parts

pytestmark = pytest.mark.slow

SECRET = "test-secret-0123456789abcdef-not-for-production"
WORKERS, ROUNDS, LR = 4, 10, 0.5
PRIVACY = {"mechanism": "diff2", "noise_multiplier": 2.0, "clip": 1.0, "clip_diff": 10.0, "restart_every": 4}


def _cfg(scheme: str, **privacy):
    data = {
        "name": "private", "workload": "logreg-digits", "seed": 0, "workers": WORKERS, "rounds": ROUNDS,
        "optimizer": {"name": "sgd", "lr": LR}, "coding": {"scheme": scheme, "stragglers": 1},
        "inject": {"model": "fixed", "workers": [2], "slowdown": 5} if scheme != "uncoded" else {"model": "none"},
        "privacy": {**PRIVACY, **privacy}, "runtime": {"progress": False},
    }
    return load_config(None, data=data)


def reference_run(trust: str = "workers", coordinator_seed: int | None = None) -> dict:
    """DIFF2-GD in one process: sum of per-part messages m_j, running estimate v_t, x <- x - lr * v_t.

    DIFF2 (Murata & Suzuki, ICML 2023): every T-th round (t mod T == 0, T = restart_every = 4) restarts the estimate from
    the private gradient, v_t = g_t; the rounds between add the private gradient difference,
    v_t = v_{t-1} + (g(x_t) - g(x_{t-1}))~. Written here, not taken from dcoord's GradientEstimator."""
    wl = load("logreg-digits", 0)
    model, n = wl.model, wl.num_samples
    parts = split_parts(np.arange(n), np.full(WORKERS, 1.0 / WORKERS))
    mech = PrivateGD(mechanism="diff2", clip=1.0, noise_multiplier=2.0, n_samples=n, num_partitions=WORKERS,
                     clip_diff=10.0, restart_every=4, noise_multiplier_diff=mech_ratio(2.0), trust=trust)
    key = NoiseKey(SECRET) if trust == "workers" else None
    v = None
    x_prev = None
    for t in range(ROUNDS):
        x = flat_params(model)
        sn = 0.0 if mech.is_restart(t) else step_norm(x, x_prev)
        spec = mech.round_spec(t, sn)
        total = sum(
            worker_message(model, wl.loss_fn, wl.X[torch.as_tensor(p)], wl.y[torch.as_tensor(p)], spec=spec,
                           partition=j, key=key, params=x, prev_params=x_prev if spec.kind == "difference" else None
                           ).double()
            for j, p in enumerate(parts)
        )
        if trust == "coordinator":  # the coordinator's own noise, added once to the decoded aggregate
            total = mech.add_coordinator_noise(total, t, coordinator_seed, sn)
        v = total.clone() if t % 4 == 0 else v + total
        with torch.no_grad():
            for name, p in model.named_parameters():
                p -= LR * unflatten(model, v.float())[name]
        x_prev = x
    return model.state_dict()


def mech_ratio(z1: float) -> float:
    """The paper's noise split (restarts 1/u of the RDP budget, u = 1.25) for T = 4: z2 = 2 sqrt(T) z1."""
    from dcoord.privacy.accounting import diff2_noise_ratio

    return diff2_noise_ratio(4, 0.8) * z1


@pytest.fixture(scope="module")
def workers_secret():
    mp = pytest.MonkeyPatch()
    mp.setenv("DCOORD_NOISE_SECRET", SECRET)  # inherited by the spawned worker processes
    yield SECRET
    mp.undo()


@pytest.fixture(scope="module")
def uncoded_run(tmp_path_factory, workers_secret):
    out = tmp_path_factory.mktemp("uncoded")
    summary = run_local(_cfg("uncoded"), out, progress=False)
    return out, summary


def test_uncoded_private_run_matches_single_process_diff2(uncoded_run):
    out, summary = uncoded_run
    assert summary["rounds_completed"] == ROUNDS
    assert max_rel_diff(torch.load(out / "model.pt"), reference_run()) < 1e-5
    # and the noise is really there: the noiseless run ends elsewhere
    assert summary["privacy"]["noise_std_partition"] > 0


def test_coded_private_run_decodes_exactly_the_sum_of_part_messages(tmp_path, workers_secret):
    """Every round's decoded aggregate is exactly sum_j m_j at the parameters of that round.

    (Not compared with a separate uncoded run: the noise binds the parameters asked about, and a coded
    run's parameters differ from an uncoded run's in the last float32 bit after the first decode, which
    gives both runs independent noise from then on.)
    """
    seen: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def on_started(coord, procs, address):
        original = coord.privacy.direction

        def spy(job, decoded, params):
            prev = None if coord.privacy.prev is None else coord.privacy.prev.copy()
            seen.append((job, decoded.copy(), params.copy(), prev))
            return original(job, decoded, params)

        coord.privacy.direction = spy

    summary = run_local(_cfg("gc-cyclic"), tmp_path, progress=False, on_started=on_started)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(2 in r["stragglers"] for r in recs)  # decoded without the slow worker
    assert summary["max_decode_residual"] < 1e-9
    wl = load("logreg-digits", 0)
    model, n = wl.model, wl.num_samples
    parts = split_parts(np.arange(n), np.full(WORKERS, 1.0 / WORKERS))
    mech = PrivateGD(mechanism="diff2", clip=1.0, noise_multiplier=2.0, n_samples=n, num_partitions=WORKERS,
                     clip_diff=10.0, restart_every=4, noise_multiplier_diff=mech_ratio(2.0))
    key = NoiseKey(SECRET)
    assert [s[0] for s in seen] == list(range(ROUNDS))
    for t, decoded, x, prev in seen:
        xt = torch.from_numpy(x)
        pt = None if prev is None or mech.is_restart(t) else torch.from_numpy(prev)
        spec = mech.round_spec(t, 0.0 if pt is None else step_norm(xt, pt))
        total = sum(
            worker_message(model, wl.loss_fn, wl.X[torch.as_tensor(p)], wl.y[torch.as_tensor(p)], spec=spec,
                           partition=j, key=key, params=xt, prev_params=pt).double()
            for j, p in enumerate(parts)
        )
        assert np.abs(decoded - total.numpy()).max() < 1e-9 * max(1.0, np.abs(total.numpy()).max()), t


def test_epsilon_is_recorded_per_round_and_matches_the_accountant(uncoded_run):
    out, summary = uncoded_run
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in recs]
    assert all(b > a for a, b in zip(eps, eps[1:]))
    assert [r["jobs"][0]["privacy_round"] for r in recs[:5]] == ["restart", "difference", "difference",
                                                                 "difference", "restart"]
    hist = mechanism_history("diff2", ROUNDS, 2.0, noise_multiplier_diff=mech_ratio(2.0), restart_every=4)
    expected = compute_epsilon(hist, 1e-5)
    assert summary["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert eps[-1] == pytest.approx(expected, rel=1e-9)
    ind = dp_accounting.rdp.RdpAccountant(orders=[1 + x / 10 for x in range(1, 100)] + list(range(12, 257)))
    ind.compose(dp_accounting.GaussianDpEvent(2.0), 3)  # restarts at t = 0, 4, 8
    ind.compose(dp_accounting.GaussianDpEvent(mech_ratio(2.0)), ROUNDS - 3)
    assert summary["epsilon"] == pytest.approx(ind.get_epsilon(1e-5), rel=0.01)


def test_workers_trust_never_shows_the_seed_to_the_coordinator(tmp_path, workers_secret):
    seen: list[bytes] = []

    def on_started(coord, procs, address):
        original = coord.handle_result

        def spy(res, conn, arrays=None):
            seen.append(result_to_proto(res).SerializeToString())
            if arrays is not None:  # the payloads came on the data plane (tcp, the default), not in ``res``
                seen.extend(a.tobytes() for a in arrays)
            return original(res, conn, arrays)

        coord.handle_result = spy
        on_started.coord = coord

    run_local(_cfg("gc-cyclic"), tmp_path, progress=False, on_started=on_started)
    coord = on_started.coord
    assert seen, "the spy saw no results"
    key = NoiseKey(SECRET)
    derived = [key._key]  # per-message seeds now also bind the parameters; the key is what must never leak
    needles = [SECRET.encode(), SECRET.encode().hex().encode()] + derived
    stored = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    for blob in seen + stored:
        assert not any(n in blob for n in needles)
    # nothing reachable from the coordinator holds a worker key, and it has no seed of its own
    assert coord.privacy.seed is None
    assert not any(isinstance(v, NoiseKey) for obj in (coord, coord.privacy) for v in vars(obj).values())
    # the config it serves to workers names where the secret lives, never the secret
    assert SECRET not in coord.cfg.to_yaml()


def test_coordinator_trust_adds_noise_once_after_decoding(tmp_path):
    summary = run_local(_cfg("gc-cyclic", trust="coordinator", coordinator_seed=7), tmp_path, progress=False)
    assert summary["privacy"]["trust"] == "coordinator"
    ref = reference_run(trust="coordinator", coordinator_seed=7)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("batch_size=64", "privacy: needs batch_size: null"),
        ("coding.models=3", "privacy: needs one model"),
        ("privacy.epsilon=-1", "privacy.epsilon"),
    ],
)
def test_bad_private_configs_exit_2_with_one_line(tmp_path, override, match):
    job = tmp_path / "job.yaml"
    job.write_text("workload: logreg-digits\nworkers: 4\nrounds: 5\ncoding: {scheme: gc-cyclic, stragglers: 1}\n"
                   "privacy: {mechanism: dp-gd, noise_multiplier: 1.0, clip: 1.0}\n")
    extra = ["--set", "coding.scheme=m-sgc", "--set", "coding.B=1", "--set", "coding.W=2",
             "--set", "coding.lambda=2"] if "models" in override else []
    if override.startswith("privacy.epsilon"):
        extra = ["--set", "privacy.noise_multiplier=null"]
    p = subprocess.run([sys.executable, "-m", "dcoord", "run", str(job), "--set", override, *extra],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], p.stderr
