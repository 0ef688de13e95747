"""Prometheus endpoint of the coordinator (``--metrics-port`` / ``$DCOORD_METRICS_PORT``).

Why: on a cluster the run directory sits on a volume nobody watches while the job runs; Prometheus scrapes
the coordinator instead. Most values are read from a snapshot of the Coordinator taken at scrape time
(``Coordinator.snapshot()``, a custom collector), so the round path pays nothing for them; only the
round-latency histogram is fed once per round, through ``Coordinator.add_round_observer``.

Where: loopback (127.0.0.1) unless ``--metrics-host`` names an address, because the values (job name, loss,
workers, refusal counts) are nobody else's business; a Prometheus on another machine needs
``--metrics-host 0.0.0.0`` and, off a private network, ``--metrics-token-file``: then a scrape must send
``Authorization: Bearer <token>`` (Prometheus' ``authorization: credentials_file``) or gets 401.

The port is checked when the command starts, before the run directory or any other server exists, so a
port in use is one line and leaves nothing behind; the endpoint is bound once the job has started.

Exposed (all prefixed ``dcoord_``): rounds_total, round_duration_seconds (histogram), stragglers_total,
wait_all_fallbacks_total, decode_residual / decode_residual_max, payload_bytes_received_total /
payload_bytes_sent_total (tensors on the gRPC work stream and the tcp data plane),
rejected_messages_total{reason}, dropped_late_results_total, byzantine_offences_total{worker} and
workers_excluded (coding.byzantine, once a worker has lied), workers_alive, workers_expected, and epsilon_spent when the job is private. Every series carries the label ``job_name``.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
from collections import Counter
from typing import Any

ENV_PORT = "DCOORD_METRICS_PORT"
ENV_HOST = "DCOORD_METRICS_HOST"
ENV_TOKEN = "DCOORD_METRICS_TOKEN_FILE"
LOOPBACK = "127.0.0.1"


#: round latencies from a few ms (small models on loopback) to minutes (large models, slow workers)
ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _LiveCollector:
    """Reads the coordinator's own counters when Prometheus scrapes."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self.m = metrics

    def describe(self):
        return []  # values appear only once a coordinator exists; nothing to pre-declare

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m, c = self.m, self.m.coord.snapshot()
        job = [c.name]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            f = CounterMetricFamily(f"dcoord_{name}", doc, labels=["job_name"])
            f.add_metric(job, value)
            return f

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            f = GaugeMetricFamily(f"dcoord_{name}", doc, labels=["job_name"])
            f.add_metric(job, value)
            return f

        yield counter("rounds", "rounds closed (decoded and stepped)", m.rounds)
        yield counter("stragglers", "worker-rounds that did not deliver before the round closed", c.stragglers_seen)
        yield counter("wait_all_fallbacks", "rounds whose stragglers did not fit the code, so the coordinator "
                      "waited for every worker", c.wait_all_fallbacks)
        yield gauge("decode_residual", "decode residual of the last round (0 = exact)", m.last_residual)
        yield gauge("decode_residual_max", "largest decode residual so far", c.max_residual)
        yield counter("payload_bytes_received", "tensor bytes received from workers (coded results) on the "
                      "gRPC work stream and the tcp data plane", c.payload_bytes_in)
        yield counter("payload_bytes_sent", "tensor bytes sent to workers (model parameters) on the gRPC work "
                      "stream and the tcp data plane", c.payload_bytes_out)
        rej = CounterMetricFamily("dcoord_rejected_messages", "messages refused, by reason: by the job (bad "
                                  "results) or before reaching it (authentication, sessions, limits)",
                                  labels=["job_name", "reason"])
        reasons = Counter(c.rejected)
        reasons.update(c.refused)
        for reason, n in sorted(reasons.items()):
            rej.add_metric(job + [reason], n)
        yield rej
        yield counter("dropped_late_results", "results that came after their round had closed", c.dropped_late)
        if c.offences or c.excluded:  # coding.byzantine
            off = CounterMetricFamily("dcoord_byzantine_offences", "coding.byzantine: results whose digest "
                                      "disagreed with the group's accepted value, or whose payload did not match "
                                      "its own digest, by worker", labels=["job_name", "worker"])
            for w, n in sorted(c.offences.items()):
                off.add_metric(job + [str(w)], n)
            yield off
            yield gauge("workers_excluded", "coding.byzantine: workers excluded for lying", len(c.excluded))
        yield gauge("workers_alive", "workers whose stream is up and heard from recently", c.workers_alive)
        yield gauge("workers_expected", "workers the job runs with", c.workers_total)
        yield gauge("workers_lost", "workers lost while the job runs (not back yet)", len(c.lost_workers))
        yield gauge("straggler_slack", "stragglers the code still tolerates per round with the lost workers "
                    "gone (the scheme's s minus them; below 0: rounds cannot finish)", c.slack_left)
        yield gauge("last_loss", "training loss of the last decoded job (NaN when private)", c.last_loss)
        if c.private:
            yield gauge("epsilon_spent", "privacy budget spent so far (epsilon at the job's delta)", m.epsilon)


