"""Keep your training loop: a torchrun script joins a dcoord job (``dcoord.join``) and its optimizer steps
on gradients decoded by a straggler-tolerant coded all-reduce. See docs/your-loop.md."""

from dcoord.loop.job import Job, join

__all__ = ["Job", "join"]
