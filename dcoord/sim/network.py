"""The network model: what a round costs on the wire, per data plane, on links of bandwidth B and latency L.

Pure formulas (no I/O), so ``dcoord simulate``, ``dcoord tune`` and bench/netcluster.py predict with the same
numbers. M is the model's size in bytes (one coded message is as large as the model), n the workers.

- star planes (``tcp``, ``grpc``; the coordinator at the hub): every round n models go down out of the
  coordinator's link (``n M / B``) before anyone computes, and the messages come up into it, one at a time
  (``M / B`` each) as the workers finish: the round closes when the decodable set's messages are in. The
  simulator queues them (``simulate(..., upload_s=message_s(net))``); when all finish together that is
  ``2 n M / B`` in all, plus a latency each way. Uploads of early finishers overlap a straggler's compute.
- the collective plane (``allreduce``): the workers report completion to the coordinator (a few bytes), get
  their decode coefficient back, and run one ring all-reduce: ``2 M (n-1) / (n B)`` plus ``2 (n-1)`` latencies
  (the ring's steps), plus one control round trip.
- plain DDP: the slowest worker's compute plus the same ring.

A round is its compute (the close time of the decodable set, from the virtual-time simulator) plus its
plane's transfer plus a fixed per-round ``overhead`` (RPCs, scheduling; calibrated on the emulated cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

#: per-round overhead of a dcoord round beside compute and wire (RPCs, scheduling, copies), milliseconds;
#: calibrated on the emulated cluster (bench/netcluster.py)
DEFAULT_OVERHEAD_MS = 0.0


@dataclass(frozen=True)
class Network:
    """Per-node links (each node's bandwidth in each direction), one-way latency, model size, per-round overhead."""

    link_gbps: float
    model_mb: float
    latency_ms: float = 0.0
    overhead_ms: float = DEFAULT_OVERHEAD_MS

    def __post_init__(self) -> None:
        if not self.link_gbps > 0 or not self.model_mb > 0:
            raise ValueError(f"link_gbps and model_mb must be > 0 (got {self.link_gbps}, {self.model_mb})")
        if self.latency_ms < 0 or self.overhead_ms < 0:
            raise ValueError(f"latency_ms and overhead_ms must be >= 0 (got {self.latency_ms}, {self.overhead_ms})")

    @property
    def bytes_per_s(self) -> float:
        return self.link_gbps * 1e9 / 8

    @property
    def model_bytes(self) -> float:
        return self.model_mb * 1e6

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1e3

    @property
    def overhead_s(self) -> float:
        return self.overhead_ms / 1e3


def star_floor_s(n: int, net: Network) -> float:
    """2 n M / B: n messages in and n models out through the coordinator's one link."""
    return 2 * n * net.model_bytes / net.bytes_per_s


def ring_floor_s(n: int, net: Network) -> float:
    """2 M (n-1) / (n B): what a ring all-reduce moves through every link (independent of n for large n)."""
    return 2 * net.model_bytes * (n - 1) / (n * net.bytes_per_s) if n > 1 else 0.0


def message_s(net: Network) -> float:
    """M / B: one message (or model) through one link."""
    return net.model_bytes / net.bytes_per_s


def star_download_s(n: int, net: Network) -> float:
    """n M / B: the round's models out of the coordinator's link."""
    return n * message_s(net)


def star_transfer_s(n: int, net: Network) -> float:
    """The star's wire time per round: its floor plus one latency down (models) and one up (messages)."""
    return star_floor_s(n, net) + 2 * net.latency_s


def ring_allreduce_s(n: int, net: Network) -> float:
    """A ring all-reduce of M bytes over n nodes: the floor plus 2 (n-1) steps of one latency each."""
    return ring_floor_s(n, net) + 2 * max(n - 1, 0) * net.latency_s


def collective_transfer_s(n: int, net: Network) -> float:
    """The collective plane's wire time per round: a control round trip (completion up, coefficient down)
    and the all-reduce of the scaled messages."""
    return 2 * net.latency_s + ring_allreduce_s(n, net)


def round_s(family: str, close_s: float, n: int, net: Network) -> float:
    """Predicted round time on a plane of ``family`` ("star" or "collective": dcoord.sim.planes maps the
    registered planes to their family) from the round's close time ``close_s``.

    Star planes: ``close_s`` is when the decodable set's messages are in at the coordinator (computed, then
    queued on its link: the simulator with ``upload_s = message_s``); the models' way down and a latency
    each way are added. Collective: ``close_s`` is the decodable set's compute; the control round trip and
    the all-reduce are added.
    """
    if family not in ("star", "collective"):
        raise ValueError(f"unknown plane family {family!r} (star or collective)")
    if family == "star":
        wire = star_download_s(n, net) + 2 * net.latency_s
    else:
        wire = collective_transfer_s(n, net)
    return close_s + wire + net.overhead_s


def ddp_step_s(slowest_compute_s: float, n: int, net: Network) -> float:
    """Plain DDP: every rank waits for the slowest compute, then one ring all-reduce."""
    return slowest_compute_s + ring_allreduce_s(n, net)


def best_plane(predicted: dict[str, float]) -> str:
    """The plane with the smallest predicted round time (ties: the first given)."""
    return min(predicted, key=lambda p: predicted[p])
