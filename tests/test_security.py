"""The control plane under attack, with real gRPC servers and raw clients on loopback.

Each attack is refused with the right gRPC status and counted; whole runs under attack end with exactly
the model of an unattacked run. Certificates are made at test time (never committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reference import full_batch_gd, max_rel_diff
from rogue import FakeCoordinator as _FakeCoordinator
from rogue import fake_coordinator

from dcoord.config import load_config
from dcoord.errors import DcoordError
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.coordinator.coordinator import Coordinator
from dcoord.runtime.coordinator.service import start_server
from dcoord.runtime.local import run_local
from dcoord.runtime.security.auth import (
    ClientSecurity,
    ServerSecurity,
    check_listen,
    open_channel,
    read_token,
)
from dcoord.wire import result_to_proto, status_to_proto, to_proto

TOKEN = "test-token-" + "a1b2c3d4" * 4
WRONG = "test-token-" + "ffffffff" * 4
ROOT = Path(__file__).resolve().parents[1]
SC = grpc.StatusCode


def _cfg(**over) -> object:
    data = {"name": "sec", "workload": "logreg-digits", "seed": 0, "workers": 3, "rounds": 6, "batch_size": None,
            "optimizer": {"name": "sgd", "lr": 0.5}, "coding": {"scheme": "gc-cyclic", "stragglers": 1},
            "runtime": {"progress": False}}
    data.update(over)
    return load_config(None, data=data)


# ------------------------------------------------------------------------------------------ certificates


def _make_ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue(ca, name: str, server: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki():
    pytest.importorskip("cryptography", reason="the TLS tests make their certificates with `cryptography`")
    ca, other = _make_ca("dcoord test CA"), _make_ca("someone else's CA")
    return {
        "ca": _pem(ca[1]), "other_ca": _pem(other[1]),
        "server": _issue(ca, "coordinator", server=True),
        "client": _issue(ca, "worker", server=False),
        "foreign_client": _issue(other, "intruder", server=False),
        "fake_server": _issue(other, "coordinator", server=True),
    }


# ------------------------------------------------------------------------------------ a served coordinator


@contextlib.contextmanager
def serving(cfg, security: ServerSecurity | None, listen: str = "127.0.0.1:0"):
    """A coordinator (not running rounds) served on a background event loop: yields (address, coord, loop)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    async def serve():
        try:
            coord = Coordinator(cfg, None)
            server, port = await start_server(coord, listen, security=security)
        except BaseException as exc:  # surface it in the test thread
            box["error"] = exc
            ready.set()
            return
        stop = asyncio.Event()
        box.update(port=port, coord=coord, stop=stop)
        ready.set()
        await stop.wait()
        await server.stop(0)
        coord.close_data_plane()

    t = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    t.start()
    assert ready.wait(120)
    if "error" in box:
        raise box["error"]
    try:
        yield f"127.0.0.1:{box['port']}", box["coord"], loop
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        t.join(30)


def _on_loop(loop, fn):
    """Run ``fn()`` on the coordinator's loop (its state is owned by that thread) and return the result."""
    return asyncio.run_coroutine_threadsafe(_call(fn), loop).result(30)


async def _call(fn):
    return fn()


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    return ei.value.code()


def _stub(address: str, token: str | None = TOKEN, **kw):
    return pb_grpc.CoordinatorStub(open_channel(address, ClientSecurity(token=token, **kw)))


