"""Decode precision from the searched worst survivor set: the stored table, its reproducibility, and the guard
that refuses a run whose worst case breaks the precision it promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import dcoord, one_line_error

from dcoord.coding.precision import (
    check_decode_precision,
    decode_bound,
    decode_guard,
    promised_bound,
    stored_worst_cases,
)
from dcoord.coding.worstcase import search
from dcoord.config import load_config
from dcoord.errors import ConfigError
from dcoord.runtime.transport.registry import choose_plane

GRID_N = (8, 16, 32, 33, 64, 256)
GRID_S = (1, 2, 4, 8, 15, 16)

#: what was found by hand (float32 messages, every window plus 200 random sets, d = 256) and what the
#: sampled report of the time said: (code, n, s, worst found, reported before)
FOUND = [
    ("gc-cyclic", 32, 4, 1.8e-4, 3.6e-6),
    ("gc-cyclic", 33, 16, 6.1e-3, None),
    ("gc-cyclic", 64, 8, 2.6e-4, 1.5e-5),
    ("gc-cyclic", 256, 4, 9.9e-4, 2.5e-5),
    ("gc-cyclic", 256, 15, 5.1e-8, 4.0e-8),
    ("gc-binary", 32, 4, 4.6e-8, None),
]


def test_every_grid_size_is_stored():
    table = stored_worst_cases()
    for n in GRID_N:
        assert ("uncoded", n, 0) in table
        for s in GRID_S:
            if s >= n:
                continue
            assert ("gc-cyclic", n, s) in table and ("gc-binary", n, s) in table, (n, s)
            assert (("gc-fr", n, s) in table) == (n % (s + 1) == 0), (n, s)
            for code in ("gc-cyclic", "gc-binary"):
                assert table[(code, n, s)].complete, (code, n, s)


@pytest.mark.parametrize(("code", "n", "s", "found", "before"), FOUND)
def test_the_stored_worst_case_reproduces_what_was_found(code, n, s, found, before):
    """Where decoding has real coefficients the stored float32 figure is at least half the hand-found worst
    (the search finds sets at least as bad: 1.1e-3 at 32/4 against 1.8e-4 found by hand) and far above the
    sampled figure reported before; where it is 0/1 (gc-binary, the all-ones window when (s+1) | n) it is at
    most 2x the hand-found figure and 2x the uncoded sum's own rounding (those figures are the rounding of a
    plain sum, a little lower on this search's test gradients: 2.1e-8 against 4.6e-8 at 32/4)."""
    wc = stored_worst_cases()[(code, n, s)]
    worst = wc.worst_rel_error["float32"]
    if found < 1e-6:
        assert worst <= 2 * found and worst <= 2 * wc.uncoded_rel_error["float32"], (worst, found)
    else:
        assert worst >= found / 2, (worst, found)
        if before is not None:
            assert worst > 10 * before, (worst, before)


#: the sample re-searched here (a few seconds): a case stored from every survivor set (so the check is strict),
#: odd n with the real cyclic-MDS code, an even one with the seeded row, a binary code, the all-ones window.
#: (Left out, and said in the docs: at large s the landscape is rough and another seed can find more, up to
#: 10x at n = 32, s = 16, all far above the promised bound already.)
SAMPLE = [("gc-cyclic", 16, 8), ("gc-cyclic", 33, 4), ("gc-cyclic", 33, 8), ("gc-cyclic", 32, 8),
          ("gc-binary", 64, 8), ("gc-cyclic", 64, 15)]


@pytest.mark.parametrize(("code", "n", "s"), SAMPLE)
def test_the_stored_worst_case_is_at_least_what_a_fresh_search_finds(code, n, s):
    """Windows + 1,000 random sets + the local search, with another seed than the stored search's: nothing
    worse than the stored figure, in any dtype."""
    stored = stored_worst_cases()[(code, n, s)]
    fresh = search(code, n, s, random_sets=1000, seed=7, exhaustive_max=0)
    assert fresh.sets >= n + 1000 * 0.9  # windows + random (a few random sets repeat a window)
    for dt, e in fresh.worst_rel_error.items():
        assert e <= stored.worst_rel_error[dt] * (1 + 1e-12), (dt, e, stored.worst_rel_error[dt])


def test_search_says_how_it_searched():
    w = search("gc-cyclic", 8, 2)
    assert w.exhaustive and w.sets == 28 and "all 28" in w.how
    w = search("gc-cyclic", 20, 3, random_sets=50, exhaustive_max=0)
    assert not w.exhaustive and "20 windows" in w.how and "50 random" in w.how and "local search" in w.how


def _cfg(scheme="gc-cyclic", n=32, s=4, dtype="float32", **coding):
    return load_config(None, data={"name": "p", "workers": n, "coding": {
        "scheme": scheme, "stragglers": s, "payload_dtype": dtype, **coding}})


