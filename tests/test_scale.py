"""A coordinator with a few hundred workers (emulated in one process over the real protocol: swarm.py).

What must hold at that size: a worker that stops sending is declared lost once nothing was heard from it for
the configured time (and no other worker is), and a Register flood from one credential is refused while the
job's own workers (another credential) all register.
"""

import asyncio
import contextlib
import json
import threading
import time

import grpc
import pytest
from test_security import _issue, _make_ca, _pem

from dcoord.config import load_config
from dcoord.proto.dcoord.v1 import coordinator_pb2 as pb
from dcoord.proto.dcoord.v1 import coordinator_pb2_grpc as pb_grpc
from dcoord.runtime.coordinator.coordinator import Coordinator
from dcoord.runtime.coordinator.service import MAX_HOSTNAME, start_server
from dcoord.runtime.security.auth import TOKEN_HEADER, ServerSecurity
from dcoord.runtime.worker.swarm import Swarm

TOKEN = "scale-test-token-0123456789"
N = 256  # (s+1) = 3 does not divide it: gc-cyclic decodes through the banded solve


def _cfg(**over):
    data = {"name": "scale", "workload": "linreg-synthetic", "workers": N, "rounds": 100000, "transport": "grpc",
            "coding": {"scheme": "gc-cyclic", "stragglers": 2}, "runtime": {"heartbeat_s": 0.5, "progress": False}}
    data.update(over)
    return load_config(None, data=data)


@contextlib.contextmanager
def coordinator(cfg, security: ServerSecurity, out=None, rounds: bool = False):
    """A served coordinator on its own event loop (running its rounds when ``rounds``): (address, coord, loop)."""
    loop = asyncio.new_event_loop()
    ready, box = threading.Event(), {}

    async def serve():
        coord = Coordinator(cfg, out)
        server, port = await start_server(coord, "127.0.0.1:0", security=security)
        stop = asyncio.Event()
        box.update(port=port, coord=coord, stop=stop)
        ready.set()
        run = asyncio.create_task(coord.run(start_timeout=600)) if rounds else None
        await stop.wait()
        if run is not None:
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
        await server.stop(0)
        coord.close_data_plane()

    t = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    t.start()
    assert ready.wait(120)
    try:
        yield f"127.0.0.1:{box['port']}", box["coord"], loop
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        t.join(60)


async def _ask(loop, fn):
    """``fn()`` on the coordinator's loop (its state belongs to that thread), awaited from another loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_call(fn), loop))


async def _call(fn):
    return fn()


async def _until(pred, what: str, limit: float = 600) -> None:
    """Poll ``pred`` (a guard against a hang, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
def test_a_silent_worker_among_hundreds_is_lost_after_the_configured_time(tmp_path):
    cfg = _cfg()
    with coordinator(cfg, ServerSecurity(token=TOKEN), out=tmp_path / "run", rounds=True) as (address, coord, loop):
        stale_s = coord._members.stale_s
        victim = 7

        async def drive():
            swarm = Swarm(address, N, token=TOKEN)
            swarm.start()
            try:
                await _until(lambda: coord.round >= 3, "three rounds")
                swarm.silence(victim)
                silenced, at_round = time.time(), coord.round
                await _until(lambda: coord.worker_events(), "a worker event")
                await _until(lambda: coord.round >= at_round + 3, "three more rounds")
                # as of now, before the swarm's streams close (that loses every worker)
                return silenced, await _ask(loop, coord.worker_events), await _ask(loop, coord.alive_count), swarm.stats
            finally:
                await swarm.close()

        silenced, events, alive, stats = asyncio.run(drive())
    lost = [e for e in events if e.kind == "lost"]
    assert [(e.worker, e.reason) for e in lost] == [(victim, f"no heartbeat for {stale_s:g} s")]
    assert alive == N - 1  # nobody else: the others' results and heartbeats keep them alive
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r.get("event") == "worker-lost" and r["worker"] == victim]
    detected = records[0]["time"] - silenced
    # never sooner than the configured silence; found by the sweep that follows it (the round loop checks
    # every 0.25 s), so well within twice the configured time even on a loaded machine
    assert stale_s <= detected + 0.05
    assert detected < 2 * stale_s
    assert stats.results > 0 and coord.refused == {}


@pytest.fixture(scope="module")
def certs():
    pytest.importorskip("cryptography", reason="the test makes its certificates with `cryptography`")
    ca = _make_ca("dcoord scale CA")
    return {"ca": _pem(ca[1]), "server": _issue(ca, "coordinator", server=True),
            "job": _issue(ca, "job workers", server=False), "flood": _issue(ca, "flooder", server=False)}


