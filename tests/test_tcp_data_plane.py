"""The standalone data plane (transport: tcp): exact runs, hostile peers, late and mismatched payloads, TLS."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time

import numpy as np
import pytest
import torch
from reference import full_batch_gd, max_rel_diff
from rogue import RogueWorker, run_with_rogue

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.runtime.local import run_local
from dcoord.runtime.transport import tcp_dp
from dcoord.runtime.transport.base import KIND_DATA, DataPlaneError
from dcoord.runtime.transport.tcp_dp import TcpDataPlane, TcpDataServer

BASE = {
    "name": "tcp", "workload": "logreg-digits", "seed": 0, "workers": 6, "rounds": 20,
    "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
    "inject": {"model": "fixed", "workers": [1, 4], "slowdown": 20},
    "transport": "tcp", "runtime": {"progress": False},
}
KEY = b"k" * 32
JOB = "job-1"
TOKEN = "tcp-test-token-" + "0123abcd" * 4  # run_local's control-plane token, given to the rogue worker


def _cfg(**over):
    return load_config(None, data={**BASE, **over})


@pytest.mark.slow
def test_tcp_run_equals_full_batch_gd_and_drops_late_payloads(tmp_path):
    # emulated compute makes the slow workers' lateness robust on a loaded machine
    cfg = _cfg(coding={"scheme": "gc-cyclic", "stragglers": 2, "payload_dtype": "float32"},
               runtime={"progress": False, "emulate_part_s": 0.01})
    summary = run_local(cfg, tmp_path, progress=False)
    ref = full_batch_gd("logreg-digits", seed=0, rounds=20, lr=0.5)
    assert summary["rounds_completed"] == 20 and summary["rejected_results"] == {}
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # payloads really crossed: 4 fastest of 6 workers, float32 payloads of the whole model
    assert all(r["bytes_received"] >= 4 * 4 * 650 for r in recs)
    assert any({1, 4} <= set(r["stragglers"]) for r in recs)  # rounds decoded without both slowed workers


# -- a coordinator-side server on its own, attacked with raw sockets -------------------------------------
class _Sink:
    def __init__(self):
        self.delivered: list[tuple[int, int, np.ndarray]] = []
        self.failed: list[str] = []
        self.refused: list[str] = []
        self.connected: list[int] = []


@pytest.fixture
def server():
    sink = _Sink()
    srv = TcpDataServer("127.0.0.1", JOB, {0: KEY, 1: b"j" * 32}.get, max_count=1000,
                        deliver=lambda w, s, a: sink.delivered.append((w, s, a)),
                        fail=lambda w, m: sink.failed.append(m), on_connect=sink.connected.append,
                        refuse=sink.refused.append, max_workers=2)
    yield srv, sink
    srv.close()


def _wait(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def _raw_handshake(port: int, worker: int, role: int, key: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    hello = tcp_dp._recv_bytes(s, len(tcp_dp.MAGIC) + tcp_dp.NONCE)
    nonce = hello[len(tcp_dp.MAGIC):]
    s.sendall(worker.to_bytes(8, "little", signed=True) + role.to_bytes(8, "little", signed=True) + tcp_dp._mac(key, nonce, JOB, role))
    return s


def _refused(s: socket.socket) -> bool:
    """The server closed the connection without ever saying OK."""
    data = b""
    s.settimeout(5)
    try:
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionError:
        pass
    return not data.endswith(b"OK")


def test_wrong_key_unknown_worker_and_bad_role_are_refused_and_counted(server):
    srv, sink = server
    for worker, role, key in [(0, 0, b"x" * 32), (5, 0, KEY), (-1, 0, KEY), (0, 7, KEY), (1, 0, KEY)]:
        s = _raw_handshake(srv.port, worker, role, key)
        assert _refused(s), (worker, role)
        s.close()
    assert _wait(lambda: len(sink.refused) == 5)
    assert set(sink.refused) == {"data-plane-auth"}
    assert sink.delivered == [] and sink.connected == []


def test_a_silent_peer_times_out_before_anything_is_buffered(server, monkeypatch):
    srv, sink = server
    monkeypatch.setattr(tcp_dp, "HANDSHAKE_TIMEOUT_S", 0.3)
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"\x00" * 10)  # less than a handshake answer, then nothing
    assert _wait(lambda: "data-plane-handshake" in sink.refused, timeout=5)
    assert _refused(s)
    s.close()


def test_garbage_after_a_valid_handshake_ends_only_that_connection(server):
    srv, sink = server
    s = _raw_handshake(srv.port, 0, tcp_dp.UP, KEY)
    assert tcp_dp._recv_bytes(s, 2) == b"OK"
    arr = np.arange(10, dtype=np.float64)
    s.sendall(tcp_dp._header(KIND_DATA, 0, arr.size, 1) + arr.tobytes())
    assert _wait(lambda: len(sink.delivered) == 1)
    w, seq, got = sink.delivered[0]
    assert (w, seq) == (0, 0) and np.array_equal(got, arr)
    # a count beyond the bound is refused before any buffer is allocated
    s.sendall(tcp_dp._header(KIND_DATA, 1, 10**12, 1))
    assert _wait(lambda: sink.failed and "bad header" in sink.failed[0])
    assert _refused(s)
    s.close()
    # sequence numbers that skip are a protocol error, too
    s = _raw_handshake(srv.port, 0, tcp_dp.UP, KEY)
    assert tcp_dp._recv_bytes(s, 2) == b"OK"
    s.sendall(tcp_dp._header(KIND_DATA, 3, 10, 1) + arr.tobytes())
    assert _wait(lambda: any("sequence number 3, expected 0" in m for m in sink.failed))
    assert len(sink.delivered) == 1
    s.close()


def test_a_reconnected_worker_replaces_its_old_connection(server):
    srv, sink = server
    first = TcpDataPlane("127.0.0.1", srv.port, 0, KEY, JOB)
    first.send(np.ones(4))
    assert _wait(lambda: len(sink.delivered) == 1)
    second = TcpDataPlane("127.0.0.1", srv.port, 0, KEY, JOB)
    assert _wait(lambda: sink.connected == [0, 0])
    with pytest.raises(OSError):  # the old connection is closed by the server
        for _ in range(50):
            first.send(np.ones(4))
            time.sleep(0.02)
    second.send(np.full(4, 2.0))
    assert _wait(lambda: len(sink.delivered) == 2)
    assert sink.delivered[1][1] == 0 and sink.delivered[1][2][0] == 2.0  # numbering restarts per connection
    second.close()


def test_models_go_down_the_worker_connection(server):
    srv, _ = server
    plane = TcpDataPlane("127.0.0.1", srv.port, 0, KEY, JOB)
    assert _wait(lambda: srv.connected(0))
    params = np.arange(100, dtype=np.float32)
    assert srv.send_model(0, 0, 7, params)
    assert not srv.send_model(1, 0, 7, params)  # nobody connected as worker 1
    got = plane.model(0, 7, timeout=5)
    assert got.dtype == np.float32 and np.array_equal(got, params)
    with pytest.raises(DataPlaneError, match="not received"):
        plane.model(0, 8, timeout=0.2)
    plane.close()


def test_a_fake_server_without_the_key_is_detected():
    """A worker never proceeds with a server that cannot answer the handshake (wrong service)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def fake():
        c, _ = lsock.accept()
        c.sendall(b"HTTP/1.1 200 OK\r\n" + b"x" * 40)
        time.sleep(0.5)
        c.close()

    threading.Thread(target=fake, daemon=True).start()
    with pytest.raises(DataPlaneError, match="not a dcoord data plane"):
        TcpDataPlane("127.0.0.1", port, 0, KEY, JOB, timeout=5)
    lsock.close()


