"""Training tasks: a model, its data and a loss. Built-ins plus user tasks given as ``package.module:function``."""

from dcoord.workloads.base import Workload, load
from dcoord.workloads.batching import batch_indices, split_parts

__all__ = ["Workload", "load", "batch_indices", "split_parts"]