class _Stream:
    """A raw Work stream: send WorkerMessages, read CoordinatorMessages (or the error that ended it)."""

    def __init__(self, stub, first: pb.WorkerMessage):
        self.q: queue.Queue = queue.Queue()
        self.q.put(first)
        self.got: queue.Queue = queue.Queue()
        self.call = stub.Work(iter(self.q.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for m in self.call:
                self.got.put(m)
            self.got.put("closed")
        except grpc.RpcError as exc:
            self.got.put(exc)

    def ended(self, timeout=30):
        while True:
            item = self.got.get(timeout=timeout)
            if not isinstance(item, pb.CoordinatorMessage):
                return item

    def close(self):
        self.q.put(None)


# ------------------------------------------------------------------------------------- authentication


def test_every_rpc_needs_the_token_but_health_answers_anyone(tmp_path):
    with serving(_cfg(), ServerSecurity(token=TOKEN)) as (address, coord, loop):
        for token in (None, WRONG):
            stub = _stub(address, token)
            assert _code(lambda s=stub: s.Register(pb.RegisterRequest(hostname="x"), timeout=10)) == SC.UNAUTHENTICATED
            assert _code(lambda s=stub: s.Heartbeat(pb.HeartbeatRequest(worker_id=0), timeout=10)) == SC.UNAUTHENTICATED
            assert _code(lambda s=stub: s.GetStatus(pb.StatusRequest(), timeout=10)) == SC.UNAUTHENTICATED
            assert _code(lambda s=stub: list(s.WatchStatus(pb.StatusRequest(), timeout=10))) == SC.UNAUTHENTICATED
            st = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=coord.job_id, worker_id=0)))
            assert st.ended().code() == SC.UNAUTHENTICATED
        # nothing reached the job: no id was reserved
        assert coord.conns == {}
        # the standard health service answers without a token (Kubernetes' grpc probe) and reveals nothing else
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        st = _stub(address).GetStatus(pb.StatusRequest(), timeout=10)
        assert st.refused["no-token"] == 5 and st.refused["wrong-token"] == 5
        # `dcoord status` shows the refusals; without the token it says it was refused, in one line
        tok = tmp_path / "token"
        tok.write_text(TOKEN + "\n")
        r = subprocess.run([sys.executable, "-m", "dcoord", "status", address, "--token-file", str(tok)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "refused 10" in r.stdout, r.stdout + r.stderr
        r = subprocess.run([sys.executable, "-m", "dcoord", "status", address], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and "refused: authentication required" in r.stderr
        assert "Traceback" not in r.stderr


def test_tls_refuses_a_wrong_ca_and_plaintext(pki):
    cert, key = pki["server"]
    with serving(_cfg(), ServerSecurity(token=TOKEN, tls_cert=cert, tls_key=key)) as (address, coord, _):
        ok = _stub(address, tls_ca=pki["ca"]).GetStatus(pb.StatusRequest(), timeout=10)
        assert ok.job_id == coord.job_id
        # by name too (the certificate names localhost)
        assert _stub(address, tls_ca=pki["ca"], server_name="localhost").GetStatus(pb.StatusRequest(), timeout=10)
        # a client that trusts another CA does not accept this server (and sends it nothing)
        assert _code(lambda: _stub(address, tls_ca=pki["other_ca"]).GetStatus(pb.StatusRequest(), timeout=5)) \
            == SC.UNAVAILABLE
        # the server name checked is the one given: a certificate for "coordinator" is not "elsewhere"
        assert _code(lambda: _stub(address, tls_ca=pki["ca"], server_name="elsewhere").GetStatus(
            pb.StatusRequest(), timeout=5)) == SC.UNAVAILABLE
        # plaintext against TLS
        assert _code(lambda: _stub(address).GetStatus(pb.StatusRequest(), timeout=5)) == SC.UNAVAILABLE
        # TLS but no token
        assert _code(lambda: _stub(address, None, tls_ca=pki["ca"]).GetStatus(pb.StatusRequest(), timeout=5)) \
            == SC.UNAUTHENTICATED


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki):
    cert, key = pki["server"]
    sec = ServerSecurity(tls_cert=cert, tls_key=key, tls_ca=pki["ca"])
    with serving(_cfg(), sec) as (address, coord, _):
        ccert, ckey = pki["client"]
        ok = _stub(address, None, tls_ca=pki["ca"], tls_cert=ccert, tls_key=ckey).GetStatus(pb.StatusRequest(),
                                                                                             timeout=10)
        assert ok.job_id == coord.job_id
        assert _code(lambda: _stub(address, None, tls_ca=pki["ca"]).GetStatus(pb.StatusRequest(), timeout=5)) \
            == SC.UNAVAILABLE
        fcert, fkey = pki["foreign_client"]
        assert _code(lambda: _stub(address, None, tls_ca=pki["ca"], tls_cert=fcert, tls_key=fkey).GetStatus(
            pb.StatusRequest(), timeout=5)) == SC.UNAVAILABLE


@pytest.mark.slow
def test_listening_beyond_loopback_needs_authentication_or_insecure(caplog, tmp_path):
    with pytest.raises(DcoordError, match="refusing to listen beyond loopback without authentication"):
        check_listen("0.0.0.0:50051", ServerSecurity())
    check_listen("127.0.0.1:50051", ServerSecurity())
    check_listen("[::1]:50051", ServerSecurity())
    check_listen("0.0.0.0:50051", ServerSecurity(token=TOKEN))
    with caplog.at_level("WARNING", logger="dcoord.security"):
        check_listen("0.0.0.0:50051", ServerSecurity(insecure=True))
    assert "WITHOUT authentication" in caplog.text
    r = subprocess.run([sys.executable, "-m", "dcoord", "coordinator", str(ROOT / "examples" / "quickstart.yaml"),
                        "--listen", "0.0.0.0:0", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "--insecure" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "short"
    bad.write_text("abc")
    with pytest.raises(DcoordError, match=">= 16 printable"):
        read_token(bad)
    with pytest.raises(DcoordError, match="cannot read"):
        read_token(tmp_path / "missing")


# -------------------------------------------------------------------------------------------- sessions


def test_register_flood_is_rate_limited():
    """A credential may call Register twice the job's worker count plus the burst at once (refused calls
    count too), then at the rate."""
    with serving(_cfg(workers=2), ServerSecurity(token=TOKEN, register_rate=0.01, register_burst=3)) as (
            address, coord, _):
        stub = _stub(address)
        for _ in range(2):
            stub.Register(pb.RegisterRequest(hostname="flood"), timeout=10)
        codes = [_code(lambda: stub.Register(pb.RegisterRequest(hostname="flood"), timeout=10)) for _ in range(10)]
        assert codes == [SC.RESOURCE_EXHAUSTED] * 10
        assert coord.refused["job-full"] == 5 and coord.refused["register-rate"] == 5 and len(coord.conns) == 2


def test_id_squatting_expires_and_never_counts_as_alive():
    with serving(_cfg(workers=2), ServerSecurity(token=TOKEN, reserve_s=1.5)) as (address, coord, loop):
        stub = _stub(address)
        squat = [stub.Register(pb.RegisterRequest(hostname="squatter", requested_id=i), timeout=10) for i in (0, 1)]
        assert sorted(r.worker_id for r in squat) == [0, 1]
        assert _code(lambda: stub.Register(pb.RegisterRequest(hostname="real", requested_id=0), timeout=10)) \
            == SC.RESOURCE_EXHAUSTED
        assert coord.refused["job-full"] == 1
        assert _on_loop(loop, coord.alive_count) == 0  # a reservation is not a live worker
        time.sleep(1.7)
        real = stub.Register(pb.RegisterRequest(hostname="real", requested_id=0), timeout=10)
        assert real.worker_id == 0 and real.session != squat[0].session
        # the squatter's old session no longer speaks for id 0
        st = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=coord.job_id, worker_id=0,
                                                          session=squat[0].session)))
        assert st.ended().code() == SC.PERMISSION_DENIED


def test_work_with_a_guessed_or_stolen_id_is_refused():
    with serving(_cfg(), ServerSecurity(token=TOKEN)) as (address, coord, loop):
        stub = _stub(address)
        w0 = stub.Register(pb.RegisterRequest(hostname="w0", requested_id=0), timeout=10)
        w1 = stub.Register(pb.RegisterRequest(hostname="w1", requested_id=1), timeout=10)
        assert len({w0.session, w1.session}) == 2 and len(w0.session) >= 32
        for hello in (pb.Hello(job_id=coord.job_id, worker_id=0),                       # guessed id
                      pb.Hello(job_id=coord.job_id, worker_id=0, session=w1.session),   # another worker's session
                      pb.Hello(job_id=coord.job_id, worker_id=2, session=w0.session),   # unregistered id
                      pb.Hello(job_id="other", worker_id=0, session=w0.session)):       # other job
            st = _Stream(stub, pb.WorkerMessage(hello=hello))
            assert st.ended().code() == SC.PERMISSION_DENIED
        assert _code(lambda: stub.Heartbeat(pb.HeartbeatRequest(job_id=coord.job_id, worker_id=0,
                                                                 session=w1.session), timeout=10)) \
            == SC.PERMISSION_DENIED
        assert coord.refused["bad-session"] == 5
        assert stub.Heartbeat(pb.HeartbeatRequest(job_id=coord.job_id, worker_id=0, session=w0.session),
                              timeout=10).ok


def test_nobody_can_replace_or_close_another_workers_stream():
    with serving(_cfg(), ServerSecurity(token=TOKEN)) as (address, coord, loop):
        stub = _stub(address)
        w0 = stub.Register(pb.RegisterRequest(hostname="w0", requested_id=0), timeout=10)
        real = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=coord.job_id, worker_id=0, session=w0.session)))
        deadline = time.monotonic() + 30
        while not _on_loop(loop, lambda: coord.conns[0].attached) and time.monotonic() < deadline:
            time.sleep(0.05)
        # even with the stolen session a second stream is refused, and closing it leaves the real one open
        thief = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=coord.job_id, worker_id=0, session=w0.session)))
        assert thief.ended().code() == SC.ALREADY_EXISTS
        thief.close()
        # a stranger's stream, opened and closed without a valid hello, changes nothing either
        stranger = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=coord.job_id, worker_id=0)))
        assert stranger.ended().code() == SC.PERMISSION_DENIED
        time.sleep(0.3)
        assert _on_loop(loop, lambda: (coord.conns[0].attached, coord.conns[0].alive)) == (True, True)
        assert coord.refused["stream-in-use"] == 1
        assert real.got.empty()  # the real worker got no shutdown
        real.close()


