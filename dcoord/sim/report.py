"""Simulation reports: JSON and matplotlib plots (Agg canvas, so no display or global backend is touched)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dcoord.sim.engine import SimResult


def _clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, Paths to str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, data: Mapping) -> Path:
    """Write ``data`` as indented JSON (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(dict(data)), indent=2) + "\n")
    tmp.replace(path)
    return path


def _color(label: str, k: int) -> str:
    """The colour the scheme's registry entry declares, else one picked by position."""
    from dcoord.coding.registry import registered_schemes

    spec = registered_schemes().get(label.split(" ")[0])
    return spec.color if spec is not None and spec.color else f"C{(k + 4) % 10}"


def _figure(ncols: int, width: float = 11.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_simulation(results: Mapping[str, SimResult], path: Path, title: str = "") -> Path:
    """Runtime per scheme (bars) and cumulative jobs finished over virtual time (one line per scheme)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = _figure(2)
    labels = list(results)
    runtimes = [results[k].runtime_s for k in labels]
    colors = [_color(label, i) for i, label in enumerate(labels)]
    styles = ["--" if colors[:i].count(c) else "-" for i, c in enumerate(colors)]  # same scheme twice: dashed
    bars = ax1.bar(range(len(labels)), runtimes, color=colors)
    for b, st in zip(bars, styles, strict=True):
        if st == "--":
            b.set_hatch("//")
    ax1.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax1.set_ylabel("runtime (virtual s)")
    ax1.set_title("time to finish all jobs")
    for i, v in enumerate(runtimes):
        ax1.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    for label, c, st in zip(labels, colors, styles, strict=True):
        ft = np.sort(results[label].job_finish_times[np.isfinite(results[label].job_finish_times)])
        ax2.step(np.concatenate([[0.0], ft]), np.arange(ft.size + 1), where="post", color=c, ls=st, label=label)
    ax2.set_xlabel("virtual time (s)")
    ax2.set_ylabel("jobs finished")
    ax2.set_title("cumulative jobs finished")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def plot_bench(tables: Mapping[str, Mapping[str, Mapping[str, float]]], scaling: Mapping[str, Mapping[int, float]],
               path: Path, baseline: str = "gc-cyclic") -> Path:
    """Bench figure: per protocol, runtime ratio to ``baseline`` per trace and scheme ({protocol: {trace:
    {scheme: runtime}}}); then simulator wall time per round vs n ({scheme: {n: seconds}})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = _figure(len(tables) + 1, 6.0 * (len(tables) + 1), 5.0)
    axes = np.atleast_1d(axes)
    for ax, (protocol, table) in zip(axes, tables.items(), strict=False):
        traces = list(table)
        schemes = sorted({s for row in table.values() for s in row}, key=lambda s: (s != baseline, s))
        width = 0.8 / max(1, len(schemes))
        for k, s in enumerate(schemes):
            vals = [table[t].get(s, np.nan) / table[t][baseline] if baseline in table[t] else np.nan
                    for t in traces]
            x = np.arange(len(traces)) + k * width
            ax.bar(x, np.minimum(vals, 2.0), width, label=s, color=_color(s, k))
            for xi, v in zip(x, vals, strict=True):
                if v > 2.0:  # clipped: print the value
                    ax.text(xi, 2.0, f"{v:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_ylim(0, 2.2)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(traces)) + 0.4 - width / 2, traces, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(f"runtime / {baseline}")
        ax.set_title(f"tuned schemes, plain codes close: {protocol}", fontsize=9)
        ax.legend(fontsize=7)
    ax2 = axes[-1]
    for k, (s, pts) in enumerate(scaling.items()):
        ns = sorted(pts)
        ax2.loglog(ns, [pts[n] for n in ns], "o-", label=s, color=_color(s, k))
    ax2.set_xlabel("workers n")
    ax2.set_ylabel("simulator wall time per round (s)")
    ax2.set_title("simulator scaling")
    if scaling:
        ax2.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path