def test_guard_refuses_cyclic_float32_and_names_what_holds():
    with pytest.raises(ConfigError) as e:
        choose_plane(_cfg(), "none")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("coding.payload_dtype: float64", "gc-binary", "gc-fr", "coding.stragglers: 7",
                   "coding.precision: accept", "1e-05"):
        assert needle in msg, (needle, msg)
    for ok in (_cfg("gc-binary"), _cfg(dtype="float64"), _cfg("gc-fr", s=3), _cfg(s=7)):
        assert check_decode_precision(ok).holds
        choose_plane(ok, "none")
    accepted = check_decode_precision(_cfg(precision="accept"))
    assert not accepted.holds and accepted.bound > promised_bound("float32")


def test_guard_covers_the_sequential_codes_inner_code_and_a_summing_plane():
    with pytest.raises(ConfigError, match="inner code gc-cyclic"):
        check_decode_precision(load_config(None, data={"name": "p", "workers": 16, "coding": {
            "scheme": "m-sgc", "B": 1, "W": 2, "lambda": 4, "payload_dtype": "float32"}}))
    # a plane that adds the decoded terms in the payload dtype adds about n eps max|a_i f_i| / |g|
    plain = decode_bound("gc-binary", 256, 4, "float32")
    summed = decode_bound("gc-binary", 256, 4, "float32", summed_in_payload_dtype=True)
    assert summed > plain
    cyc = decode_guard("gc-cyclic", 64, 15, "float32", True)  # the all-ones window: still within
    assert cyc.holds and cyc.summed_in_payload_dtype
    assert not decode_guard("gc-cyclic", 64, 8, "bfloat16", True).holds


def _job(tmp_path, scheme, n, s, **coding):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({
        "name": "prec", "workload": "logreg-digits", "seed": 0, "workers": n, "rounds": 2, "batch_size": None,
        "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0}, "runtime": {"progress": False},
        "coding": {"scheme": scheme, "stragglers": s, "payload_dtype": "float32", **coding}}))
    return path


def test_dcoord_run_refuses_in_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    p = dcoord("run", str(_job(tmp_path, "gc-cyclic", 32, 4)), "--out", str(out))
    one_line_error(p, 2, "coding.precision: gc-cyclic at n=32, s=4 decodes float32 payloads")
    assert not out.exists()


def test_dcoord_coordinator_refuses_too(tmp_path):
    out = tmp_path / "run"
    p = dcoord("coordinator", str(_job(tmp_path, "gc-cyclic", 32, 4)), "--listen", "127.0.0.1:0", "--out", str(out))
    one_line_error(p, 2, "coding.precision: gc-cyclic at n=32, s=4")
    assert not out.exists()


@pytest.mark.slow  # a whole CLI process; the fast tier keeps the in-process refusals
def test_dcoord_coordinator_starts_with_gc_binary(tmp_path):
    """The same job with gc-binary passes the guard in the real command: the coordinator comes up and waits
    for its 32 workers (stopped there: the full 32-worker run is the slow test below)."""
    proc = subprocess.Popen([sys.executable, "-m", "dcoord", "coordinator", str(_job(tmp_path, "gc-binary", 32, 4)),
                             "--listen", "127.0.0.1:0", "--out", str(tmp_path / "run"), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on port" in line and "waiting for 32 workers" in line, line + proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_accepted_run_records_its_bound(tmp_path):
    """gc-cyclic at n = 9, s = 5 (worst float32 error 6.6e-5 over all 126 sets) is refused; with
    coding.precision: accept it runs and summary.json records the bound."""
    job = _job(tmp_path, "gc-cyclic", 9, 5)
    p = dcoord("run", str(job), "--out", str(tmp_path / "refused"))
    one_line_error(p, 2, "coding.precision: gc-cyclic at n=9, s=5")
    p = dcoord("run", str(job), "--out", str(tmp_path / "accepted"), "--set", "coding.precision=accept",
               timeout=900)
    assert p.returncode == 0, p.stderr
    rec = json.loads((tmp_path / "accepted" / "summary.json").read_text())["decode_precision"]
    assert rec["accepted_by_config"] and not rec["holds"] and rec["worst_rel_error"] > 1e-5
    assert rec["payload_dtype"] == "float32" and rec["source"] == "searched now"


@pytest.mark.slow
def test_gc_binary_runs_at_32_workers_float32(tmp_path):
    p = dcoord("run", str(_job(tmp_path, "gc-binary", 32, 4)), "--out", str(tmp_path / "binary"), timeout=1200)
    assert p.returncode == 0, p.stderr
    rec = json.loads((tmp_path / "binary" / "summary.json").read_text())["decode_precision"]
    assert rec["holds"] and not rec["accepted_by_config"] and rec["source"] == "stored"
