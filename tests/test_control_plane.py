"""The gRPC control plane: generated code matches protos/, health service, status command."""

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dcoord.config import load_config
from dcoord.runtime.coordinator.coordinator import Coordinator
from dcoord.runtime.coordinator.service import start_server

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_protos():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stale_check_detects_a_changed_proto(tmp_path):
    """The check must fail when protos/ and dcoord/proto/ disagree (so CI catches a forgotten regen)."""
    import shutil

    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "dcoord" / "proto", tmp_path / "dcoord" / "proto")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_protos.py", tmp_path / "scripts")
    proto = tmp_path / "protos" / "dcoord" / "v1" / "coordinator.proto"
    proto.write_text(proto.read_text() + "\nmessage Extra { int32 x = 1; }\n")
    r = subprocess.run([sys.executable, str(tmp_path / "scripts" / "gen_protos.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "stale" in r.stdout


def test_health_and_status_of_a_waiting_coordinator():
    cfg = load_config(None, data={"name": "waiting", "workers": 3, "rounds": 2})
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    async def serve():
        coord = Coordinator(cfg, None)
        server, port = await start_server(coord, "127.0.0.1:0")
        stop = asyncio.Event()
        box.update(port=port, stop=stop)
        ready.set()
        await stop.wait()
        await server.stop(0)

    t = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    t.start()
    assert ready.wait(20)
    address = f"127.0.0.1:{box['port']}"
    try:
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        r = subprocess.run([sys.executable, "-m", "dcoord", "status", address], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert "waiting [" in r.stdout and "waiting-for-workers" in r.stdout and "workers 0/3" in r.stdout
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        t.join(20)
    r = subprocess.run([sys.executable, "-m", "dcoord", "status", address, "--timeout", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no coordinator answering" in r.stderr and "Traceback" not in r.stderr
