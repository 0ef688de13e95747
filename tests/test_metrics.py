"""The coordinator's Prometheus endpoint, scraped over HTTP during and after real runs."""

import argparse
import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.coordinator.metrics import metrics_hook
from dcoord.runtime.local import run_local
from dcoord.runtime.tensors import flat_params
from dcoord.workloads import load as load_workload

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(name, frozenset(labels)): value} from one real HTTP scrape."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def _run_with_metrics(tmp_path, data: dict, scrape_at: int, during_started=None):
    port = _free_port()
    hook = metrics_hook(argparse.Namespace(metrics_port=port), "127.0.0.1")
    seen: dict = {}

    def on_started(coord, procs, address):
        seen["metrics"] = hook(coord)
        if during_started is not None:
            seen["thread"] = threading.Thread(target=during_started, args=(address,))
            seen["thread"].start()

    def on_round(record, coord):
        if record["round"] == scrape_at:
            seen["during"] = scrape(port)  # the endpoint answers while the job runs

    summary = run_local(load_config(None, data=data), tmp_path, progress=False, on_started=on_started,
                        on_round=on_round, token=TOKEN)
    if "thread" in seen:
        seen["thread"].join(10)
    final = scrape(port)
    seen["metrics"].close()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, seen["during"], final, recs


TOKEN = "metrics-test-token-0123456789abcdef"


