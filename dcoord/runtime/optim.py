"""The optimizer a job's config names, built the same way wherever a model is stepped.

Why one function: the coordinator steps its models on the star planes and every worker steps its replica on
the collective plane (transport: allreduce); replicas stay identical only if both build the same optimizer.
"""

from __future__ import annotations

from typing import Any

import torch


def make_optimizer(cfg: Any, model: torch.nn.Module, index: int) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``model``'s parameters, at model ``index``'s learning rate."""
    o = cfg.optimizer
    lr = cfg.lr_for(index)
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
