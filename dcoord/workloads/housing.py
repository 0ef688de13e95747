"""``housing-mlp``: the DIFF2 paper's regression task shape (Murata & Suzuki, ICML 2023).

8 standardised features, 20,640 samples split 16,512 train / 4,128 test (California Housing's size and
scikit-learn's 80/20), squared loss, an 8-10-1 softplus MLP (d = 101 parameters).

Data: California Housing when a local copy is named by ``$DCOORD_CALIFORNIA_HOUSING`` (nothing is ever
downloaded): either a scikit-learn ``data_home`` folder that already holds the dataset, or a CSV/whitespace
file of 9 numeric columns (8 features, then the target; a header line is skipped). Otherwise a synthetic
stand-in of the same shape: Gaussian features with correlations and a smooth nonlinear target from a fixed
wider teacher (8-32-1 tanh) plus noise, so the 8-10-1 student cannot fit it exactly, as on real data.
Features and target are standardised with the training split's statistics. The data never depends on the
run seed (only the model's initialisation does), so every seed sees the same task.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcoord.workloads.base import Workload, WorkloadError

ENV_PATH = "DCOORD_CALIFORNIA_HOUSING"
N_TOTAL, N_TRAIN, N_FEATURES, HIDDEN = 20_640, 16_512, 8, 10


def _load_local(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from a local copy: a scikit-learn data_home folder, or a 9-column numeric text file."""
    p = Path(path).expanduser()
    if p.is_dir():
        from sklearn.datasets import fetch_california_housing

        try:
            data = fetch_california_housing(data_home=str(p), download_if_missing=False)
        except OSError as exc:
            raise WorkloadError(
                f"${ENV_PATH}={path}: no California Housing in this scikit-learn data_home ({exc})"
            ) from None
        return np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.float64)
    if not p.is_file():
        raise WorkloadError(f"${ENV_PATH}={path}: no such file or folder (unset it to use the synthetic stand-in)")
    delim = "," if p.suffix.lower() == ".csv" else None
    try:
        arr = np.genfromtxt(p, delimiter=delim, skip_header=0, dtype=np.float64)
    except ValueError as exc:
        raise WorkloadError(f"${ENV_PATH}={path}: not a numeric table ({exc})") from None
    arr = arr[~np.isnan(arr).all(axis=1)] if arr.ndim == 2 else arr  # a header line reads as all-NaN
    if arr.ndim != 2 or arr.shape[1] != N_FEATURES + 1 or np.isnan(arr).any():
        raise WorkloadError(
            f"${ENV_PATH}={path}: expected 9 numeric columns (8 features, then the target), "
            f"got shape {arr.shape}"
        )
    return arr[:, :N_FEATURES], arr[:, N_FEATURES]


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Same shape as California Housing: correlated Gaussian features, nonlinear target plus noise."""
    rng = np.random.default_rng(20_640)
    mix = rng.normal(size=(N_FEATURES, N_FEATURES)) / np.sqrt(N_FEATURES) + np.eye(N_FEATURES)
    X = rng.normal(size=(N_TOTAL, N_FEATURES)) @ mix
    w1 = rng.normal(size=(N_FEATURES, 32)) / np.sqrt(N_FEATURES)
    b1 = rng.normal(size=32) * 0.5
    w2 = rng.normal(size=32) / np.sqrt(32)
    Xs = (X - X.mean(0)) / X.std(0)
    y = np.tanh(Xs @ w1 + b1) @ w2 + 0.3 * Xs[:, 0] * Xs[:, 1]
    y = (y - y.mean()) / y.std() + 0.5 * rng.normal(size=N_TOTAL)
    return X, y


def housing_data(path: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(X_train, y_train, X_test, y_test, source), standardised on the training split; fixed 80/20 split."""
    path = path if path is not None else os.environ.get(ENV_PATH) or None
    X, y = _load_local(path) if path else _synthetic()
    source = f"california-housing ({path})" if path else "synthetic stand-in (california-housing shape)"
    perm = np.random.default_rng(1234).permutation(len(X))
    X, y = X[perm], y[perm]
    cut = int(round(0.8 * len(X)))
    mu, sd = X[:cut].mean(0), X[:cut].std(0) + 1e-12
    ymu, ysd = y[:cut].mean(), y[:cut].std() + 1e-12
    X, y = (X - mu) / sd, (y - ymu) / ysd
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(X[:cut]), t(y[:cut, None]), t(X[cut:]), t(y[cut:, None]), source


def housing_model(seed: int) -> torch.nn.Module:
    """The paper's 8-10-1 softplus MLP (d = 8*10 + 10 + 10 + 1 = 101)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(N_FEATURES, HIDDEN), torch.nn.Softplus(), torch.nn.Linear(HIDDEN, 1))


def housing_mlp(seed: int) -> Workload:
    """California-Housing-shaped regression with the DIFF2 paper's MLP; see the module docstring."""
    X, y, Xt, yt, source = housing_data()
    return Workload(housing_model(seed), X, y, F.mse_loss, Xt, yt, name=f"housing-mlp: {source}")