@pytest.mark.slow
def test_a_register_flood_from_one_credential_is_refused_while_the_job_registers(certs):
    cert, key = certs["server"]
    sec = ServerSecurity(token=TOKEN, tls_cert=cert, tls_key=key, tls_ca=certs["ca"], reserve_s=1.0)
    burst = 2 * N + sec.register_burst  # what one credential may send at once (security/limits.py)
    calls = 2 * burst
    with coordinator(_cfg(), sec) as (address, coord, loop):
        flood = {"ok": 0, "rate": 0, "other": 0}  # answers to the flood's calls
        done = threading.Event()

        def flooder():
            creds = grpc.ssl_channel_credentials(certs["ca"], certs["flood"][1], certs["flood"][0])
            with grpc.secure_channel(address, creds) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                for _ in range(calls):
                    if done.is_set():
                        break
                    try:  # calls that pass the limit are refused as malformed, so the flood holds no ids
                        stub.Register(pb.RegisterRequest(hostname="x" * (MAX_HOSTNAME + 1)), timeout=30,
                                      metadata=((TOKEN_HEADER, f"Bearer {TOKEN}"),))
                        flood["ok"] += 1
                    except grpc.RpcError as exc:
                        flood["rate" if "too many registrations" in (exc.details() or "") else "other"] += 1

        async def job():
            swarm = Swarm(address, N, token=TOKEN, credentials=grpc.ssl_channel_credentials(
                certs["ca"], certs["job"][1], certs["job"][0]))
            t = threading.Thread(target=flooder, daemon=True)
            t.start()
            swarm.start()
            try:
                await _until(lambda: len(swarm.stats.registered_at) == N, "the job's workers to register")
                deadline = time.monotonic() + 600
                while await _ask(loop, coord.alive_count) < N:  # every stream attached
                    assert time.monotonic() < deadline, "gave up waiting for the streams"
                    await asyncio.sleep(0.05)
                await _until(lambda: flood["rate"] > 0 or not t.is_alive(), "the flood")
                done.set()
                await asyncio.get_running_loop().run_in_executor(None, t.join, 60)
                return dict(swarm.stats.refusals)
            finally:
                done.set()
                await swarm.close()

        job_refusals = asyncio.run(job())
        refused = coord.refused
    # the flood was refused once past its burst (plus what the rate refilled meanwhile) ...
    assert flood["ok"] == 0 and flood["rate"] > 0 and refused["register-rate"] == flood["rate"]
    assert burst <= flood["other"] == refused["bad-register"] <= burst + 120 * sec.register_rate
    # ... while every worker of the job registered, its credential never refused
    assert not any("register-rate" in k for k in job_refusals), job_refusals


def test_idle_workers_heartbeat_on_their_work_stream_not_the_rpc(monkeypatch):
    """A real worker's link sends its heartbeats on the Work stream (the coordinator says it reads them
    there), so the coordinator hears from an idle worker without one Heartbeat call per worker per second."""
    from dcoord.runtime.coordinator.service import CoordinatorService
    from dcoord.runtime.security.auth import ClientSecurity
    from dcoord.runtime.worker.link import ControlLink, WorkStream

    calls = []
    rpc = CoordinatorService.Heartbeat

    async def counted(self, request, context):
        calls.append(request.worker_id)
        return await rpc(self, request, context)

    monkeypatch.setattr(CoordinatorService, "Heartbeat", counted)
    cfg = _cfg(workers=4, runtime={"heartbeat_s": 0.05, "progress": False})  # one worker: the job only waits
    with coordinator(cfg, ServerSecurity(token=TOKEN)) as (address, coord, loop):
        link = ControlLink(address, ClientSecurity(token=TOKEN))
        reg = link.register(-1, "cpu", 60)
        stream = WorkStream(link, reg)
        try:
            seen = []
            for _ in range(600):
                conn = coord.conns.get(reg.worker_id)
                if conn is not None and conn.attached:
                    seen.append(conn.last_seen)
                    if len(seen) > 1 and seen[-1] > seen[0]:
                        break
                time.sleep(0.05)
        finally:
            stream.close()
            link.close()
    assert reg.heartbeat_on_stream
    assert len(seen) > 1 and seen[-1] > seen[0]  # heard from while idle ...
    assert calls == []  # ... and never through the Heartbeat RPC
