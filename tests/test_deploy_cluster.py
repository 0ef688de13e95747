"""An emulated cluster: the base's coordinator and three workers, run from the built image.

The image is built with ``deploy/build-image.sh --local-base`` (buildah, a Debian base made with
mmdebstrap; its cached layers make a rebuild after a code change cost one small layer) and opened as a
buildah working container: its root file system is a directory here. Each pod is a network namespace of
its own (veth into a bridge in a "node" namespace, an address in a private test subnet that exists only
inside the namespaces made here), and a mount namespace (the one ``ip netns exec`` makes) in which the
image's root is bound read-only (``readOnlyRootFilesystem``), the pod's volumes are bound at their mount
paths (ConfigMap and Secret items as files, emptyDir, the run-directory PVC as a folder here) and the
Service name resolves through the pod's /etc/hosts. The container's command line runs exactly as the
manifests write it (command + args, the image's environment with the container's env over it, the
completion index filled in), chrooted into the image as the pod's runAsUser/runAsGroup/fsGroup, which must
be the image's user. Token and TLS are on (a CA and a server certificate made here, SAN = the Service
name), on the gRPC control plane and on the tcp data plane. The node namespace plays the kubelet (gRPC
health probe on the health port) and Prometheus (a scrape of the metrics port).

The NetworkPolicies are emulated with each selected pod's firewall (iptables in its namespace): a worker
labelled for another job and a pod without labels cannot reach the control or data port; the job's
workers can. The manifests are then applied again, three times, as the docs describe: a finished run is
followed by a new one beside it; a run whose pods are deleted mid-way (SIGTERM, as the kubelet sends) is
resumed from its checkpoint by the next apply, and still ends with the full-batch GD model.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from deploy_manifests import ROOT, argv, flag_values, one, render, resolve_env
from reference import full_batch_gd, max_rel_diff
from tls_files import make_tls

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
SUBNET = "10.213.13"  # private, and only inside the namespaces this test makes
NODE_IP = f"{SUBNET}.1"

IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
TC = shutil.which("tc") or "/usr/sbin/tc"
BUILDAH = shutil.which("buildah") or "/usr/bin/buildah"
MOUNT, CHROOT = shutil.which("mount") or "/usr/bin/mount", shutil.which("chroot") or "/usr/sbin/chroot"
BUILD = ROOT / "deploy" / "build-image.sh"
# a prebuilt image to use instead of building one (its code must be this checkout's)
IMAGE_ENV = "DCOORD_TEST_IMAGE"


def _sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    tools = {"ip": IP, "iptables": IPTABLES, "tc": TC, "buildah": BUILDAH}
    cmd = (tools.get(cmd[0], cmd[0]), *cmd[1:])
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def _unavailable() -> str | None:
    """Why this machine cannot build or run the image in namespaces (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces, chroot and buildah's vfs storage need root"
    for tool, package in ((IP, "iproute2"), (IPTABLES, "iptables"), (TC, "iproute2"), (MOUNT, "mount"),
                          (CHROOT, "coreutils"), (BUILDAH, "buildah")):
        if not os.access(tool, os.X_OK):
            return f"needs {os.path.basename(tool)} (apt-get install {package})"
    if not os.environ.get(IMAGE_ENV) and not shutil.which("mmdebstrap") and \
            _sh("buildah", "inspect", "--type", "image", "localhost/dcoord-base:bookworm", check=False).returncode:
        return "needs mmdebstrap to make the image's Debian base (apt-get install mmdebstrap)"
    probe = f"dcprobe-{uuid.uuid4().hex[:6]}"
    p = _sh("ip", "netns", "add", probe, check=False)
    if p.returncode != 0:
        return f"cannot make a network namespace here: {p.stderr.strip()}"
    try:
        fw = _sh("ip", "netns", "exec", probe, IPTABLES, "-w", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                 "ESTABLISHED", "-j", "ACCEPT", check=False)
        if fw.returncode != 0:
            return f"iptables cannot filter in a network namespace here: {fw.stderr.strip()}"
    finally:
        _sh("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture(scope="module")
def image() -> str:
    """The image under test: built from this checkout by the documented command (cached layers)."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    if os.environ.get(IMAGE_ENV):
        return os.environ[IMAGE_ENV]
    _wait_for_background_build()
    out = subprocess.run([str(BUILD), "--local-base"], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env=dict(os.environ, ENGINE="buildah"))  # opened with buildah below
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    version = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version = "))
    return f"localhost/dcoord:{version}-cpu"


def _wait_for_background_build() -> None:
    """CI builds the image while the suite runs (.ci/run sets DCOORD_IMAGE_BUILD_DONE, the file that build
    touches when it ends): wait for it, so the build below only re-uses its cached layers."""
    done = os.environ.get("DCOORD_IMAGE_BUILD_DONE")
    deadline = time.monotonic() + 3600
    while done and not Path(done).exists() and time.monotonic() < deadline:
        time.sleep(5)


class ImageRoot:
    """A buildah working container of ``image``: its root file system as a directory, and its config."""

    def __init__(self, image: str) -> None:
        cfg = json.loads(_sh("buildah", "inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
        self.user = cfg.get("User", "")
        self.entrypoint, self.cmd = cfg.get("Entrypoint") or [], cfg.get("Cmd") or []
        self.env = dict(e.split("=", 1) for e in cfg.get("Env", []))
        self.workdir = cfg.get("WorkingDir") or "/"
        self.ctr = _sh("buildah", "from", "--pull=never", "--quiet", image).stdout.strip()
        self.root = Path(_sh("buildah", "mount", self.ctr).stdout.strip())

    def argv(self, container: dict) -> list[str]:
        """What the container runs: command replaces the entrypoint (and the image's CMD), args the CMD."""
        if "command" in container:
            return list(container["command"]) + list(container.get("args", []))
        return self.entrypoint + list(container.get("args", self.cmd))

    def close(self) -> None:
        _sh("buildah", "umount", self.ctr, check=False)
        _sh("buildah", "rm", self.ctr, check=False)


class EmulatedCluster:
    """Network namespaces on a bridge; pods as processes inside them. Everything is removed in close()."""

    def __init__(self, root: Path, image: ImageRoot) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.root = root
        self.image = image
        self.node = f"dc{self.tag}-node"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.hosts: dict[str, str] = {}
        self.pods: dict[str, tuple[str, str, dict[str, str]]] = {}  # name -> (namespace, address, labels)
        self.made_etc_netns = not Path("/etc/netns").exists()
        _sh("ip", "netns", "add", self.node)
        self.namespaces.append(self.node)
        _sh("ip", "-n", self.node, "link", "set", "lo", "up")
        _sh("ip", "-n", self.node, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.node, "addr", "add", f"{NODE_IP}/24", "dev", "br0")
        _sh("ip", "-n", self.node, "link", "set", "br0", "up")

    def add_pod(self, name: str, octet: int, labels: dict[str, str], aliases: tuple[str, ...] = ()) -> tuple[str, str]:
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
        self.pods[name] = (ns, addr, dict(labels))
        return ns, addr

    def write_hosts(self) -> None:
        """The cluster DNS, as each namespace's /etc/hosts (ip netns exec mounts /etc/netns/NS/hosts)."""
        lines = ["127.0.0.1 localhost"] + [f"{addr} {name}" for name, addr in self.hosts.items()]
        for ns in self.namespaces:
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("\n".join(lines) + "\n")
            (d / "hosts").chmod(0o644)

    def enforce(self, policies: list[dict]) -> dict[str, list[str]]:
        """The NetworkPolicies as each selected pod's INPUT chain: replies, loopback and the node (the
        kubelet's probes) pass, then what an ingress rule allows, then nothing. Returns the rules made."""
        allows: dict[str, list[list[str]]] = {}
        for pol in policies:
            spec = pol["spec"]
            assert spec.get("policyTypes") == ["Ingress"], "this emulation knows ingress policies only"
            for name, (_, _, labels) in self.pods.items():
                if not _selects(spec["podSelector"], labels):
                    continue
                rules = allows.setdefault(name, [])
                for rule in spec.get("ingress") or []:
                    sources: list[str | None] = []
                    for peer in rule.get("from") or [{}]:
                        if set(peer) - {"podSelector", "namespaceSelector"}:
                            raise AssertionError(f"{pol['metadata']['name']}: a peer this emulation does not know")
                        if "namespaceSelector" in peer and peer["namespaceSelector"] == {} or peer == {}:
                            sources.append(None)  # any pod in any namespace
                        else:  # the pods of this (the only) namespace that the selector matches
                            sources += [a for _, a, lab in self.pods.values() if _selects(peer["podSelector"], lab)]
                    for port in rule.get("ports") or [{}]:
                        for src in sources:
                            r = ["-p", port.get("protocol", "TCP").lower()]
                            r += ["--dport", str(port["port"])] if "port" in port else []
                            rules.append(r + (["-s", src] if src else []))
        made: dict[str, list[str]] = {}
        for name, rules in allows.items():
            ns = self.pods[name][0]
            chain = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"], ["-i", "lo"], ["-s", NODE_IP]]
            for r in [*chain, *rules]:
                _sh("ip", "netns", "exec", ns, IPTABLES, "-w", "-A", "INPUT", *r, "-j", "ACCEPT")
            _sh("ip", "netns", "exec", ns, IPTABLES, "-w", "-A", "INPUT", "-j", "DROP")
            made[name] = [" ".join(r) for r in rules]
        return made

    def start(self, name: str, cmd: list[str], env: dict[str, str], uid: int, gid: int, groups: list[int],
              volumes: dict[str, tuple[Path, bool]], log: Path) -> subprocess.Popen:
        """Run ``cmd`` in pod ``name``: its network namespace, the image's root read-only with the volumes
        bound in, chrooted as uid:gid, in the image's working directory; output to ``log``."""
        ns, root = self.pods[name][0], self.image.root
        for mp in [*volumes, "/etc/hosts"]:  # mount points, made in the image's (writable) copy
            target = root / mp.lstrip("/")
            if mp == "/etc/hosts":
                target.touch(exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
        q = shlex.quote
        lines = ["set -e", f"{MOUNT} --bind {q(str(root))} {q(str(root))}",
                 f"{MOUNT} -o remount,bind,ro {q(str(root))}",
                 f"{MOUNT} -t proc proc {q(str(root / 'proc'))}",
                 f"{MOUNT} --rbind /dev {q(str(root / 'dev'))}",
                 f"{MOUNT} --bind /etc/hosts {q(str(root / 'etc/hosts'))}"]  # the namespace's own hosts file
        for mp, (src, read_only) in volumes.items():
            target = q(str(root / mp.lstrip("/")))
            lines.append(f"{MOUNT} --bind {q(str(src))} {target}")
            if read_only:
                lines.append(f"{MOUNT} -o remount,bind,ro {target}")
        user = f"--userspec={uid}:{gid} --groups={','.join(map(str, groups))}"
        lines.append(f'exec {CHROOT} {user} {q(str(root))} /bin/sh -c \'cd "$0" && exec "$@"\' '
                     f"{q(self.image.workdir)} {shlex.join(cmd)}")
        out = open(log, "ab")
        p = subprocess.Popen([IP, "netns", "exec", ns, "/bin/sh", "-c", "\n".join(lines)], env=env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def run_in(self, name: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Python (this machine's) run in pod ``name``'s network namespace or the node's: a probe."""
        ns = self.node if name == "node" else self.pods[name][0]
        return subprocess.run([IP, "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
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


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise AssertionError(f"a selector this emulation does not know: {selector}")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def materialize(pod_dir: Path, template: dict, container: dict, configmaps: dict, secret_data: dict,
                pvcs: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Lay out the container's volumes under ``pod_dir``; returns {mountPath: (host dir, read-only)}."""
    sc = template["spec"].get("securityContext", {})
    fs_group = sc.get("fsGroup", 0)
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mounts: dict[str, tuple[Path, bool]] = {}
    for m in container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        read_only = bool(m.get("readOnly"))
        if "persistentVolumeClaim" in vol:
            mounts[m["mountPath"]] = (pvcs[vol["persistentVolumeClaim"]["claimName"]], read_only)
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
            read_only = True  # the kubelet mounts ConfigMaps and Secrets read-only
        else:
            raise AssertionError(f"volume {m['name']}: a kind this emulation does not know")
        mounts[m["mountPath"]] = (d, read_only)
    return mounts


def _connect_code(addr: str, port: int) -> str:
    """Prints open (accepted), refused (a reset: the port is reachable) or blocked (no answer)."""
    return ("import socket\n"
            "try:\n"
            f"    socket.create_connection(('{addr}', {port}), timeout=3).close(); print('open')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except OSError: print('blocked')\n")


def test_base_runs_in_an_emulated_cluster(image: str):
    docs = render("base")
    cjob, wjob = one(docs, "Job", "dcoord-coordinator"), one(docs, "Job", "dcoord-workers")
    svc = one(docs, "Service", "dcoord-coordinator")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    ctpl, wtpl = cjob["spec"]["template"], wjob["spec"]["template"]
    (cc,), (wc,) = ctpl["spec"]["containers"], wtpl["spec"]["containers"]
    n_workers = wjob["spec"]["completions"]
    assert n_workers == 3 and len(policies) == 2
    job = yaml.safe_load(configmaps["dcoord-job"]["job.yaml"])
    ports = {p["name"]: p["containerPort"] for p in cc["ports"]}
    out_flag = flag_values(argv(cc))["--out"]
    assert "--resume-or-new" in argv(cc), "the coordinator Job must run again when re-applied"

    service = svc["metadata"]["name"]
    secret_data = {"dcoord-token": {"token": secrets.token_hex(32)}, "dcoord-tls": make_tls(service)}
    root = Path(tempfile.mkdtemp(prefix="dcoord-cluster-"))
    root.chmod(0o755)
    img = cluster = None
    try:
        img = ImageRoot(image)
        cluster = EmulatedCluster(root, img)
        pvcs = {}
        for d in docs:
            if d["kind"] == "PersistentVolumeClaim":
                p = root / "pvc" / d["metadata"]["name"]
                p.mkdir(parents=True)
                pvcs[d["metadata"]["name"]] = p
        runs_mount = next(m["mountPath"] for m in cc["volumeMounts"] if m["name"] == "runs")
        runs = pvcs["dcoord-runs"]
        assert out_flag.startswith(runs_mount.rstrip("/") + "/")

        def on_volume(path: str) -> Path:  # a path under the run-directory volume, as seen from here
            return runs / path[len(runs_mount):].lstrip("/")

        coord_ip = cluster.add_pod("coord", 10, ctpl["metadata"]["labels"], aliases=(service,))[1]
        workers = [f"w{i}" for i in range(n_workers)]
        for i, name in enumerate(workers):
            cluster.add_pod(name, 11 + i, wtpl["metadata"]["labels"])
        other_job = {**wtpl["metadata"]["labels"], "app.kubernetes.io/instance": "another-job"}
        cluster.add_pod("other-job-worker", 30, other_job)
        cluster.add_pod("unlabelled", 31, {})
        cluster.write_hosts()
        made = cluster.enforce(policies)
        # a worker admits exactly this job's workers (transport: allreduce's group), on any port, and no one else
        peers = {f"-p tcp -s {cluster.ip(w)}" for w in workers} if hasattr(cluster, "ip") else None
        assert set(made) == {"coord", *workers}, made
        assert all(len(made[w]) == len(workers) and (peers is None or set(made[w]) == peers) for w in workers), made

        def launch(name: str, tpl: dict, c: dict, fields: dict[str, str], apply: int) -> subprocess.Popen:
            sc = tpl["spec"]["securityContext"]
            # the pod's user is the image's: the manifests' runAsUser/runAsGroup is what USER names
            assert img.user == f"{sc['runAsUser']}:{sc['runAsGroup']}", (img.user, sc)
            for p in pvcs.values():
                os.chown(p, sc["runAsUser"], sc.get("fsGroup", sc["runAsGroup"]))
            volumes = materialize(root / "pods" / f"{apply}-{name}", tpl, c, configmaps, secret_data, pvcs)
            env = {**img.env, **resolve_env(c, tpl["metadata"], fields)}
            groups = [sc.get("fsGroup", sc["runAsGroup"])]
            return cluster.start(name, img.argv(c), env, sc["runAsUser"], sc["runAsGroup"], groups, volumes,
                                 root / f"{name}.log")

        def apply(k: int, before_workers=None) -> dict[str, subprocess.Popen]:
            """kubectl apply: the coordinator Job's pod, then the workers' (the Job controller sets each
            pod's completion index)."""
            procs = {"coord": launch("coord", ctpl, cc, {"status.podIP": coord_ip}, k)}
            out = cluster.run_in("node", _probe_code(coord_ip, ports["health"], wait_s=120), timeout=150)
            assert out.stdout.strip() == "SERVING", out.stdout + out.stderr + _logs(root)
            if before_workers:
                before_workers()
            for i, name in enumerate(workers):
                procs[name] = launch(name, wtpl, wc, {INDEX_FIELD: str(i)}, k)
            return procs

        def wait_all(procs: dict[str, subprocess.Popen]) -> dict[str, int]:
            deadline = time.monotonic() + 300
            codes = {}
            for name, p in procs.items():
                try:
                    codes[name] = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{name} did not finish within 300 s\n" + _logs(root)) from None
            return codes

        def check_run(run: Path, rounds: int) -> None:
            summary = json.loads((run / "summary.json").read_text())
            assert summary["rounds_completed"] == rounds and summary["workers"] == n_workers
            model = torch.load(run / "model.pt")
            ref = full_batch_gd(job["workload"], seed=job["seed"], rounds=rounds, lr=job["optimizer"]["lr"],
                                momentum=job["optimizer"]["momentum"], batch_size=job["batch_size"])
            assert max_rel_diff(model, ref) < 1e-5
            records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            assert len([r for r in records if "event" not in r]) == rounds
            # the tcp data plane, through the Service's data port, under the token-issued key and TLS
            ran = yaml.safe_load((run / "config.yaml").read_text())
            assert ran["transport"] == "tcp" and ran["runtime"]["data_port"] == ports["data"]
            assert summary["refused"] == {}, summary["refused"]

        def network_checks() -> None:
            # the kubelet's view is above (the plaintext health probe); the job port speaks only TLS
            plain = cluster.run_in("node", _probe_code(coord_ip, ports["grpc"], wait_s=2))
            assert plain.stdout.startswith("FAILED"), plain.stdout + plain.stderr
            # Prometheus' view: the annotated port serves the metrics, from any pod (namespaceSelector {})
            mport = int(ctpl["metadata"]["annotations"]["prometheus.io/port"])
            path = ctpl["metadata"]["annotations"]["prometheus.io/path"]
            for where in ("node", "unlabelled"):
                scrape = cluster.run_in(where, f"import urllib.request; print(urllib.request.urlopen("
                                               f"'http://{coord_ip}:{mport}{path}', timeout=5).read().decode())")
                assert scrape.returncode == 0, where + scrape.stderr
                assert f'dcoord_workers_expected{{job_name="{job["name"]}"}} {float(n_workers)}' in scrape.stdout
            # the NetworkPolicy: the control and data ports answer this job's workers and no one else
            # (the workers' run below uses both ports; a bare connection to the data port would count as
            # a refused peer there, so the explicit check from a worker's pod asks the gRPC port)
            for port in (ports["grpc"], ports["data"]):
                seen = {who: cluster.run_in(who, _connect_code(coord_ip, port)).stdout.strip()
                        for who in ("other-job-worker", "unlabelled")}
                assert seen == {"other-job-worker": "blocked", "unlabelled": "blocked"}, (port, seen)
            assert cluster.run_in("w0", _connect_code(coord_ip, ports["grpc"])).stdout.strip() == "open"
            # and nothing may connect to a worker (its policy has no ingress rule), not even the coordinator
            assert cluster.run_in("coord", _connect_code(cluster.pods["w1"][1], 22)).stdout.strip() == "blocked"

        # 1. the first apply: the job runs to its end
        procs = apply(1, before_workers=network_checks)
        codes = wait_all(procs)
        assert set(codes.values()) == {0}, f"{codes}\n" + _logs(root)
        check_run(on_volume(out_flag), job["rounds"])

        # 2. applied again as it is (after kubectl delete job): the finished run stays, a new one starts
        codes = wait_all(apply(2))
        assert set(codes.values()) == {0}, f"{codes}\n" + _logs(root)
        second = on_volume(out_flag + "-2")
        check_run(second, job["rounds"])
        check_run(on_volume(out_flag), job["rounds"])  # untouched

        # 3. applied again, and the Jobs deleted mid-way: the kubelet sends SIGTERM to every pod. The
        # coordinator's link is slowed (a token bucket: ~0.5 s per round of models) so that the run is still
        # going when the deletion comes.
        coord_ns = cluster.pods["coord"][0]
        _sh("ip", "netns", "exec", coord_ns, TC, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "256kbit",
            "burst", "4kb", "latency", "5s")
        third = on_volume(out_flag + "-3")
        procs = apply(3)
        while not (third / "metrics.jsonl").is_file() or not (third / "metrics.jsonl").read_text().strip():
            assert procs["coord"].poll() is None, _logs(root)
            time.sleep(0.05)
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        wait_all(procs)
        _sh("ip", "netns", "exec", coord_ns, TC, "qdisc", "del", "dev", "eth0", "root")
        assert not (third / "summary.json").exists(), "the run ended before the deletion: nothing to resume"
        assert list((third / "checkpoints").glob("ckpt-*.pt")), _logs(root)

        # 4. applied again: the stopped run is resumed from its checkpoint and ends as one uninterrupted run
        codes = wait_all(apply(4))
        assert set(codes.values()) == {0}, f"{codes}\n" + _logs(root)
        check_run(third, job["rounds"])
        assert not on_volume(out_flag + "-4").exists()
        events = [json.loads(x) for x in (third / "metrics.jsonl").read_text().splitlines()]
        assert any(e.get("event") == "resume" for e in events), events
        assert f"resuming {out_flag}-3" in (root / "coord.log").read_text()
    finally:
        if cluster is not None:
            cluster.close()
        if img is not None:
            img.close()
        leftover = [ns for ns in _sh("ip", "netns", "list", check=False).stdout.split()
                    if cluster is not None and ns.startswith(f"dc{cluster.tag}")]
        containers = _sh("buildah", "containers", "--quiet", check=False).stdout.split()
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"namespaces left behind: {leftover}"
        assert img is None or img.ctr not in containers, f"buildah container left behind: {img.ctr}"


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
