"""dcoord: straggler-tolerant, private distributed PyTorch training."""

from dcoord.api import train

__all__ = ["train"]
