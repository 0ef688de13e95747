"""The emulated cluster of bench/netcluster.py: built, used and torn down by the bench's own code.

A 2-worker cluster (plus the coordinator's namespace) on links capped at 100 Mbit/s: a dcoord run on the tcp
plane completes its rounds and its round times are read from metrics.jsonl; a transfer of a known size takes
at least size / B (the cap is in force); afterwards no namespace, link or bridge of it is left. A bench run
interrupted with Ctrl-C removes everything too, and a crashed run's leftovers are removed by the next one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import netcluster  # noqa: E402
import netcluster_net as net  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WHY = net.unavailable()
needs_netns = pytest.mark.skipif(WHY is not None, reason=f"emulated cluster: {WHY}")


def _ours(tag: str) -> list[str]:
    return [ns for ns in net.namespaces() if ns.startswith(tag)]


@needs_netns
def test_a_mini_cluster_runs_dcoord_caps_its_links_and_leaves_nothing(tmp_path):
    a = netcluster.parser().parse_args(["--gbps", "0.1", "--model-mb", "0.4", "--rounds", "4", "--warmup", "1",
                                        "--part-s", "0.01"])
    with net.Cluster(a.gbps) as cl:
        tag = cl.tag
        cl.add_node("coord")
        cl.add_node("w0")
        cl.add_node("w1")
        assert len(_ours(tag)) == 4  # hub + 3 nodes
        shaped = cl.qdiscs()
        assert shaped.count("tbf") == 6 and "rate 100Mbit" in shaped  # both ends of each of the 3 links
        r = netcluster.run_dcoord(cl, 2, "tcp", "uncoded", False, a, tmp_path)
        assert len(r["periods"]) == 3 and r["round_s"] > 0
        # the cap: 2.5 MB through two 100 Mbit/s links takes at least 2.5e6 * 8 / 1e8 = 0.2 s
        size = 2_500_000
        took = netcluster.measure_cap(cl, "w0", "w1", size)
        assert took >= size * 8 / (a.gbps * 1e9)
    assert _ours(tag) == []
    assert "vn1" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


@needs_netns
def test_ctrl_c_mid_run_removes_the_cluster_and_a_crashed_runs_leftovers_go_next_time(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "netcluster.py"), "--n", "2", "--no-slow",
                          "--planes", "tcp", "--rounds", "50", "--out", str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tag = f"{net.PREFIX}{p.pid}-"
    deadline = time.monotonic() + 120
    while len(_ours(tag)) < 4 and time.monotonic() < deadline:  # the hub, the coordinator and two workers
        time.sleep(0.2)
    assert len(_ours(tag)) == 4, p.communicate(timeout=60)[0] if p.poll() is not None else "no cluster"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0 and "KeyboardInterrupt" in out
    assert _ours(tag) == []
    # a crashed run (its process gone) left a namespace: the next start removes it, a live run's stays
    dead = f"{net.PREFIX}{p.pid}-dead-hub"
    live = f"{net.PREFIX}{os.getpid()}-live-hub"
    for ns in (dead, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        removed = net.cleanup_leftovers()
        assert dead in removed and live not in removed
        assert _ours(dead) == [] and _ours(live) == [live]
    finally:
        subprocess.run(["ip", "netns", "del", live], check=False)
        subprocess.run(["ip", "netns", "del", dead], check=False)
