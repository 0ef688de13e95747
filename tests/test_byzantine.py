"""coding.byzantine: the agreement rule (exhaustively over small groups) and the config's refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dcoord.coding.byzantine import agree, check_byzantine, decide_group, digest, replication
from dcoord.config import load_config
from dcoord.errors import ConfigError, SchemeError

H, X, Y = b"honest", b"x", b"y"  # the honest digest and two wrong ones


def _cases(a: int, s: int):
    """Every group of r = 2a+s+1 replicas with <= a liars (each sending H, X or Y), every straggler set of
    size <= s, and the rest delivered. (Every prefix of every arrival order is a subset of what arrived: the
    test checks every subset, which covers every order.)"""
    r = replication(a, s)
    members = list(range(r))
    for k in range(a + 1):
        for liars in itertools.combinations(members, k):
            for lies in itertools.product((H, X, Y), repeat=k):
                sent = {w: H for w in members} | dict(zip(liars, lies))
                for m in range(s + 1):
                    for late in itertools.combinations(members, m):
                        yield members, sent, liars, [w for w in members if w not in late]


@pytest.mark.parametrize("a,s", [(1, 0), (1, 1), (2, 0), (1, 2), (2, 1)])
def test_never_accepts_a_lie_and_always_decides(a, s):
    seen = 0
    for members, sent, liars, arrived in _cases(a, s):
        for k in range(len(arrived) + 1):
            for sub in itertools.combinations(arrived, k):
                got = {w: sent[w] for w in sub}
                decision = decide_group(got, members, a)
                assert decision.verdict != "undecidable"
                if decision.verdict == "accepted":
                    assert decision.value == H
                    # everyone accused sent a wrong digest: only liars
                    assert decision.offenders == {v for v in got if got[v] != H}
                    assert decision.offenders <= set(liars)
        # once every non-straggler delivered, the group has decided
        decision = decide_group({w: sent[w] for w in arrived}, members, a)
        assert decision.verdict == "accepted" and decision.value == H
        seen += 1
    assert seen > 0


def test_more_liars_than_tolerated_stop_or_agree_never_silently_wrong():
    """a + 1 liars sending different values: the group is undecidable once nobody else can deliver; two
    values each backed a + 1 times are undecidable too."""
    a = 1
    members = [0, 1, 2]
    assert decide_group({0: X, 1: Y, 2: H}, members, a).verdict == "undecidable"
    assert decide_group({0: X, 1: Y}, members, a).verdict == "waiting"
    members4 = [0, 1, 2, 3]  # s = 1
    assert decide_group({0: X, 1: X, 2: H, 3: H}, members4, a).verdict == "undecidable"


def test_agree_over_groups_names_every_offender():
    groups = [[0, 1, 2], [3, 4, 5]]
    ag = agree({0: H, 1: X, 2: H, 3: b"g", 4: b"g"}, groups, 1)
    assert ag.complete and ag.offenders == {1} and ag.undecidable == []
    ag = agree({0: H, 1: X, 3: b"g"}, groups, 1)
    assert not ag.complete and ag.offenders == frozenset()


def test_digest_is_of_the_bytes_as_sent():
    x = np.arange(5, dtype=np.float64)
    assert digest(x) == digest(x.copy()) != digest(x.astype(np.float32))
    y = x.copy()
    y[3] = np.nextafter(y[3], 10)
    assert digest(y) != digest(x)


@pytest.mark.parametrize("scheme,n,a,s,words", [
    ("gc-cyclic", 6, 1, 0, "needs a repetition code"),
    ("uncoded", 6, 1, 0, "needs a repetition code"),
    ("gc-fr", 2, 1, 0, "more than the 2 workers"),
    ("gc-fr", 9, 1, 1, r"to divide workers \(got 9\)"),
])
def test_check_refuses_in_one_line(scheme, n, a, s, words):
    with pytest.raises(SchemeError, match=words) as e:
        check_byzantine(scheme, n, a, s)
    assert "\n" not in str(e.value)


def test_config_builds_groups_of_2a_plus_s_plus_1():
    cfg = load_config(None, data={"workers": 8, "coding": {"scheme": "gc-fr", "stragglers": 1, "byzantine": 1}})
    sch = cfg.make_scheme()
    assert sch.group_size == 4 and sch.n_groups == 2
    cfg = load_config(None, data={"workers": 7, "coding": {"scheme": "gc-binary", "byzantine": 1}})
    assert all(len(g) >= 3 for g in cfg.make_scheme().groups)


@pytest.mark.parametrize("data,words", [
    ({"workers": 6, "coding": {"scheme": "gc-cyclic", "stragglers": 1, "byzantine": 1}}, "repetition code"),
    ({"workers": 8, "coding": {"scheme": "gc-fr", "byzantine": 1}}, "to divide workers"),
    ({"workers": 6, "coding": {"scheme": "gc-fr", "byzantine": 1}, "runtime": {"elastic": True}}, "elastic"),
])
def test_config_refusals_are_one_line(data, words):
    with pytest.raises(ConfigError, match=words) as e:
        load_config(None, data=data)
    assert "\n" not in str(e.value)


def _check(exclude_after: int = 2):
    from dcoord.runtime.coordinator.byzantine import ByzantineCheck

    cfg = load_config(None, data={"workers": 6, "coding": {"scheme": "gc-fr", "byzantine": 1}})
    events = []
    return ByzantineCheck(cfg.make_scheme(), 1, 0, exclude_after, events.append), events


def test_check_uses_a_verified_payload_counts_offences_and_excludes_after_k():
    """Worker 0 sends the honest digest with a wrong payload: it is the first claimant, its payload fails its
    digest (an offence), and worker 2's is used; worker 4's wrong digest is an offence; at the second offence
    (coding.exclude_after: 2) a worker is excluded and its results are refused."""
    chk, events = _check()
    good, other = np.ones(4), np.full(4, 2.0)
    for r in range(2):
        chk.start(r)
        for w, d in {0: digest(good), 1: None, 2: digest(good), 3: digest(other), 4: digest(-other),
                     5: digest(other)}.items():
            if d is not None:
                assert chk.note(w, [d]) is None
        ag = chk.agreement()
        assert chk.check(ag)
        payloads = {0: -good, 2: good, 3: other, 4: -other, 5: other}
        assert chk.close(ag, payloads) == {2, 3}
    assert chk.offences == {0: 2, 4: 2} and chk.excluded == {0, 4}
    assert [(e["worker"], e["round"], e["kind"]) for e in events] == [
        (4, 0, "digest"), (0, 0, "payload"), (4, 1, "digest"), (0, 1, "payload")]
    chk.start(2)
    assert chk.note(0, [digest(good)]) == "excluded"
    # a late result of round 1, from honest worker 1 and from a liar
    chk.late(1, 1, [digest(good)])
    chk.late(1, 5, [digest(good)])
    assert chk.offences[1] == 0 and chk.offences[5] == 1
    again, _ = _check()
    again.load_state_dict(chk.state_dict())
    assert again.offences == chk.offences and again.excluded == chk.excluded


def test_check_stops_when_no_value_has_a_plus_1_copies():
    chk, _ = _check()
    chk.start(0)
    for w, d in {0: b"x" * 32, 1: b"y" * 32, 2: b"z" * 32}.items():
        chk.note(w, [d])
    from dcoord.errors import RunFailed

    with pytest.raises(RunFailed, match=r"group 0 \(workers \[0, 1, 2\]\).*more than coding.byzantine = 1"):
        chk.check(chk.agreement())


def test_robust_aggregators_are_approximate_baselines():
    from dcoord.coding.robust import aggregate

    rng = np.random.default_rng(0)
    honest = 1.0 + 0.1 * rng.standard_normal((9, 5))
    bad = np.vstack([honest, np.full((2, 5), -100.0)])
    for kind in ("median", "krum", "centered-clipping"):
        got = aggregate(kind, bad, f=2, center=np.ones(5), tau=0.5)
        assert np.abs(got - 1.0).max() < 0.5, kind  # near the honest mean despite two -100 rows
    assert np.abs(aggregate("mean", bad) - 1.0).max() > 10  # the plain mean is not
    with pytest.raises(SchemeError, match="krum needs n >= 2f \\+ 3"):
        aggregate("krum", bad[:5], f=2)


@pytest.mark.parametrize("coding,words", [
    ({"scheme": "gc-fr", "aggregate": "median"}, "set coding.scheme: uncoded"),
    ({"scheme": "uncoded", "aggregate": "krum", "byzantine": 2}, "krum needs workers >= 2"),
])
def test_aggregate_refusals(coding, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, data={"workers": 6, "coding": coding})
    assert load_config(None, data={"workers": 6, "coding": {"scheme": "uncoded", "aggregate": "krum",
                                                            "byzantine": 1}}).make_scheme().name == "uncoded"


def test_status_carries_offences_and_exclusions():
    """`dcoord status` reads them from the StatusReply (the wire form round-trips)."""
    from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
    from dcoord.wire import StatusInfo, status_from_proto, status_to_proto

    st = StatusInfo(job_id="j", name="n", offences={"4": 2}, excluded=[4])
    back = status_from_proto(pb.StatusReply.FromString(status_to_proto(st).SerializeToString()))
    assert back.offences == {"4": 2} and back.excluded == [4]


def test_prometheus_and_snapshot_show_offences(tmp_path):
    from prometheus_client import generate_latest

    from dcoord.runtime.coordinator.coordinator import Coordinator
    from dcoord.runtime.coordinator.metrics import CoordinatorMetrics

    cfg = load_config(None, data={"name": "pm", "workers": 6, "coding": {"scheme": "gc-fr", "byzantine": 1}})
    coord = Coordinator(cfg, tmp_path / "run")
    try:
        text = generate_latest(CoordinatorMetrics(coord).registry).decode()
        assert "dcoord_byzantine_offences" not in text  # nobody has lied
        coord.byz.offend(4, 0, "digest")
        text = generate_latest(CoordinatorMetrics(coord).registry).decode()
        assert 'dcoord_byzantine_offences_total{job_name="pm",worker="4"} 1.0' in text
        assert 'dcoord_workers_excluded{job_name="pm"} 1.0' in text
        assert coord.status().offences == {"4": 1} and coord.status().excluded == [4]
    finally:
        coord.rundir.close()
