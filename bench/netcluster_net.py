"""An emulated cluster for the network bench: one network namespace per node on a Linux bridge, each node's
link capped by ``tc`` in both directions. Needs root and iproute2 (``ip``, ``tc``).

Layout: a hub namespace holds the bridge; every node (the coordinator and each worker) is a namespace with
``eth0`` = 10.77.<k>.<j>/16, the other end of its veth on the hub's bridge. Egress on both ends of each veth is
shaped (tbf at B): the node's end caps what it sends, the hub's end what it receives. Nothing is made in the
host's own namespace, so traffic cannot leave, and removing the namespaces removes every link and qdisc.

Names start with ``dcnb-<pid>-``; :func:`cleanup_leftovers` removes those of processes that are gone (a
crashed or killed run), and :meth:`Cluster.close` removes its own (also on error / Ctrl-C: use ``with``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

PREFIX = "dcnb-"
IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
SUBNET = "10.77"  # private, and only inside the namespaces made here


class NetError(RuntimeError):
    """The emulated cluster cannot be made here (not root, no iproute2, no netem for a latency)."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def unavailable() -> str | None:
    """Why an emulated cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    if not (os.access(IP, os.X_OK) and os.access(TC, os.X_OK)):
        return "needs iproute2 (ip and tc)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    p = _run(IP, "netns", "add", probe, check=False)
    if p.returncode != 0:
        return f"cannot make a network namespace here: {p.stderr.strip()}"
    _run(IP, "netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    """Every network namespace whose name starts with the bench's prefix."""
    out = _run(IP, "netns", "list", check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(PREFIX)]


def _kill_inside(ns: str) -> None:
    for pid in _run(IP, "netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


def _delete(ns: str) -> None:
    _kill_inside(ns)
    _run(IP, "netns", "del", ns, check=False)


def cleanup_leftovers() -> list[str]:
    """Remove the namespaces (and the processes in them) of bench runs whose process is gone."""
    removed = []
    for ns in namespaces():
        owner = ns[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and Path(f"/proc/{owner}").exists():
            continue  # a live run's
        _delete(ns)
        removed.append(ns)
    return removed


def _shape(ns: str, dev: str, gbps: float, latency_ms: float) -> None:
    """Cap ``dev``'s egress at ``gbps`` (tbf, burst = 1 ms at the rate), with netem delay under it if asked."""
    rate = f"{gbps * 1000:.6g}mbit"
    burst = max(int(gbps * 1e9 / 8 / 1000), 16_000)  # one millisecond at the rate; >= a GSO segment's worth
    _run(TC, "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", rate, "burst", str(burst),
         "latency", "100ms")
    if latency_ms > 0:
        p = _run(TC, "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem", "delay",
                 f"{latency_ms}ms", check=False)
        if p.returncode != 0:
            raise NetError(f"--latency-ms needs the kernel's netem qdisc (sch_netem), not available here: "
                           f"{p.stderr.strip()}; run with --latency-ms 0")


class Cluster:
    """Namespaces on a bridge, links capped at ``gbps``; run processes inside with :meth:`popen`."""

    def __init__(self, gbps: float = 1.0, latency_ms: float = 0.0) -> None:
        self.gbps, self.latency_ms = gbps, latency_ms
        self.tag = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.hub = f"{self.tag}-hub"
        self.nodes: dict[str, str] = {}  # node name -> address
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._add_ns(self.hub)
        _run(IP, "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run(IP, "-n", self.hub, "link", "set", "br0", "up")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        _run(IP, "netns", "add", ns)
        self.made.append(ns)
        _run(IP, "-n", ns, "link", "set", "lo", "up")

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def add_node(self, node: str) -> str:
        """A namespace for ``node`` with a capped link to the bridge; returns its address."""
        k = len(self.nodes) + 1
        ns, addr, veth = self.ns(node), f"{SUBNET}.{k // 250}.{k % 250 + 1}", f"vn{k}"
        self._add_ns(ns)
        _run(IP, "-n", self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(IP, "-n", self.hub, "link", "set", veth, "master", "br0", "up")
        _run(IP, "-n", ns, "addr", "add", f"{addr}/16", "dev", "eth0")
        _run(IP, "-n", ns, "link", "set", "eth0", "up")
        _shape(ns, "eth0", self.gbps, self.latency_ms)  # what the node sends
        _shape(self.hub, veth, self.gbps, self.latency_ms)  # what it receives
        self.nodes[node] = addr
        return addr

    def popen(self, node: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Start ``cmd`` inside ``node``'s namespace (its own process group), output to ``log``."""
        with open(log, "wb") as out:
            p = subprocess.Popen([IP, "netns", "exec", self.ns(node), *cmd], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, node: str, cmd: list[str], timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run([IP, "netns", "exec", self.ns(node), *cmd], capture_output=True, text=True,
                              timeout=timeout, env=env)

    def qdiscs(self) -> str:
        """Every qdisc the cluster set (for a check that the caps are in force)."""
        return "".join(_run(TC, "-n", ns, "qdisc", "show", check=False).stdout for ns in self.made)

    def stop_procs(self) -> None:
        """Kill every process started here (its process group), and wait for it."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        self.procs.clear()

    def close(self) -> None:
        """Kill the processes and delete every namespace made (links, bridge and qdiscs go with them)."""
        self.stop_procs()
        for ns in reversed(self.made):
            _delete(ns)
        self.made.clear()
