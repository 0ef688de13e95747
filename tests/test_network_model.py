"""The network model (dcoord.sim.network) and its use by `dcoord simulate` and `dcoord tune`: per-plane round
predictions next to compute and stragglers, and the recommended plane."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_cli import dcoord, one_line_error

from dcoord.coding.registry import make_scheme
from dcoord.sim import ModelDelays, SimulateConfig
from dcoord.sim.engine import queue_on_link
from dcoord.sim.network import (
    Network,
    best_plane,
    collective_transfer_s,
    ddp_step_s,
    ring_allreduce_s,
    ring_floor_s,
    star_floor_s,
    star_transfer_s,
)
from dcoord.sim.planes import plane_family, plane_rows, predict_planes
from dcoord.sim.planes import plane_round_s as round_s
from dcoord.stragglers import InjectConfig, make_straggler_model

GBIT_10MB = Network(link_gbps=1.0, model_mb=10.0)


def test_floors_are_the_ones_the_emulated_cluster_measured_against():
    # 1 Gbit/s, 10 MB: star 2nM/B = 0.16 n s; ring 2M(n-1)/(nB)
    assert star_floor_s(4, GBIT_10MB) == pytest.approx(0.640)
    assert star_floor_s(8, GBIT_10MB) == pytest.approx(1.280)
    assert ring_floor_s(4, GBIT_10MB) == pytest.approx(0.120)
    assert ring_floor_s(8, GBIT_10MB) == pytest.approx(0.140)
    assert ring_floor_s(1, GBIT_10MB) == 0.0
    # the star grows with n, the ring tends to 2M/B
    assert star_floor_s(16, GBIT_10MB) == pytest.approx(2 * star_floor_s(8, GBIT_10MB))
    assert ring_floor_s(1024, GBIT_10MB) < 2 * 10e6 / 125e6


def test_latency_terms_one_each_way_on_the_star_and_per_ring_step_on_the_ring():
    lat = Network(link_gbps=1.0, model_mb=10.0, latency_ms=1.0)
    assert star_transfer_s(8, lat) - star_floor_s(8, lat) == pytest.approx(2e-3)
    assert ring_allreduce_s(8, lat) - ring_floor_s(8, lat) == pytest.approx(14e-3)  # 2 (n-1) steps
    assert collective_transfer_s(8, lat) - ring_allreduce_s(8, lat) == pytest.approx(2e-3)  # control round trip


def test_rounds_add_the_planes_wire_and_overhead_to_their_close_times_and_ddp_waits_for_the_slowest():
    net = Network(link_gbps=1.0, model_mb=10.0, overhead_ms=5.0)
    # star: close_s already holds the messages' way up; the models' way down (n M / B) is added
    assert round_s("tcp", 0.3 + 0.64, 8, net) == pytest.approx(0.3 + 1.28 + 0.005)
    assert round_s("grpc", 1.0, 8, net) == round_s("tcp", 1.0, 8, net)
    assert round_s("allreduce", 0.3, 8, net) == pytest.approx(0.3 + 0.14 + 0.005)
    assert ddp_step_s(0.75, 8, net) == pytest.approx(0.75 + 0.14)
    pred = predict_planes({"star": 0.94, "collective": 0.3}, 8, net)
    assert set(pred) == {"tcp", "allreduce"} and best_plane(pred) == "allreduce"


def test_messages_queue_on_the_coordinators_link_in_finish_order():
    t = np.array([0.0, 0.0, 0.0, 1.0, 5.0])
    tasked = np.array([True, True, True, True, False])
    assert queue_on_link(t, tasked, 0.5).tolist() == [0.5, 1.0, 1.5, 2.0, 5.0]  # the untasked one untouched
    # a late finisher's upload starts when it is ready, after the queue has drained
    assert queue_on_link(np.array([0.0, 3.0]), np.array([True, True]), 0.5).tolist() == [0.5, 3.5]


def test_the_star_wins_only_where_latency_dominates_a_tiny_model():
    tiny_far = Network(link_gbps=10.0, model_mb=0.001, latency_ms=50.0)
    assert best_plane(predict_planes({"star": 0.1, "collective": 0.1}, 8, tiny_far)) == "tcp"
    assert best_plane(predict_planes({"star": 0.1 + 0.64, "collective": 0.1}, 8, GBIT_10MB)) == "allreduce"


def test_bad_network_values_and_planes_are_refused():
    with pytest.raises(ValueError, match="link_gbps and model_mb must be > 0"):
        Network(link_gbps=0.0, model_mb=10.0)
    with pytest.raises(ValueError, match="latency_ms and overhead_ms must be >= 0"):
        Network(link_gbps=1.0, model_mb=10.0, latency_ms=-1.0)
    with pytest.raises(ValueError, match="unknown plane 'mpi'"):
        plane_family("mpi")


def test_the_coded_round_pays_the_decodable_sets_compute_and_ddp_the_slowest():
    """n = 8, one worker 5x slow, 0.15 s a part: gc-cyclic s = 1 closes on the 7 fast workers' two parts."""
    n, part = 8, 0.15
    cfg = SimulateConfig(jobs=10)
    src = ModelDelays(make_straggler_model(InjectConfig(model="fixed", workers=[7], slowdown=5.0), n, 0),
                      base_time=0.0, base_comp=n * part)
    rep = plane_rows({"gc-cyclic": lambda: make_scheme("gc-cyclic", n, jobs=10, s=1),
                      "uncoded": lambda: make_scheme("uncoded", n, jobs=10)}, n, src, cfg, GBIT_10MB,
                     ("tcp", "allreduce"))
    gc, unc = rep["schemes"]["gc-cyclic"], rep["schemes"]["uncoded"]
    assert gc["close_s"]["collective"] == pytest.approx(2 * part)
    assert unc["close_s"]["collective"] == pytest.approx(5 * part)
    # star, gc: the 7 fast messages queue after 0.3 s of compute; the 8th is not needed
    assert gc["close_s"]["star"] == pytest.approx(0.3 + 7 * 0.08)
    # star, uncoded: the 7 fast uploads hide in the slow worker's compute; then its own message
    assert unc["close_s"]["star"] == pytest.approx(0.75 + 0.08)
    assert gc["round_s"]["allreduce"] == pytest.approx(0.3 + 0.14)
    assert gc["round_s"]["tcp"] == pytest.approx(0.3 + 7 * 0.08 + 0.64)
    assert rep["ddp_step_s"] == pytest.approx(0.75 + 0.14)
    assert rep["recommended"]["scheme"] == "gc-cyclic" and rep["recommended"]["plane"] == "allreduce"
    # the target: at most 0.6x the DDP step (the floor about 0.5x)
    assert rep["schemes"]["gc-cyclic"]["round_s"]["allreduce"] / rep["ddp_step_s"] < 0.6