def test_oversized_and_early_messages_are_not_buffered():
    sec = ServerSecurity(token=TOKEN, max_message_bytes=1 << 20)
    with serving(_cfg(), sec) as (address, coord, loop):
        stub = _stub(address)
        # a huge hostname: refused by the message limit before any handler
        assert _code(lambda: stub.Register(pb.RegisterRequest(hostname="h" * (3 << 20)), timeout=30)) \
            == SC.RESOURCE_EXHAUSTED
        # a long one under the limit: refused by the handler, counted
        assert _code(lambda: stub.Register(pb.RegisterRequest(hostname="h" * 10_000), timeout=10)) \
            == SC.INVALID_ARGUMENT
        assert coord.refused["bad-register"] == 1 and coord.conns == {}
        # a registered worker's results and chunks sent while the job waits for workers: counted, not kept
        w0 = stub.Register(pb.RegisterRequest(hostname="w0", requested_id=0), timeout=10)
        st = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=coord.job_id, worker_id=0, session=w0.session)))
        for _ in range(3):
            st.q.put(pb.WorkerMessage(chunk=pb.PayloadChunk(data=b"\0" * (900 << 10))))
            st.q.put(pb.WorkerMessage(result=pb.Result(job_id=coord.job_id, round=0, worker_id=0, session=w0.session,
                                                       payload_chunked=True)))
        # an oversized single message ends the stream
        st.q.put(pb.WorkerMessage(chunk=pb.PayloadChunk(data=b"\0" * (2 << 20))))
        assert st.ended().code() == SC.RESOURCE_EXHAUSTED
        assert coord.rejected["not-running"] == 3
        assert coord.results.qsize() == 0