class CoordinatorMetrics:
    """A Prometheus registry bound to one Coordinator; ``serve(port)`` starts the HTTP endpoint."""

    def __init__(self, coord: Any, registry: Any = None) -> None:
        # imported here so that `dcoord --help` does not pay for prometheus_client
        from prometheus_client import CollectorRegistry, Histogram

        self.coord = coord
        self.job_name = coord.snapshot().name
        self.registry = registry or CollectorRegistry()
        self.rounds = 0
        self.last_residual = 0.0
        self.epsilon = 0.0
        self._lock = threading.Lock()
        self.round_seconds = Histogram("dcoord_round_duration_seconds", "wall time of one round, assign to step",
                                       ["job_name"], buckets=ROUND_BUCKETS, registry=self.registry)
        self.registry.register(_LiveCollector(self))
        coord.add_round_observer(self.on_round)
        self._server = None

    def on_round(self, record: dict, coord: Any) -> None:
        """Called by the coordinator after each round's record is written."""
        with self._lock:
            self.rounds += 1
            self.last_residual = float(record.get("decode_residual") or 0.0)
            eps = record.get("epsilon")
            if eps is not None and math.isfinite(eps):
                self.epsilon = float(eps)
        self.round_seconds.labels(self.job_name).observe(record["wall_s"])

    def serve(self, port: int, host: str = LOOPBACK, token: str | None = None) -> int:
        """Start the HTTP endpoint in a daemon thread; returns the bound port (``port=0``: a free one).
        With ``token`` every request must carry ``Authorization: Bearer <token>`` (else 401)."""
        from dcoord.runtime.coordinator.metrics_http import serve_registry

        self._server = serve_registry(self.registry, host, port, token)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- the command-line face (called from cli.py with one line each) ----------------------------------------
def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number 0-65535 (0 = no metrics endpoint)")
    return int(value)


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` on ``dcoord coordinator`` / ``dcoord run`` (default: $DCOORD_METRICS_PORT, else off),
    ``--metrics-host`` (default loopback) and ``--metrics-token-file`` (scrapes must present the token)."""
    env = os.environ.get(ENV_PORT, "").strip()
    parser.add_argument("--metrics-port", type=_port, default=_port(env) if env.isdigit() else None,
                        metavar="PORT", help=f"serve Prometheus metrics over HTTP on this port "
                        f"(env {ENV_PORT}; 0 or unset = off)")
    parser.add_argument("--metrics-host", default=os.environ.get(ENV_HOST, "").strip() or LOOPBACK, metavar="HOST",
                        help=f"address the metrics port binds (env {ENV_HOST}; default {LOOPBACK}: this machine "
                        "only; 0.0.0.0 for a Prometheus elsewhere)")
    parser.add_argument("--metrics-token-file", default=os.environ.get(ENV_TOKEN, "").strip() or None,
                        metavar="PATH", help="scrapes must send 'Authorization: Bearer <the token in PATH>' "
                        f"(it may be the job's --token-file) (env {ENV_TOKEN})")
    if env and not env.isdigit():
        parser.set_defaults(_metrics_env_error=f"{ENV_PORT}={env!r} is not a port number; set 0-65535 or unset it")


class MetricsHook:
    """``--metrics-port``: the port is checked when the command starts; ``hook(coord)`` serves that coordinator.

    Checked first (before the run directory, the gRPC server and the workers), a port in use fails with
    nothing to undo; bound only once the job has started, the endpoint never outlives a failed start.
    ``close()`` stops it."""

    def __init__(self, port: int, host: str, token: str | None = None) -> None:
        self.port, self.host, self.token = port, host, token
        from dcoord.runtime.coordinator.ports import bind_problem

        why = bind_problem(host, port)
        if why:
            raise _port_error(port, host, why)
        self.metrics: CoordinatorMetrics | None = None

    def __call__(self, coord: Any, *_ignored) -> CoordinatorMetrics:
        m = CoordinatorMetrics(coord)
        try:
            m.serve(self.port, self.host, self.token)
        except OSError as exc:  # taken since the check
            raise _port_error(self.port, self.host, exc.strerror or str(exc)) from None
        self.metrics = m
        return m

    def close(self) -> None:
        """Stop the endpoint (safe to call more than once, and when it never served)."""
        if self.metrics is not None:
            self.metrics.close()


def _port_error(port: int, host: str, why: str):
    from dcoord.errors import DcoordError

    return DcoordError(f"--metrics-port {port}: cannot listen on {host}:{port}: {why}; choose another port, "
                       f"or 0 for no metrics endpoint (env {ENV_PORT})")


def metrics_hook(args: argparse.Namespace, host: str | None = None) -> MetricsHook | None:
    """An ``on_started(coord, ...)`` hook serving metrics when a port was asked for (checked now), else None.

    It binds ``host`` when given, else ``--metrics-host`` (default loopback: never the job's --listen host)."""
    from dcoord.errors import ConfigError

    err = getattr(args, "_metrics_env_error", None)
    if err and args.metrics_port is None:
        raise ConfigError(err)
    if not args.metrics_port:
        return None
    token = None
    if getattr(args, "metrics_token_file", None):
        from dcoord.runtime.security.auth import read_token

        token = read_token(args.metrics_token_file, "--metrics-token-file")
    return MetricsHook(args.metrics_port, host or getattr(args, "metrics_host", None) or LOOPBACK, token)