# -- TLS ----------------------------------------------------------------------------------------------
def _self_signed(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_data_plane_and_plaintext_refused(tmp_path):
    cert, key = _self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=str(cert))
    sink = _Sink()
    srv = TcpDataServer("127.0.0.1", JOB, {0: KEY}.get, max_count=1000,
                        deliver=lambda w, s, a: sink.delivered.append((w, s, a)),
                        fail=lambda w, m: sink.failed.append(m), refuse=sink.refused.append, ssl_context=sctx)
    try:
        plane = TcpDataPlane("127.0.0.1", srv.port, 0, KEY, JOB, ssl_context=cctx, server_hostname="localhost")
        plane.send(np.arange(5, dtype=np.float32))
        assert srv.send_model(0, 0, 1, np.ones(3, dtype=np.float32)) or _wait(lambda: srv.connected(0))
        assert _wait(lambda: len(sink.delivered) == 1)
        assert np.array_equal(sink.delivered[0][2], np.arange(5, dtype=np.float32))
        plane.close()
        with pytest.raises((DataPlaneError, OSError)):  # plaintext client against a TLS data plane
            TcpDataPlane("127.0.0.1", srv.port, 0, KEY, JOB, timeout=3)
        assert _wait(lambda: "data-plane-handshake" in sink.refused)
        # a client that trusts another CA refuses this server
        other, _ = _self_signed(tmp_path / "o" if (tmp_path / "o").mkdir() is None else tmp_path)
        with pytest.raises((ssl.SSLError, OSError)):
            TcpDataPlane("127.0.0.1", srv.port, 0, KEY, JOB, ssl_context=ssl.create_default_context(
                cafile=str(other)), server_hostname="localhost", timeout=3)
    finally:
        srv.close()


