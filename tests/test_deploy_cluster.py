"""An emulated cluster: the base's coordinator and three workers, run from the rendered manifests.

Each pod is a network namespace of its own (veth into a bridge in a "node" namespace, an address in a
private test subnet that exists only inside the namespaces made here); the Service name resolves
through the pod namespace's /etc/netns/NAME/hosts, which `ip netns exec` mounts over /etc/hosts. The
containers' command lines run exactly as the manifests write them (command + args, env with the
completion index filled in, as the pod's runAsUser/runAsGroup/fsGroup), with the ConfigMap and Secret
items as files under each mount path, the mount roots moved into a temp directory. Token and TLS are on
(a CA and a server certificate made here, SAN = the Service name), on the gRPC control plane and on the
tcp data plane the base runs (``--set=transport=tcp``, ``runtime.data_port`` in the ConfigMap). The node
namespace plays the kubelet (gRPC health probe on the health port) and Prometheus (a scrape of the metrics
port).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
import yaml
from deploy_manifests import (
    ROOT,
    argv,
    flag_values,
    one,
    render,
    resolve_env,
)
from reference import full_batch_gd, max_rel_diff

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
SUBNET = "10.213.13"  # private, and only inside the namespaces this test makes


IP = shutil.which("ip") or "/usr/sbin/ip"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (IP, *cmd[1:]) if cmd[0] == "ip" else cmd
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60)


def _namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not (os.access(IP, os.X_OK) and os.access(SETPRIV, os.X_OK)):
        return "needs iproute2 (ip) and util-linux (setpriv)"
    probe = f"dcprobe-{uuid.uuid4().hex[:6]}"
    p = _sh("ip", "netns", "add", probe, check=False)
    if p.returncode != 0:
        return f"cannot make a network namespace here: {p.stderr.strip()}"
    _sh("ip", "netns", "del", probe, check=False)
    return None


def make_tls(service: str) -> dict[str, bytes]:
    """A CA and a server certificate for ``service`` (subjectAltName DNS:service), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dcoord-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(service)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {
        "ca.crt": ca.public_bytes(pem),
        "tls.crt": cert.public_bytes(pem),
        "tls.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }


class EmulatedCluster:
    """Network namespaces on a bridge; pods as processes inside them. Everything is removed in close()."""

    def __init__(self, root: Path) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.root = root
        self.node = f"dc{self.tag}-node"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.hosts: dict[str, str] = {}
        self.made_etc_netns = not Path("/etc/netns").exists()
        _sh("ip", "netns", "add", self.node)
        self.namespaces.append(self.node)
        _sh("ip", "-n", self.node, "link", "set", "lo", "up")
        _sh("ip", "-n", self.node, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.node, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        _sh("ip", "-n", self.node, "link", "set", "br0", "up")

    def add_pod(self, name: str, octet: int, aliases: tuple[str, ...] = ()) -> tuple[str, str]:
        """A namespace with eth0 = SUBNET.octet on the node's bridge; returns (namespace, address)."""
        ns, addr = f"dc{self.tag}-{name}", f"{SUBNET}.{octet}"
        _sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        veth = f"v{self.tag}{octet}"
        _sh("ip", "-n", self.node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "-n", self.node, "link", "set", veth, "master", "br0", "up")
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        for a in aliases:
            self.hosts[a] = addr
        return ns, addr

    def write_hosts(self) -> None:
        """The cluster DNS, as each namespace's /etc/hosts (ip netns exec mounts /etc/netns/NS/hosts)."""
        lines = ["127.0.0.1 localhost"] + [f"{addr} {name}" for name, addr in self.hosts.items()]
        for ns in self.namespaces:
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("\n".join(lines) + "\n")
            (d / "hosts").chmod(0o644)

    def start(self, ns: str, cmd: list[str], env: dict[str, str], uid: int, gid: int, groups: list[int],
              log: Path) -> subprocess.Popen:
        """Run ``cmd`` inside ``ns`` as uid:gid (the pod's securityContext), output to ``log``."""
        user = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", f"--groups={','.join(map(str, groups))}"]
        out = open(log, "wb")
        p = subprocess.Popen([IP, "netns", "exec", ns, *user, *cmd], env=env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def in_node(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Python run in the node namespace (the kubelet's / Prometheus' view of the pods)."""
        return subprocess.run([IP, "netns", "exec", self.node, sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        for ns in reversed(self.namespaces):
            pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:  # only processes inside the namespaces made here
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        if self.made_etc_netns:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()


def materialize(pod_dir: Path, template: dict, container: dict, configmaps: dict, secret_data: dict,
                pvcs: dict[str, Path]) -> dict[str, Path]:
    """Lay out the container's volumes under ``pod_dir``; returns {mountPath: host dir}."""
    sc = template["spec"].get("securityContext", {})
    fs_group = sc.get("fsGroup", 0)
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        if "persistentVolumeClaim" in vol:
            mounts[m["mountPath"]] = pvcs[vol["persistentVolumeClaim"]["claimName"]]
            continue
        d = pod_dir / m["mountPath"].lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            d.chmod(0o1777)
        elif "configMap" in vol or "secret" in vol:
            src = vol.get("configMap") or vol.get("secret")
            data = configmaps[src["name"]] if "configMap" in vol else secret_data[src["secretName"]]
            mode = src.get("defaultMode", 0o644)
            for item in src.get("items") or [{"key": k, "path": k} for k in data]:
                f = d / item["path"]
                f.parent.mkdir(parents=True, exist_ok=True)
                content = data[item["key"]]
                f.write_bytes(content if isinstance(content, bytes) else content.encode())
                os.chown(f, 0, fs_group)
                f.chmod(mode)
            os.chown(d, 0, fs_group)
            d.chmod(0o755)
        else:
            raise AssertionError(f"volume {m['name']}: a kind this emulation does not know")
        mounts[m["mountPath"]] = d
    return mounts


def rewrite(value: str, mounts: dict[str, Path]) -> str:
    """Move a path (or the value of --flag=PATH) under a mount root to where the mount lives here."""
    if value.startswith("--") and "=" in value:
        flag, v = value.split("=", 1)
        return f"{flag}={rewrite(v, mounts)}"
    for mp in sorted(mounts, key=len, reverse=True):
        if value == mp or value.startswith(mp.rstrip("/") + "/"):
            return str(mounts[mp]) + value[len(mp.rstrip("/")):]
    return value


def test_base_runs_in_an_emulated_cluster():
    reason = _namespaces_unavailable()
    if reason:  # CI runs as root with iproute2 (dev.sh installs it): not a reason to skip
        pytest.fail(reason)
    docs = render("base")
    cjob, wjob = one(docs, "Job", "dcoord-coordinator"), one(docs, "Job", "dcoord-workers")
    svc = one(docs, "Service", "dcoord-coordinator")
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    ctpl, wtpl = cjob["spec"]["template"], wjob["spec"]["template"]
    (cc,), (wc,) = ctpl["spec"]["containers"], wtpl["spec"]["containers"]
    n_workers = wjob["spec"]["completions"]
    assert n_workers == 3

    service = svc["metadata"]["name"]
    secret_data = {"dcoord-token": {"token": secrets.token_hex(32)}, "dcoord-tls": make_tls(service)}
    root = Path(tempfile.mkdtemp(prefix="dcoord-cluster-"))
    root.chmod(0o755)
    bindir = root / "bin"  # `dcoord` as the image has it on PATH (entrypoint), running this checkout
    bindir.mkdir()
    (bindir / "dcoord").write_text(f"#!{sys.executable}\nimport sys\nfrom dcoord.cli import main\nsys.exit(main())\n")
    (bindir / "dcoord").chmod(0o755)
    cluster = None
    procs = {}
    try:
        cluster = EmulatedCluster(root)
        pvcs = {}
        for d in docs:
            if d["kind"] == "PersistentVolumeClaim":
                p = root / "pvc" / d["metadata"]["name"]
                p.mkdir(parents=True)
                pvcs[d["metadata"]["name"]] = p
        coord_ns, coord_ip = cluster.add_pod("coord", 10, aliases=(service,))
        worker_ns = [cluster.add_pod(f"w{i}", 11 + i)[0] for i in range(n_workers)]
        cluster.write_hosts()

        def launch(ns: str, tpl: dict, c: dict, name: str, fields: dict[str, str]) -> subprocess.Popen:
            sc = tpl["spec"]["securityContext"]
            for p in pvcs.values():
                os.chown(p, sc["runAsUser"], sc.get("fsGroup", sc["runAsGroup"]))
            mounts = materialize(root / "pods" / name, tpl, c, configmaps, secret_data, pvcs)
            env = {k: rewrite(v, mounts) for k, v in resolve_env(c, tpl["metadata"], fields).items()}
            env.update({"PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
            cmd = [rewrite(a, mounts) for a in argv(c)]
            groups = [sc.get("fsGroup", sc["runAsGroup"])]
            return cluster.start(ns, cmd, env, sc["runAsUser"], sc["runAsGroup"], groups, root / f"{name}.log")

        procs["coordinator"] = launch(coord_ns, ctpl, cc, "coordinator", {"status.podIP": coord_ip})

        # the kubelet's view: the plaintext gRPC health probe on the probes' port answers SERVING ...
        health_port = next(p["containerPort"] for p in cc["ports"] if p["name"] == "health")
        assert cc["readinessProbe"]["grpc"]["port"] == cc["livenessProbe"]["grpc"]["port"] == health_port
        out = cluster.in_node(_probe_code(coord_ip, health_port, wait_s=90), timeout=120)
        assert out.stdout.strip() == "SERVING", out.stdout + out.stderr + _logs(root)
        # ... while the job port speaks only TLS: a plaintext call there fails
        grpc_port = next(p["containerPort"] for p in cc["ports"] if p["name"] == "grpc")
        plain = cluster.in_node(_probe_code(coord_ip, grpc_port, wait_s=2))
        assert plain.stdout.startswith("FAILED"), plain.stdout + plain.stderr
        # Prometheus' view: the annotated port serves the metrics
        mport = int(ctpl["metadata"]["annotations"]["prometheus.io/port"])
        path = ctpl["metadata"]["annotations"]["prometheus.io/path"]
        scrape = cluster.in_node(f"import urllib.request; print(urllib.request.urlopen("
                                 f"'http://{coord_ip}:{mport}{path}', timeout=5).read().decode())")
        assert scrape.returncode == 0, scrape.stderr
        assert f'dcoord_workers_expected{{job_name="quickstart"}} {float(n_workers)}' in scrape.stdout

        for i, ns in enumerate(worker_ns):  # the Job controller sets each pod's completion index
            procs[f"worker-{i}"] = launch(ns, wtpl, wc, f"worker-{i}", {INDEX_FIELD: str(i)})

        deadline = time.monotonic() + 300
        for name, p in procs.items():
            try:
                rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} did not finish within 300 s\n" + _logs(root)) from None
            assert rc == 0, f"{name} exited {rc}\n" + _logs(root)

        # the job's outputs on the run-directory volume; the model equals plain full-batch GD
        out_dir = rewrite(flag_values(argv(cc))["--out"], {m["mountPath"]: pvcs["dcoord-runs"]
                                                           for m in cc["volumeMounts"] if m["name"] == "runs"})
        run = Path(out_dir)
        summary = json.loads((run / "summary.json").read_text())
        job = yaml.safe_load(configmaps["dcoord-job"]["job.yaml"])
        assert summary["rounds_completed"] == job["rounds"] and summary["workers"] == n_workers
        model = torch.load(run / "model.pt")
        ref = full_batch_gd(job["workload"], seed=job["seed"], rounds=job["rounds"], lr=job["optimizer"]["lr"],
                            momentum=job["optimizer"]["momentum"], batch_size=job["batch_size"])
        assert max_rel_diff(model, ref) < 1e-5
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == job["rounds"]
        # the job ran on the tcp data plane (workers fail rather than fall back when it is unreachable),
        # through the Service's data port, under the same token-issued key and TLS as the control plane
        ran = yaml.safe_load((run / "config.yaml").read_text())
        data_port = next(p["containerPort"] for p in cc["ports"] if p["name"] == "data")
        assert ran["transport"] == "tcp" and ran["runtime"]["data_port"] == data_port
        assert summary["refused"] == {}, summary["refused"]
    finally:
        if cluster is not None:
            cluster.close()
        leftover = [ns for ns in _sh("ip", "netns", "list", check=False).stdout.split() if ns.startswith("dc")
                    and cluster is not None and ns.startswith(f"dc{cluster.tag}")]
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"namespaces left behind: {leftover}"


def _logs(root: Path) -> str:
    out = []
    for log in sorted(root.glob("*.log")):
        out.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(out)



def _probe_code(addr: str, port: int, wait_s: float) -> str:
    """What the kubelet's gRPC probe does: plaintext grpc.health.v1 Check; prints the status or FAILED."""
    return (
        "import grpc, time\n"
        "from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg\n"
        f"deadline = time.time() + {wait_s}\n"
        "while True:\n"
        "    try:\n"
        f"        with grpc.insecure_channel('{addr}:{port}') as ch:\n"
        "            r = hg.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=2)\n"
        "        print(h.HealthCheckResponse.ServingStatus.Name(r.status)); break\n"
        "    except grpc.RpcError as e:\n"
        "        if time.time() > deadline: print('FAILED', e.code().name); break\n"
        "        time.sleep(0.5)\n"
    )
