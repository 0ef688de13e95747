"""A worker against a coordinator under an attacker's control (trust: workers): it accounts its own releases,
binds its noise to everything that shapes a message, imports only what it allows, and refuses a malformed
assignment with one line instead of crashing.

The attacks are run as they were done: real workers (processes, or ``run_worker`` in-process where only the
worker's own logic is under test) registered with a fake coordinator that speaks the real protocol.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from rogue import FakeCoordinator, fake_coordinator

from dcoord.config import load_config
from dcoord.errors import DcoordError, PrivacyError
from dcoord.privacy.mechanisms import NoiseKey, PrivateGD, params_digest, release_binding
from dcoord.privacy.per_sample import clipped_sum
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.runtime.tensors import flat_params, from_proto
from dcoord.runtime.worker.budget import WorkerBudget
from dcoord.runtime.worker.private import WorkerPrivacy
from dcoord.wire import to_proto
from dcoord.workloads import load

SECRET = "shared-by-every-replica-" + "5" * 20


def _cfg(privacy: dict, **over):
    data = {"name": "acct", "workload": "logreg-digits", "seed": 0, "workers": 3, "rounds": 10, "batch_size": None,
            "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "privacy": {"mechanism": "dp-gd", "clip": 1.0, **privacy}, "runtime": {"progress": False}}
    data.update(over)
    return load_config(None, data=data)


def _assignment(rnd: int, job: int, params: np.ndarray, prev: np.ndarray | None = None, *, parts=(0,),
                coeffs=(1.0,), model: int = 0) -> pb.Assignment:
    models = [pb.ModelState(model=0, version=job, params=to_proto(params))]
    if prev is not None:
        models.append(pb.ModelState(model=0, version=job - 1, params=to_proto(prev)))
    return pb.Assignment(job_id="fake", round=rnd, tasks=[pb.TaskSpec(job=job, slot=0, parts=list(parts),
                                                                      coeffs=list(coeffs), model=model,
                                                                      model_version=job)], models=models)


def _clipped_part(cfg, part: int, params: np.ndarray) -> np.ndarray:
    """The noise-free message of partition ``part`` of a full-batch job: (1/N) sum of clipped gradients."""
    from dcoord.runtime.worker.compute import TaskComputer

    wl = load(cfg.workload, cfg.seed)
    parts, n = TaskComputer(wl, cfg.make_scheme().part_fractions(), None, cfg.seed).job_parts(0)
    idx = torch.as_tensor(parts[part])
    s = clipped_sum(wl.model, wl.loss_fn, wl.X[idx], wl.y[idx], cfg.privacy.clip, torch.as_tensor(params))
    return (s / n).double().numpy()


def _partition_std(cfg) -> float:
    wl = load(cfg.workload, cfg.seed)
    mech = PrivateGD.from_config(cfg.privacy, rounds=cfg.rounds, n_samples=wl.num_samples,
                                 num_partitions=cfg.make_scheme().num_parts())
    return mech.round_spec(0).partition_std


def _payload(r: pb.Result) -> np.ndarray:
    return from_proto(r.tasks[0].payload).astype(np.float64)


# ------------------------------------------------------------------------ noise bound to everything it shapes


def test_the_noise_seed_binds_everything_that_shapes_a_release():
    """Same question: the same binding (replicas agree bit for bit); any field of the release changed (noise,
    clip, relation, mechanism, noise split, round, partition, parameters): another binding, another draw."""
    base = dict(mechanism="dp-gd", clip=1.0, noise_multiplier=1.0, n_samples=100, num_partitions=3)
    spec = PrivateGD(**base).round_spec(0)
    digest = params_digest(np.zeros(5), None)
    b = release_binding(spec, 0, digest)
    assert b == release_binding(PrivateGD(**base).round_spec(0), 0, params_digest(np.zeros(5, np.float32), None))
    others = [
        release_binding(PrivateGD(**{**base, "noise_multiplier": 2.0}).round_spec(0), 0, digest),
        release_binding(PrivateGD(**{**base, "clip": 2.0}).round_spec(0), 0, digest),
        release_binding(PrivateGD(**base, neighbouring="replace-one").round_spec(0), 0, digest),
        release_binding(PrivateGD(**base, noise_split="aggregate").round_spec(0), 0, digest),
        release_binding(PrivateGD(**{**base, "mechanism": "diff2"}).round_spec(0), 0, digest),
        release_binding(PrivateGD(**base).round_spec(1), 0, digest),
        release_binding(spec, 1, digest),
        release_binding(spec, 0, params_digest(np.ones(5), None)),
        release_binding(spec, 0, digest, stream=1),
    ]
    assert len({b, *others}) == len(others) + 1


@pytest.mark.slow
def test_two_workers_sharing_a_secret_asked_at_two_noise_levels_cannot_be_solved_for_the_gradient(tmp_path):
    """The attack: two real workers sharing the noise secret (as replicas must) register with configs of
    epsilon 4 and 2 and are each asked once the same question. Had they added the same noise at two scales,
    (s2 a1 - s1 a2) / (s2 - s1) would be the clipped partition gradient (the issue measured 1.2e-9); with the
    noise bound to the noise level the two answers carry independent noise, and the best any combination of
    them does is what two independent releases allow."""
    cfgs = [_cfg({"epsilon": 4.0}), _cfg({"epsilon": 2.0})]
    x = flat_params(load("logreg-digits", 0).model)
    secret = tmp_path / "noise"
    secret.write_text(SECRET)
    fakes = [FakeCoordinator(c.to_yaml(), [_assignment(0, 0, x)], wait_s=120) for c in cfgs]
    with fake_coordinator(fakes[0]) as a0, fake_coordinator(fakes[1]) as a1:
        procs = [subprocess.Popen([sys.executable, "-m", "dcoord", "worker", "--coordinator", addr, "--device", "cpu",
                                   "--noise-secret-file", str(secret), "--max-epsilon", "100",
                                   "--connect-timeout", "60"], stderr=subprocess.PIPE, text=True)
                 for addr in (a0, a1)]
        errs = [p.communicate(timeout=280)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    (r1,), (r2,) = fakes[0].results, fakes[1].results
    assert r1 is not None and r2 is not None, errs
    a1_, a2_ = _payload(r1), _payload(r2)
    g = _clipped_part(cfgs[0], 0, x)
    s1, s2 = _partition_std(cfgs[0]), _partition_std(cfgs[1])
    assert s2 > 1.5 * s1  # epsilon 2 needs more noise than epsilon 4
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    assert rms(a1_ - g) == pytest.approx(s1, rel=0.15) and rms(a2_ - g) == pytest.approx(s2, rel=0.15)
    solved = (s2 * a1_ - s1 * a2_) / (s2 - s1)  # exact when both answers share one noise draw
    assert rms(solved - g) > s1  # not 1e-9: the noise does not cancel
    w1, w2 = 1 / s1 ** 2, 1 / s2 ** 2
    best = (w1 * a1_ + w2 * a2_) / (w1 + w2)  # the best linear estimate from two independent releases
    assert rms(best - g) >= 0.8 * (s1 * s2) / np.hypot(s1, s2)


# ------------------------------------------------------------------------------- the worker as its accountant


def test_the_workers_own_account_is_the_jobs_accountant_and_refuses_past_max_epsilon():
    """Each new message about a partition is charged at the multiplier it carried; after R releases the
    worker's epsilon is the plan's (same accountant); asking again the same question is free; a release past
    --max-epsilon is refused before it is computed, whatever the coordinator declared."""
    from dcoord.privacy.accounting import plan

    cfg = _cfg({"noise_multiplier": 3.0}, rounds=4)
    wl = load("logreg-digits", 0)
    parts = cfg.make_scheme().num_parts()
    per_worker = plan(cfg.privacy, 4, wl.num_samples, parts, replicas=1)["epsilon"]
    after_three = plan(cfg.privacy, 3, wl.num_samples, parts, replicas=1)["epsilon"]
    wp = WorkerPrivacy(cfg, wl, parts, key=NoiseKey(SECRET), max_epsilon=(after_three + per_worker) / 2)
    x0 = flat_params(wl.model)
    X, y = wl.X[:50], wl.y[:50]

    def ask(job, part, params=x0):
        return wp.part_message(wl.model, wl.loss_fn, X, y, job=job, part=part, params=params, prev=None)

    for job in range(3):
        ask(job, 0)
    ask(0, 1)
    first = ask(2, 0)
    assert np.array_equal(ask(2, 0, x0.copy()), first)  # the same question again: not charged
    assert wp.budget.epsilon(0) == pytest.approx(after_three, rel=1e-9)
    assert wp.budget.epsilon() == pytest.approx(after_three, rel=1e-9)  # the most over partitions
    with pytest.raises(PrivacyError, match="past its --max-epsilon"):
        ask(3, 0)  # a fourth release about partition 0 would pass the bound
    ask(3, 1)  # partition 1 has released one message: still within it
    with pytest.raises(PrivacyError, match="outside the job's rounds 0..3"):
        ask(4, 2)  # beyond the config's rounds
    assert wp.budget.refused == 1 and wp.ledger.refused == 1
    assert 3 not in wp.ledger.digests or 0 not in wp.ledger.digests[3]  # a refused release is not recorded
    budget = WorkerBudget("rdp", 1e-5, max_epsilon=None)  # without a bound it only accounts
    for _ in range(50):
        budget.charge(0, 1.0)
    assert budget.epsilon() > 10


def test_the_worker_charges_a_poisson_release_with_amplification_at_its_sample_rate():
    """Under Poisson sampling the worker drew the batch from its own secret, so each release is a subsampled
    Gaussian at rate q: charged as the accountant's (z, q, count), far below a full-batch release."""
    from dcoord.privacy.accounting import get_accountant

    full, sampled = WorkerBudget("rdp", 1e-5), WorkerBudget("rdp", 1e-5)
    for _ in range(100):
        full.charge(0, 1.1)
        sampled.charge(0, 1.1, sample_rate=0.01)
    assert sampled.epsilon(0) == pytest.approx(get_accountant("rdp").epsilon([(1.1, 0.01, 100)], 1e-5), rel=1e-12)
    assert sampled.epsilon(0) < full.epsilon(0) / 5
    with pytest.raises(PrivacyError, match="sample rate"):
        sampled.charge(0, 1.1, sample_rate=0.0)


