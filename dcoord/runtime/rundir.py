"""The run directory: config.yaml, metrics.jsonl (flushed every round), summary.json, model.pt, checkpoints.

Everything is written so that a crash loses at most the round in flight: metrics lines are flushed as
they are written and checkpoints/final files are written to a temporary name and renamed atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RunDir:
    """Writes one run's outputs; a ``None`` directory makes every method a no-op (library use)."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path is not None else None
        self._metrics = None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.path / "metrics.jsonl", "w", buffering=1)

    def write_config(self, yaml_text: str) -> None:
        if self.path is not None:
            atomic_write_bytes(self.path / "config.yaml", yaml_text.encode())

    def log_round(self, record: dict) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")

    def checkpoint(self, state: dict) -> None:
        if self.path is not None:
            atomic_torch_save(state, self.path / "checkpoint.pt")

    def finish(self, summary: dict, model_state: Any) -> None:
        if self.path is None:
            return
        atomic_torch_save(model_state, self.path / "model.pt")
        atomic_write_bytes(self.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        self.close()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