def _job(tmp_path, network: dict) -> str:
    job = {"name": "netsim", "workers": 8, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
           "inject": {"model": "fixed", "workers": [7], "slowdown": 5.0},
           "simulate": {"base_comp": 1.2, "base_time": 0.0, "jobs": 10, "network": network}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


@pytest.mark.slow
def test_simulate_with_a_network_block_predicts_each_plane_and_recommends_one(tmp_path):
    p = dcoord("simulate", _job(tmp_path, {"link_gbps": 1.0, "model_mb": 10.0}), "--out", str(tmp_path / "o"),
               "--no-plot", "--compare", "uncoded")
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "o" / "simulation.json").read_text())["network"]
    assert set(data["schemes"]) == {"gc-cyclic", "uncoded"}
    assert data["schemes"]["gc-cyclic"]["round_s"]["allreduce"] == pytest.approx(0.3 + 0.14)
    assert data["recommended"]["plane"] == "allreduce" and data["recommended"]["scheme"] == "gc-cyclic"
    assert "recommended: gc-cyclic on the allreduce plane" in p.stdout


@pytest.mark.slow
def test_simulate_refuses_an_unknown_plane_in_one_line(tmp_path):
    p = dcoord("simulate", _job(tmp_path, {"link_gbps": 1.0, "model_mb": 10.0, "planes": ["mpi"]}), "--out",
               str(tmp_path / "o"), "--no-plot")
    one_line_error(p, 2, "simulate.network.planes")
    assert not (tmp_path / "o").exists()


def _profile(tmp_path, slow: float):
    d0 = np.zeros((30, 8))
    d0[:, 7] = slow  # one worker late by `slow` seconds every round
    path = tmp_path / "profile.csv"
    np.savetxt(path, d0, delimiter=",")
    return str(path)


def test_tune_ranks_scheme_and_plane_pairs_by_prediction(tmp_path):
    p = dcoord("tune", _profile(tmp_path, 1.2), "--base-comp", "1.2", "--max-delay", "0", "--link-gbps", "1",
               "--model-mb", "10", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    rec = data["recommended"]
    assert rec["plane"] == "allreduce" and not rec["scheme"].startswith("uncoded")
    assert rec["round_s"] == pytest.approx(0.3 + 0.14)
    assert data["ddp_step_s"] == pytest.approx(0.15 + 1.2 + 0.14)
    # a tiny model on far links: the star's two latencies beat the ring's 2 (n-1)
    p = dcoord("tune", _profile(tmp_path, 1.2), "--base-comp", "1.2", "--max-delay", "0", "--link-gbps", "10",
               "--model-mb", "0.001", "--latency-ms", "50", "--json")
    assert json.loads(p.stdout)["recommended"]["plane"] == "tcp"


@pytest.mark.parametrize(("args", "needle"), [
    (["--link-gbps", "1"], "--link-gbps and --model-mb go together"),
    (["--link-gbps", "0", "--model-mb", "10"], "--link-gbps must be a number > 0"),
    (["--link-gbps", "1", "--model-mb", "10", "--latency-ms", "-1"], "--latency-ms must be a number >= 0"),
    (["--link-gbps", "1", "--model-mb", "10", "--planes", "tcp,mpi"], "--planes: unknown plane(s) ['mpi']"),
])
def test_tune_network_options_bad_input_is_one_line(tmp_path, args, needle):
    one_line_error(dcoord("tune", _profile(tmp_path, 1.0), *args), 2, needle)