@pytest.mark.slow
def test_a_fake_coordinator_asking_beyond_the_plan_gets_refused_and_its_mean_is_no_better_than_the_budget(tmp_path):
    """The attack: a 10-round config, its 10 rounds answered at the same parameters, then 200 more jobs at
    those parameters (the issue saw them answered, up to job 398, and their mean cut the noise 16x). The
    worker refuses every job beyond the config's rounds: the adversary's mean of what it got is one release
    at the planned noise per round of the plan, no better."""
    from dcoord.runtime.privacy_glue import compromised_epsilon
    from dcoord.runtime.worker.worker import run_worker

    cfg = _cfg({"noise_multiplier": 2.0})
    x = flat_params(load("logreg-digits", 0).model)
    plan_ = [_assignment(j, j, x) for j in range(10)] + [_assignment(j, j, x) for j in range(10, 210)]
    fake = FakeCoordinator(cfg.to_yaml(), plan_, wait_s=[60.0] * 10 + [0.1] * 200)  # the plan's answers come
    secret = tmp_path / "noise"
    secret.write_text(SECRET)
    refusals: dict[str, int] = {}
    max_eps = compromised_epsilon(cfg, load("logreg-digits", 0)) * 1.01
    with fake_coordinator(fake) as address:
        rounds = run_worker(address, connect_timeout=30, device="cpu", noise_secret_file=str(secret),
                            max_epsilon=max_eps, refusals=refusals)
    got = [r for r in fake.results if r is not None]
    assert [r is not None for r in fake.results[:10]] == [True] * 10
    assert all(r is None for r in fake.results[10:]) and rounds == 10
    assert refusals.get("privacy", 0) >= 1 and set(refusals) == {"privacy"}
    g = _clipped_part(cfg, 0, x)
    s = _partition_std(cfg)
    mean = np.mean([_payload(r) for r in got], axis=0)
    rms = float(np.sqrt(np.mean((mean - g) ** 2)))
    assert rms >= 0.8 * s / np.sqrt(10)  # what the plan's 10 releases allow (200 more would give s / sqrt(210))