# --------------------------------------------------------------------------------- whole runs under attack


def _attacks(address: str, job_id: str, stop: threading.Event, counts: dict) -> None:
    """A stranger without the token, and one with a wrong token, try everything until the job ends."""
    codes = counts.setdefault("codes", set())
    for token in (None, WRONG):
        stub = _stub(address, token)
        for method, request in ((stub.Register, pb.RegisterRequest(hostname="evil", requested_id=0)),
                                (stub.GetStatus, pb.StatusRequest()),
                                (stub.Heartbeat, pb.HeartbeatRequest(job_id=job_id, worker_id=0))):
            try:
                method(request, timeout=5)
                codes.add("ACCEPTED")
            except grpc.RpcError as exc:
                codes.add(exc.code().name)
    # an insider with the token but no session: guesses ids and opens their streams, sends huge results
    stub = _stub(address)
    for _ in range(20):
        if stop.is_set():
            break
        for wid in range(3):
            st = _Stream(stub, pb.WorkerMessage(hello=pb.Hello(job_id=job_id, worker_id=wid, session="guess")))
            st.q.put(pb.WorkerMessage(result=pb.Result(job_id=job_id, round=1, worker_id=wid, tasks=[pb.TaskResult(
                payload=pb.Tensor(shape=[1], dtype="float64", data=np.float64(1e30).tobytes()))])))
            end = st.ended()
            codes.add(end.code().name if isinstance(end, grpc.RpcError) else "OPEN")
            st.close()
        counts["rounds"] = counts.get("rounds", 0) + 1
        stop.wait(0.2)


