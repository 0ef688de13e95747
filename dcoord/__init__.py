"""dcoord: straggler-tolerant, private distributed PyTorch training."""

from dcoord.api import train

__all__ = ["Job", "join", "train"]


def __getattr__(name: str):
    """``dcoord.join`` / ``dcoord.Job`` (dcoord.loop), imported on first use: ``import dcoord`` stays light."""
    if name in ("join", "Job"):
        from dcoord import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'dcoord' has no attribute {name!r}")
