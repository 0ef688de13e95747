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