@pytest.mark.slow
def test_a_run_under_attack_ends_with_the_unattacked_model(tmp_path):
    cfg = _cfg(rounds=12)
    box: dict = {}
    stop = threading.Event()

    def started(coord, procs, address):
        box["coord"] = coord
        box["thread"] = threading.Thread(target=_attacks, args=(address, coord.job_id, stop, box), daemon=True)
        box["thread"].start()

    try:
        summary = run_local(cfg, tmp_path, progress=False, on_started=started, token=TOKEN)
    finally:
        stop.set()
    box["thread"].join(60)
    assert summary["rounds_completed"] == 12
    ref = full_batch_gd("logreg-digits", seed=0, rounds=12, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5
    # nothing was accepted (UNAVAILABLE/CANCELLED: calls still in flight when the finished job's server stopped)
    assert {"UNAUTHENTICATED", "PERMISSION_DENIED"} <= box["codes"], box["codes"]
    assert box["codes"] <= {"UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "CANCELLED"}, box["codes"]
    refused = summary["refused"]
    assert refused["no-token"] >= 3 and refused["wrong-token"] >= 3 and refused["bad-session"] >= 3
    assert summary["rejected_results"] == {}  # nothing the attacker sent reached the round loop


@pytest.mark.slow
def test_workers_may_start_before_the_coordinator(tmp_path):
    """Registration retries with backoff until the coordinator is up (pod start order does not matter)."""
    import socket

    from dcoord.runtime.worker.worker import run_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(workers=1, rounds=3, coding={"scheme": "uncoded"})
    done: dict = {}

    def work():
        try:
            done["rounds"] = run_worker(f"127.0.0.1:{port}", security=ClientSecurity(token=TOKEN),
                                        connect_timeout=120, device="cpu")
        except BaseException as exc:
            done["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    time.sleep(2.0)  # the worker is already retrying

    async def coordinate():
        coord = Coordinator(cfg, tmp_path)
        server, _ = await start_server(coord, f"127.0.0.1:{port}", security=ServerSecurity(token=TOKEN))
        try:
            return await coord.run(start_timeout=120)
        finally:
            await asyncio.sleep(0.2)
            await server.stop(1.0)

    summary = asyncio.run(coordinate())
    t.join(60)
    assert "error" not in done, done
    assert summary["rounds_completed"] == 3 and done["rounds"] >= 1


@pytest.mark.slow
def test_tcp_data_plane_with_token_and_mutual_tls_equals_gd_and_refuses_plaintext(tmp_path, pki):
    """transport: tcp under the control plane's security: the data plane speaks TLS with the same
    certificates (client certificates required with mutual TLS); a plaintext or certificate-less client is
    refused before the handshake and counted; the run ends with exactly the model of plain GD."""
    import socket
    import ssl

    from dcoord.runtime.transport.base import DataPlaneError
    from dcoord.runtime.transport.tcp_dp import TcpDataPlane
    from dcoord.runtime.worker.worker import run_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cert, key = pki["server"]
    ccert, ckey = pki["client"]
    cfg = _cfg(rounds=5, transport="tcp")
    client = ClientSecurity(token=TOKEN, tls_ca=pki["ca"], tls_cert=ccert, tls_key=ckey)
    done: dict = {}

    def work(i):
        try:
            done[i] = run_worker(f"127.0.0.1:{port}", requested_id=i, security=client, connect_timeout=120,
                                 device="cpu")
        except BaseException as exc:
            done[i] = exc

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(cfg.workers)]
    for t in threads:
        t.start()

    def intrude(dp_port: int, job_id: str) -> list:
        errors = []
        no_cert = ssl.create_default_context(cadata=pki["ca"].decode())
        for ctx in (None, no_cert):  # plaintext; TLS without a client certificate
            try:
                TcpDataPlane("127.0.0.1", dp_port, 0, b"k" * 32, job_id, ssl_context=ctx,
                             server_hostname="localhost", timeout=8)
            except (DataPlaneError, OSError) as exc:  # ssl.SSLError is an OSError
                errors.append(exc)
        return errors

    async def coordinate():
        coord = Coordinator(cfg, tmp_path)
        sec = ServerSecurity(token=TOKEN, tls_cert=cert, tls_key=key, tls_ca=pki["ca"])
        server, _ = await start_server(coord, f"127.0.0.1:{port}", security=sec)
        try:
            assert coord.data_server is not None and coord.data_server.ssl_context is not None
            errors = await asyncio.to_thread(intrude, coord.data_server.port, coord.job_id)
            for _ in range(300):  # the server counts a refusal when its side of the handshake gives up
                if coord.refused["data-plane-handshake"] >= 2:
                    break
                await asyncio.sleep(0.1)
            return errors, await coord.run(start_timeout=120)
        finally:
            await asyncio.sleep(0.2)
            await server.stop(1.0)
            coord.close_data_plane()

    errors, summary = asyncio.run(coordinate())
    for t in threads:
        t.join(60)
    assert len(errors) == 2, errors  # neither intruder got a data-plane connection
    # every worker got through TLS, computed, and ended cleanly (a straggler that was still waiting for a model
    # when the job ended stops at the shutdown, it does not fail)
    ok = [w for w, r in done.items() if isinstance(r, int) and r >= 1]
    assert len(done) == cfg.workers and len(ok) == cfg.workers, done
    assert summary["rounds_completed"] == 5 and summary["rejected_results"] == {}
    assert summary["refused"].get("data-plane-handshake", 0) >= 2, summary["refused"]
    assert set(summary["refused"]) == {"data-plane-handshake"}, summary["refused"]
    ref = full_batch_gd("logreg-digits", seed=0, rounds=5, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "model.pt"), ref) < 1e-5


@pytest.mark.slow
def test_secrets_never_leave(tmp_path):
    """Token, coordinator_seed, the workers' noise secret and the tcp data plane's keys: in no output file,
    status, result or (another worker's) Register reply."""
    seed = 3987654321  # distinctive, and within the 0..2^32-1 that seeds accept
    noise_secret = "noise-secret-" + "5e" * 16
    privacy = {"mechanism": "dp-gd", "noise_multiplier": 1.0, "clip": 1.0}
    runs = {"coordinator": dict(privacy, trust="coordinator", coordinator_seed=seed),
            "workers": dict(privacy, trust="workers")}
    transports = {"coordinator": "grpc", "workers": "tcp"}  # tcp: each registration gets a data-plane key
    seen: list[bytes] = []
    data_keys: set[bytes] = set()
    mp = pytest.MonkeyPatch()
    mp.setenv("DCOORD_NOISE_SECRET", noise_secret)
    try:
        for name, p in runs.items():
            cfg = _cfg(rounds=4, privacy=p, runtime={"progress": False, "checkpoint_every": 1},
                       transport=transports[name])

            def started(coord, procs, address):
                original, new_key = coord.handle_result, coord.new_data_key

                def spy(res, conn, *rest):
                    seen.append(result_to_proto(res).SerializeToString())
                    return original(res, conn, *rest)

                def spy_key(worker):
                    key = new_key(worker)
                    data_keys.add(key)
                    return key

                coord.handle_result, coord.new_data_key = spy, spy_key
                data_keys.update(getattr(coord.data_server, "keys", {}).values())

            def each_round(record, coord):
                seen.append(status_to_proto(coord.status()).SerializeToString())
                data_keys.update(getattr(coord.data_server, "keys", {}).values())

            run_local(cfg, tmp_path / name, progress=False, on_started=started, on_round=each_round, token=TOKEN)
            # what a worker is sent at Register (served here by a coordinator of the same job)
            with serving(cfg, ServerSecurity(token=TOKEN)) as (address, coord, _):
                reg = _stub(address).Register(pb.RegisterRequest(hostname="w"), timeout=10)
                seen.append(reg.SerializeToString())
                assert str(seed) not in reg.job_config_yaml and "coordinator_seed: null" in reg.job_config_yaml \
                    or name == "workers"
                seen.append(_stub(address).GetStatus(pb.StatusRequest(), timeout=10).SerializeToString())
    finally:
        mp.undo()
    cfg_text = (tmp_path / "coordinator" / "config.yaml").read_text()
    assert "privacy.coordinator_seed: <redacted>" in cfg_text
    assert load_config(tmp_path / "coordinator" / "config.yaml").privacy.coordinator_seed is None  # still loads
    assert len(data_keys) >= 3 and all(len(k) == 32 for k in data_keys)  # the tcp run's workers' keys
    needles = [TOKEN.encode(), noise_secret.encode(), str(seed).encode(), seed.to_bytes(8, "big"),
               seed.to_bytes(8, "little")]
    needles += [k for key in data_keys for k in (key, key.hex().encode(), repr(key).encode())]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.name == "checkpoints" and p.name.startswith("ckpt-") for p in files) and any(p.suffix == ".log" for p in files)
    for blob in seen + [p.read_bytes() for p in files]:
        assert not any(n in blob for n in needles)


