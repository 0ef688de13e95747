"""Built-in workloads: digits/synthetic toys that train in seconds on a laptop CPU, and two real-scale
Dataset workloads (``resnet18-cifar``, ``gpt-char``) with small settings through ``workload_args``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dcoord.workloads.base import Workload, register_workload
from dcoord.workloads.cifar import check_args as check_cifar_args
from dcoord.workloads.cifar import resnet18_cifar
from dcoord.workloads.gptchar import check_args as check_gpt_args
from dcoord.workloads.gptchar import gpt_char
from dcoord.workloads.housing import housing_mlp


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (1797 x 64), standardised, split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data.astype(np.float64)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)
    perm = np.random.default_rng(1234).permutation(len(X))  # split independent of the run seed
    X, y = X[perm], data.target[perm]
    cut = int(0.8 * len(X))
    to_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    to_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return to_x(X[:cut]), to_y(y[:cut]), to_x(X[cut:]), to_y(y[cut:])


def logreg_digits(seed: int) -> Workload:
    """Multinomial logistic regression on digits (convex)."""
    X, y, Xt, yt = _digits(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    return Workload(model, X, y, F.cross_entropy, Xt, yt, name="logreg-digits")


def mlp_digits(seed: int) -> Workload:
    """One-hidden-layer MLP on digits (nonconvex)."""
    X, y, Xt, yt = _digits(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    return Workload(model, X, y, F.cross_entropy, Xt, yt, name="mlp-digits")


def linreg_synthetic(seed: int, n: int = 1200, d: int = 20) -> Workload:
    """Linear regression y = X w* + noise with a known optimum (least squares)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    X = torch.randn(n, d, generator=gen)
    w = torch.randn(d, 1, generator=gen)
    y = X @ w + 0.1 * torch.randn(n, 1, generator=gen)
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, 1)
    return Workload(model, X, y, F.mse_loss, name="linreg-synthetic")


BUILTINS = {
    "logreg-digits": logreg_digits,
    "mlp-digits": mlp_digits,
    "linreg-synthetic": linreg_synthetic,
    "housing-mlp": housing_mlp,
    "resnet18-cifar": resnet18_cifar,
    "gpt-char": gpt_char,
}

# value checks of the built-ins' workload_args, run when the config is validated and on load
# (argument names are checked against the function's signature for every registered workload)
_ARG_CHECKS = {"resnet18-cifar": check_cifar_args, "gpt-char": check_gpt_args}

for _name, _fn in BUILTINS.items():
    register_workload(_name, _fn, check=_ARG_CHECKS.get(_name))