@pytest.mark.slow
def test_a_restarted_worker_goes_on_from_its_saved_account_and_refuses_past_max_epsilon(tmp_path):
    """The attack: the coordinator has a worker release the plan's 10 rounds, then, after the worker process
    restarts, asks the same rounds again at other parameters (new questions, fresh noise, which a worker
    that forgot its account would answer). With --privacy-account the restarted worker loads what it already
    released and refuses: its epsilon stays within --max-epsilon across both processes."""
    from dcoord.privacy.accounting import plan

    cfg = _cfg({"noise_multiplier": 2.0}, coding={"scheme": "uncoded"})  # one replica: the plan is 10 releases
    wl = load("logreg-digits", 0)
    x = flat_params(wl.model)
    secret, account = tmp_path / "noise", tmp_path / "account.json"
    secret.write_text(SECRET)
    parts = cfg.make_scheme().num_parts()
    eps = [plan(cfg.privacy, r, wl.num_samples, parts, replicas=1)["epsilon"] for r in (10, 11)]
    max_eps = sum(eps) / 2  # the plan fits; one release more does not

    def worker_process(questions, wait_s):
        fake = FakeCoordinator(cfg.to_yaml(), questions, wait_s=wait_s)
        with fake_coordinator(fake) as address:
            proc = subprocess.run([sys.executable, "-m", "dcoord", "worker", "--coordinator", address,
                                   "--device", "cpu", "--noise-secret-file", str(secret), "--max-epsilon",
                                   repr(max_eps), "--privacy-account", str(account), "--connect-timeout", "60"],
                                  capture_output=True, text=True, timeout=280)
        return fake.results, proc.stderr

    first, err = worker_process([_assignment(j, j, x) for j in range(10)], 60.0)
    assert all(r is not None for r in first), err
    assert account.exists() and SECRET not in account.read_text()  # the account holds counts, no secret
    again, err = worker_process([_assignment(j, j, x + 0.01) for j in range(10)], 2.0)
    assert all(r is None for r in again), err
    assert "past its --max-epsilon" in err