# ------------------------------------------------------------------------------------- fake coordinators


@pytest.mark.slow
def test_a_worker_runs_only_workloads_its_side_allows(tmp_path):
    cfg = _cfg().model_dump(mode="json")
    cfg["workload"] = "os:_exit"
    import yaml

    with fake_coordinator(_FakeCoordinator(yaml.safe_dump(cfg))) as address:
        r = subprocess.run([sys.executable, "-m", "dcoord", "worker", "--coordinator", address,
                            "--connect-timeout", "30"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "does not allow" in r.stderr and "--allow-workload 'os:_exit'" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_worker_refuses_a_job_weaker_than_it_requires():
    from dcoord.runtime.worker.guard import check_privacy, check_workload
    from dcoord.workloads import load

    wl = load("logreg-digits", 0)
    strong = _cfg(privacy={"mechanism": "dp-gd", "noise_multiplier": 20.0, "clip": 1.0})
    check_privacy(strong, wl, max_epsilon=10.0)
    check_privacy(_cfg(), wl, max_epsilon=None)  # no requirement: anything goes
    with pytest.raises(DcoordError, match="requires privacy"):
        check_privacy(_cfg(), wl, max_epsilon=10.0)
    with pytest.raises(DcoordError, match="trust: workers"):
        check_privacy(_cfg(privacy={"mechanism": "dp-gd", "noise_multiplier": 20.0, "clip": 1.0,
                                    "trust": "coordinator"}), wl, max_epsilon=10.0)
    with pytest.raises(DcoordError, match="more than this worker's --max-epsilon"):
        check_privacy(_cfg(privacy={"mechanism": "dp-gd", "noise_multiplier": 0.5, "clip": 1.0}), wl, max_epsilon=10.0)
    check_workload("logreg-digits", [])
    check_workload("mypkg.tasks:make", ["mypkg.*:*"])
    with pytest.raises(DcoordError, match="does not allow"):
        check_workload("os:_exit", ["mypkg.*:*"])


def _private_job_yaml() -> str:
    return _cfg(workers=3, privacy={"mechanism": "dp-gd", "noise_multiplier": 1.0, "clip": 1.0}).to_yaml()


def _assignment(rnd: int, job: int, params: np.ndarray) -> pb.Assignment:
    return pb.Assignment(job_id="fake", round=rnd, tasks=[pb.TaskSpec(job=job, slot=0, parts=[0], coeffs=[1.0],
                                                                      model=0, model_version=job)],
                         models=[pb.ModelState(model=0, version=job, params=to_proto(params))])


@pytest.mark.slow
def test_a_fake_coordinator_replaying_a_round_gets_no_second_answer(tmp_path):
    from dcoord.runtime.tensors import flat_params
    from dcoord.runtime.worker.worker import run_worker
    from dcoord.workloads import load

    x = flat_params(load("logreg-digits", 0).model)
    rng = np.random.default_rng(0)
    a = x
    b, c = ((x + k * rng.standard_normal(x.size)).astype(np.float32) for k in (0.1, 0.2))
    plan = [_assignment(0, 0, a),  # answered
            _assignment(0, 0, b),  # same round, other parameters: refused
            _assignment(1, 1, c),  # answered
            _assignment(0, 0, a)]  # an older round: refused (even with the first parameters)
    fake = _FakeCoordinator(_private_job_yaml(), plan)
    secret = tmp_path / "noise"
    secret.write_text("w" * 40)
    with fake_coordinator(fake) as address:
        rounds = run_worker(address, connect_timeout=30, device="cpu", noise_secret_file=str(secret))
    assert [r is not None for r in fake.results] == [True, False, True, False]
    assert rounds == 2


def test_noise_is_bound_to_the_parameters_asked_about():
    """Same parameters: identical messages (replicas agree, decoding exact); other parameters: independent
    noise, so the difference of two answers is not the noise-free difference of the clipped gradients."""
    from dcoord.privacy.mechanisms import NoiseKey, PrivateGD, worker_message
    from dcoord.privacy.per_sample import clipped_sum
    from dcoord.runtime.tensors import flat_params
    from dcoord.workloads import load

    wl = load("logreg-digits", 0)
    mech = PrivateGD(mechanism="dp-gd", clip=1.0, noise_multiplier=1.0, n_samples=wl.num_samples, num_partitions=3)
    spec = mech.round_spec(0)
    key = NoiseKey("n" * 40)
    X, y = wl.X[:200], wl.y[:200]
    x = torch.as_tensor(flat_params(wl.model))
    x2 = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def msg(p):
        return worker_message(wl.model, wl.loss_fn, X, y, spec=spec, partition=0, key=key, params=p)

    m1, m1_again, m2 = msg(x), msg(x.clone()), msg(x2)
    assert torch.equal(m1, m1_again)
    noise_free = (clipped_sum(wl.model, wl.loss_fn, X, y, 1.0, x) - clipped_sum(wl.model, wl.loss_fn, X, y, 1.0, x2))
    noise_free = noise_free / wl.num_samples
    residual = float(torch.linalg.norm((m1 - m2).double() - noise_free.double()))
    expected = spec.partition_std * (2 * x.numel()) ** 0.5  # two independent draws
    # the difference of the two answers carries two independent noise draws (the issue measured 9.4e-9 here
    # when both answers shared one noise draw)
    assert residual == pytest.approx(expected, rel=0.1)


@pytest.mark.slow
def test_privacy_plan_reports_the_compromised_coordinator_epsilon():
    r = subprocess.run([sys.executable, "-m", "dcoord", "privacy", str(ROOT / "examples" / "private.yaml"), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["replicas_per_partition"] >= 2
    assert p["epsilon_compromised_coordinator"] > p["epsilon"]
    from dcoord.privacy.accounting import plan
    from dcoord.privacy.config import PrivacyConfig

    pc = PrivacyConfig(noise_multiplier=2.0, clip=1.0)
    one = plan(pc, rounds=20, n_samples=100, num_partitions=4, replicas=1)
    three = plan(pc, rounds=20, n_samples=100, num_partitions=4, replicas=3)
    assert one["epsilon_compromised_coordinator"] == pytest.approx(one["epsilon"])  # one answer: as honest
    # three independent answers with multiplier z each are one answer with z / sqrt(3)
    ref = plan(PrivacyConfig(noise_multiplier=2.0 / 3 ** 0.5, clip=1.0), rounds=20, n_samples=100, num_partitions=4)
    assert three["epsilon_compromised_coordinator"] == pytest.approx(ref["epsilon"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_coordinator_and_workers_with_tls_and_token_from_env_only(tmp_path, pki):
    """The container way: every setting from the environment, workers started before the coordinator."""
    import os
    import socket

    cert, key = pki["server"]
    files = {"token": TOKEN.encode(), "ca.pem": pki["ca"], "cert.pem": cert, "key.pem": key}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = tmp_path / "job.yaml"
    job.write_text(_cfg(rounds=5).to_yaml())
    base = {k: v for k, v in os.environ.items() if not k.startswith("DCOORD_")}
    common = dict(base, DCOORD_TOKEN_FILE=str(tmp_path / "token"))
    worker_env = dict(common, DCOORD_COORDINATOR=f"localhost:{port}", DCOORD_TLS_CA=str(tmp_path / "ca.pem"),
                      DCOORD_CONNECT_TIMEOUT_S="240", DCOORD_DEVICE="cpu")
    coord_env = dict(common, DCOORD_LISTEN=f"127.0.0.1:{port}", DCOORD_TLS_CERT=str(tmp_path / "cert.pem"),
                     DCOORD_TLS_KEY=str(tmp_path / "key.pem"))
    workers = [subprocess.Popen([sys.executable, "-m", "dcoord", "worker"], env=dict(worker_env, DCOORD_WORKER_ID=str(i)),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    try:
        time.sleep(1.0)
        r = subprocess.run([sys.executable, "-m", "dcoord", "coordinator", str(job), "--quiet",
                            "--out", str(tmp_path / "out")], env=coord_env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        outs = [w.communicate(timeout=120)[0] for w in workers]
        assert all(w.returncode == 0 for w in workers), outs
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    ref = full_batch_gd("logreg-digits", seed=0, rounds=5, lr=0.5)
    assert max_rel_diff(torch.load(tmp_path / "out" / "model.pt"), ref) < 1e-5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["refused"] == {}