def _bad_streams(address: str) -> None:
    """Two work streams the coordinator must refuse and count: one without the job's token, one with the
    token but without a registered session."""
    hello = pb.WorkerMessage(hello=pb.Hello(job_id="not-this-job", worker_id=0))
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        with pytest.raises(grpc.RpcError):
            list(stub.Work(iter([hello]), timeout=10))
        with pytest.raises(grpc.RpcError):
            list(stub.Work(iter([hello]), timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")]))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scrape_matches_the_run_directory(tmp_path):
    data = {"name": "metrics", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": 8,
            "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "inject": {"model": "fixed", "workers": [2], "slowdown": 20}, "runtime": {"progress": False}}
    summary, during, final, recs = _run_with_metrics(tmp_path, data, scrape_at=2, during_started=_bad_streams)
    job = {"job_name": "metrics"}
    assert value(during, "dcoord_rounds_total", **job) == 3
    assert value(during, "dcoord_round_duration_seconds_count", **job) == 3
    assert value(final, "dcoord_rounds_total", **job) == len(recs) == 8
    assert value(final, "dcoord_round_duration_seconds_count", **job) == 8
    assert value(final, "dcoord_round_duration_seconds_sum", **job) == pytest.approx(sum(r["wall_s"] for r in recs))
    stragglers = sum(len(r["stragglers"]) for r in recs)
    assert stragglers >= 4  # worker 2 is 20x slow: the code decodes without it
    assert value(final, "dcoord_stragglers_total", **job) == stragglers == summary["stragglers_seen"]
    assert value(final, "dcoord_rejected_messages_total", reason="no-token", **job) == 1
    assert value(final, "dcoord_rejected_messages_total", reason="bad-session", **job) == 1
    assert value(final, "dcoord_decode_residual_max", **job) == summary["max_decode_residual"]
    assert value(final, "dcoord_decode_residual", **job) == recs[-1]["decode_residual"]
    # payload bytes: each of the 4 workers got the model's parameters in each of the 8 rounds; results come
    # back as one float64 payload each, late ones (worker 2) included: at least what the rounds used, at most 32
    wl = load_workload("logreg-digits", 0)
    assert value(final, "dcoord_payload_bytes_sent_total", **job) == 8 * 4 * flat_params(wl.model).nbytes
    received, one = value(final, "dcoord_payload_bytes_received_total", **job), wl.num_params() * 8
    assert received % one == 0
    assert sum(r["bytes_received"] for r in recs) <= received <= 8 * 4 * one
    assert value(final, "dcoord_workers_expected", **job) == 4
    assert value(final, "dcoord_wait_all_fallbacks_total", **job) == 0
    assert ("dcoord_epsilon_spent", frozenset(job.items())) not in final  # not a private job


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tcp_data_plane_bytes_are_counted(tmp_path):
    """transport: tcp -- models and results travel on the standalone data plane, not the gRPC stream; the
    payload byte counters still add up to every model sent and every result received."""
    data = {"name": "tcpbytes", "workload": "logreg-digits", "seed": 0, "workers": 3, "rounds": 5,
            "transport": "tcp", "optimizer": {"name": "sgd", "lr": 0.5},
            "coding": {"scheme": "gc-cyclic", "stragglers": 1}, "runtime": {"progress": False}}
    port = _free_port()
    hook = metrics_hook(argparse.Namespace(metrics_port=port), "127.0.0.1")
    seen: dict = {}
    run_local(load_config(None, data=data), tmp_path, progress=False, token=TOKEN,
              on_started=lambda coord, procs, address: seen.setdefault("metrics", hook(coord)))
    final = scrape(port)
    coord = seen["metrics"].coord
    seen["metrics"].close()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    job = {"job_name": "tcpbytes"}
    wl = load_workload("logreg-digits", 0)
    one = wl.num_params() * 8
    sent, received = (value(final, f"dcoord_payload_bytes_{k}_total", **job) for k in ("sent", "received"))
    assert sent == 5 * 3 * flat_params(wl.model).nbytes  # each worker's model each round, whichever plane
    assert received % one == 0 and sum(r["bytes_received"] for r in recs) <= received <= 5 * 3 * one
    # the data plane carried them: its own counters are in the totals, the gRPC stream had at most the
    # models of a worker whose data connection was not up yet
    dp = coord.data_server
    assert dp is not None and dp.bytes_in == received - coord.bytes_in and dp.bytes_out == sent - coord.bytes_out
    assert dp.bytes_in >= sum(r["bytes_received"] for r in recs) > 0
    assert dp.bytes_out > coord.bytes_out and coord.bytes_in == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_private_run_exports_epsilon_and_sgc_fallbacks(tmp_path):
    data = {"name": "priv", "workload": "logreg-digits", "seed": 0, "workers": 4, "rounds": 6,
            "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "privacy": {"mechanism": "dp-gd", "epsilon": 2, "delta": 1e-5, "clip": 1.0, "trust": "coordinator"},
            "runtime": {"progress": False}}
    _, during, final, recs = _run_with_metrics(tmp_path / "p", data, scrape_at=1)
    eps = value(final, "dcoord_epsilon_spent", job_name="priv")
    assert eps == pytest.approx(recs[-1]["epsilon"]) and 0 < eps <= 2 + 1e-9
    assert value(during, "dcoord_epsilon_spent", job_name="priv") < eps

    # M-SGC tolerating 1 straggler per window, with 2 persistent stragglers: the straggler pattern never
    # fits the code, so every round with tasks falls back to waiting for all workers (coding.wait: all)
    data = {"name": "sgc", "workload": "logreg-digits", "seed": 0, "workers": 6, "rounds": 6,
            "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "m-sgc", "B": 1, "W": 2, "lambda": 1},
            "inject": {"model": "fixed", "workers": [1, 4], "slowdown": 20}, "runtime": {"progress": False}}
    _, _, final, recs = _run_with_metrics(tmp_path / "s", data, scrape_at=1)
    fallbacks = value(final, "dcoord_wait_all_fallbacks_total", job_name="sgc")
    assert fallbacks >= len(recs) // 2
    assert value(final, "dcoord_stragglers_total", job_name="sgc") == sum(len(r["stragglers"]) for r in recs)


def _parse(argv, env):
    code = ("import sys, json; from dcoord.cli import build_parser; "
            "a = build_parser().parse_args(sys.argv[1:]); print(json.dumps(a.metrics_port))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def test_metrics_port_flag_and_env():
    base = {"PATH": "/usr/bin:/bin"}
    job = str(ROOT / "examples" / "quickstart.yaml")
    assert _parse(["coordinator", job], base).stdout.strip() == "null"
    assert _parse(["coordinator", job], {**base, "DCOORD_METRICS_PORT": "9100"}).stdout.strip() == "9100"
    out = _parse(["run", job, "--metrics-port", "9200"], {**base, "DCOORD_METRICS_PORT": "9100"})
    assert out.stdout.strip() == "9200"  # the flag wins over the environment
    bad = _parse(["coordinator", job, "--metrics-port", "http"], base)
    assert bad.returncode == 2 and "not a port number" in bad.stderr


@pytest.mark.slow
def test_bad_metrics_env_is_one_line_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DCOORD_METRICS_PORT": "ninety"}
    p = subprocess.run([sys.executable, "-m", "dcoord", "coordinator", str(ROOT / "examples" / "quickstart.yaml"),
                        "--listen", "127.0.0.1:0", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == ["dcoord: config error: DCOORD_METRICS_PORT='ninety' is not a port "
                                             "number; set 0-65535 or unset it"]


def test_the_metrics_server_binds_loopback_and_asks_for_the_token_in_constant_time():
    """The metrics HTTP server alone (fast): a scrape without the bearer token, or with a wrong one, gets 401
    and no metric; with it, the registry's metrics."""
    from prometheus_client import CollectorRegistry, Counter

    from dcoord.runtime.coordinator.metrics_http import serve_registry

    registry = CollectorRegistry()
    Counter("dcoord_test_scrapes", "a counter only this test registers", registry=registry).inc(3)
    server = serve_registry(registry, "127.0.0.1", 0, token="s3cret-token-for-this-test")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"

        def scrape(header: str | None) -> tuple[int, str]:
            req = urllib.request.Request(url, headers={"Authorization": header} if header else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        for header in (None, "Bearer wrong", "s3cret-token-for-this-test"):
            code, body = scrape(header)
            assert code == 401 and "dcoord_test_scrapes" not in body
        code, body = scrape("Bearer s3cret-token-for-this-test")
        assert code == 200 and "dcoord_test_scrapes_total 3.0" in body
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
