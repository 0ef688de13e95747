"""Training tasks: a model, its data and a loss. Built-ins plus user tasks given as ``package.module:function``."""

from dcoord.workloads.base import Workload, register_workload
from dcoord.workloads.batching import batch_indices, split_parts
from dcoord.workloads.registry import load, workload_names

__all__ = ["Workload", "load", "batch_indices", "register_workload", "split_parts", "workload_names"]