# -- a registered worker that misbehaves on the data plane, in a real run ---------------------------------
class _RogueDataWorker(RogueWorker):
    """Registers (with the job's token, then speaking with its session), opens the data plane, and answers
    assignments with bad payloads of several kinds."""

    KINDS = ["wrong-shape", "nan", "stale", "future", "orphan"]

    def on_registered(self, reg):
        self.plane = TcpDataPlane("127.0.0.1", reg.data_port, reg.worker_id, reg.data_key, reg.job_id)

    def answer(self, kind, a, reg):
        size = int(np.prod(a.models[0].params.shape))
        vec = np.zeros(size)
        rnd = a.round
        if kind == "wrong-shape":
            vec = np.zeros(size + 3)
        elif kind == "nan":
            vec[0] = np.nan
        elif kind == "stale":
            rnd -= 1
        elif kind == "future":
            rnd += 5
        elif kind == "orphan":  # a finite payload no result claims: pairing it would corrupt the model
            self.plane.send(np.full(size, 1e30))
            vec[0] = np.nan
        res = pb.Result(job_id=reg.job_id, round=rnd, worker_id=reg.worker_id, session=reg.session)
        for t in a.tasks:
            res.tasks.add(job=t.job, slot=t.slot, model=t.model, model_version=t.model_version)
        res.payload_on_data_plane, res.data_seq = True, self.plane.next_seq
        for _ in a.tasks:
            self.plane.send(vec)
        return res


@pytest.mark.slow
def test_hostile_payloads_on_the_data_plane_are_rejected_and_the_model_is_exact(tmp_path):
    cfg = _cfg(workers=4, coding={"scheme": "gc-cyclic", "stragglers": 1}, rounds=18, inject={})
    summary, rogue = run_with_rogue(cfg, tmp_path, _RogueDataWorker, TOKEN)
    assert summary["rounds_completed"] == 18
    assert len(rogue.sent) >= 5
    rej = summary["rejected_results"]
    for reason in ("wrong-shape", "non-finite", "future-round"):
        assert rej.get(reason, 0) >= 1, (reason, rej)
    ref = full_batch_gd("logreg-digits", seed=0, rounds=18, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5