def test_the_saved_account_continues_per_partition_and_charges_another_layout_to_every_partition(tmp_path):
    """Same data layout: the releases continue per partition. Another layout (other partitions of the data):
    every old release is charged to every partition, since a sample's old partition is unknown. A file the
    worker cannot read as its account is refused in one line and left in place."""
    store = tmp_path / "account.json"
    a = WorkerBudget("rdp", 1e-5, store=store, layout="L1")
    for _ in range(3):
        a.charge(0, 1.0)
    a.charge(1, 2.0)
    b = WorkerBudget("rdp", 1e-5, store=store, layout="L1")
    assert b.releases == {0: {(1.0, 1.0): 3}, 1: {(2.0, 1.0): 1}}
    assert b.epsilon(0) == pytest.approx(a.epsilon(0), rel=1e-12)
    c = WorkerBudget("rdp", 1e-5, store=store, layout="L2")
    assert c.carried == {(1.0, 1.0): 3, (2.0, 1.0): 1} and c.releases == {}
    c.charge(5, 1.0)
    d = WorkerBudget("rdp", 1e-5, store=store, layout="L1")  # L2's release now counts against L1 as a whole
    assert d.carried == {(1.0, 1.0): 1} and d.releases[0] == {(1.0, 1.0): 3}
    store.write_text("{not json")
    with pytest.raises(PrivacyError, match="not a privacy account") as exc:
        WorkerBudget("rdp", 1e-5, store=store, layout="L1")
    assert "\n" not in str(exc.value) and store.read_text() == "{not json"


# ------------------------------------------------------------------------------------ what a worker imports


def test_a_plugin_the_worker_does_not_allow_is_never_imported(tmp_path, monkeypatch):
    """The attack: ``plugins: [a module on the path that writes a file]`` to a worker that allows only
    ``mypkg.safe:*``. The plugin is refused, with one line, before the config is validated (which imports
    every plugin): the file is not written."""
    from dcoord.runtime.worker.guard import check_plugins
    from dcoord.runtime.worker.worker import run_worker

    marker = tmp_path / "pwned"
    (tmp_path / "evil_plugin_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _cfg({"noise_multiplier": 2.0}).model_dump(mode="json")
    cfg["plugins"] = ["evil_plugin_mod"]
    fake = FakeCoordinator(yaml.safe_dump(cfg), [])
    with fake_coordinator(fake) as address:
        with pytest.raises(DcoordError) as err:
            run_worker(address, connect_timeout=30, device="cpu", allow_workloads=["mypkg.safe:*"])
    msg = str(err.value)
    assert "plugin module 'evil_plugin_mod'" in msg and "--allow-workload 'evil_plugin_mod:*'" in msg
    assert "\n" not in msg
    assert not marker.exists() and "evil_plugin_mod" not in sys.modules
    check_plugins({"plugins": ["mypkg.safe"]}, ["mypkg.safe:*"])  # a module the worker allows
    check_plugins({"plugins": []}, [])
    with pytest.raises(DcoordError, match="not a list of module names"):
        check_plugins({"plugins": "mypkg.safe"}, ["mypkg.safe:*"])
    with pytest.raises(DcoordError, match="not a module name"):
        check_plugins({"plugins": ["mypkg.safe\nrm -rf /"]}, ["*"])


# ------------------------------------------------------------------------------ a malformed assignment


def test_a_malformed_or_incomplete_assignment_is_one_refused_line_and_a_counted_rejection(tmp_path, capsys):
    """A difference round without the previous parameters (the issue saw a ValueError traceback and exit 1),
    a part or a model the job does not have, coefficients that do not match the parts, parameters of the
    wrong size: each is refused with one line and counted, and the worker goes on."""
    from dcoord.runtime.worker.worker import run_worker

    cfg = _cfg({"mechanism": "diff2", "noise_multiplier": 2.0, "clip_diff": 10.0, "restart_every": 2})
    x0 = flat_params(load("logreg-digits", 0).model)
    x1 = (x0 + 0.01).astype(x0.dtype)
    plan_ = [_assignment(0, 0, x0),
             _assignment(1, 3, x1),  # a difference round without x_2 (the worker holds x_0 only)
             _assignment(2, 1, x1, x0, parts=(7,)),  # no part 7
             _assignment(3, 1, x1, x0, parts=(0, 1), coeffs=(1.0,)),
             _assignment(4, 1, x1, x0, model=3),
             _assignment(5, 1, x1[:10], x0),  # parameters of the wrong size
             _assignment(6, 1, x1, x0)]  # answered
    fake = FakeCoordinator(cfg.to_yaml(), plan_, wait_s=[60.0] + [3.0] * 5 + [60.0])  # a refusal sends nothing
    secret = tmp_path / "noise"
    secret.write_text(SECRET)
    refusals: dict[str, int] = {}
    with fake_coordinator(fake) as address:
        rounds = run_worker(address, connect_timeout=30, device="cpu", noise_secret_file=str(secret),
                            refusals=refusals)
    assert [r is not None for r in fake.results] == [True, False, False, False, False, False, True]
    assert rounds == 2 and refusals == {"malformed": 5}
    err = capsys.readouterr().err
    lines = [m for m in err.splitlines() if "refuses round" in m]
    assert len(lines) == 5 and all(m.startswith("worker 0 refuses round") and "(malformed)" in m for m in lines)
    assert "previous parameters x_(t-1)" in lines[0] and "Traceback" not in err
    assert "worker 0 refused 5 assignments: 5 malformed" in err


def test_a_worker_refuses_a_job_with_less_noise_than_its_floor():
    """--min-noise-multiplier: the smallest multiplier of any message the job would have this worker send
    (z, z_diff, over sqrt(J) with noise_split: aggregate, 0 without trust: workers) must reach the floor."""
    from dcoord.runtime.worker.guard import check_noise_floor, message_multiplier
    from dcoord.runtime.worker.worker import run_worker

    cfg = _cfg({"noise_multiplier": 2.0})
    assert message_multiplier(cfg) == 2.0
    check_noise_floor(cfg, 2.0)
    check_noise_floor(cfg, None)
    assert message_multiplier(_cfg({"noise_multiplier": 2.0, "noise_split": "aggregate"})) == pytest.approx(2 / 3 ** 0.5)
    assert message_multiplier(_cfg({"noise_multiplier": 2.0, "trust": "coordinator"})) == 0.0
    diff2 = _cfg({"mechanism": "diff2", "noise_multiplier": 2.0, "noise_multiplier_diff": 1.5, "clip_diff": 10.0,
                  "restart_every": 2})
    assert message_multiplier(diff2) == 1.5  # difference rounds carry the smaller multiplier here
    fake = FakeCoordinator(cfg.to_yaml(), [])
    with fake_coordinator(fake) as address:
        with pytest.raises(DcoordError) as err:
            run_worker(address, connect_timeout=30, device="cpu", min_noise_multiplier=2.5)
    assert "noise multiplier 2, below this worker's --min-noise-multiplier 2.5" in str(err.value)
    assert "\n" not in str(err.value) and fake.results == []
