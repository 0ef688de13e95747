"""The run directory: config.yaml, metrics.jsonl (flushed every round), summary.json, model.pt, checkpoints/.

Everything is written so that a crash loses at most the round in flight: metrics lines are flushed as
they are written (a line that cannot be written whole is cut back off), and checkpoints and final files
are written to a temporary name, fsync'ed and renamed. An existing run is never overwritten silently:
``mode`` says whether this is a new run, a resumed one, or one that replaces an old run on purpose.
While a RunDir is open (until close() or finish()) it holds an exclusive lock on the directory, so a
second process (another run, a --resume or --overwrite of the same directory) is refused (dirlock.py).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from dcoord.errors import DcoordError
from dcoord.runtime.store import checkpoint as ckpt
from dcoord.runtime.store.dirlock import DirLock, LockHeld

#: what a run writes; --overwrite removes exactly these (never other files in the directory, nor the lock
#: file .dcoord.lock, see dirlock.py)
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "model.pt", "checkpoint.pt")
RUN_DIRS = ("checkpoints", "workers")


class RunDirError(DcoordError):
    """The run directory cannot be used (a file, read-only, full disk, an existing run)."""


#: how the user names the run directory's options in messages: "cli" (--out/--resume/--overwrite) or
#: "api" (dcoord.train's out=/resume=/overwrite= arguments, set by api.py while it runs)
NAMING: ContextVar[str] = ContextVar("dcoord_run_option_naming", default="cli")


def option(name: str, value: object = None) -> str:
    """``option("resume", "runs/x")``: "--resume runs/x" on the command line, "resume='runs/x'" from the API."""
    if NAMING.get() == "api":
        return f"{name}={str(value)!r}" if value is not None else f"{name}=True"
    return f"--{name} {value}" if value is not None else f"--{name}"


def _out_word() -> str:
    return "out=" if NAMING.get() == "api" else "--out"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        ckpt.atomic_write(path, data)
    except OSError as exc:
        raise _io_error(path, exc) from None


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _io_error(path: Path, exc: OSError) -> RunDirError:
    why = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded",
           errno.ENOTDIR: "a path component is a file, not a directory"}.get(exc.errno, exc.strerror or str(exc))
    return RunDirError(f"cannot write {path}: {why}")


def is_run(path: Path) -> bool:
    """Does ``path`` hold (part of) an earlier run's outputs?"""
    return path.is_dir() and (any((path / f).exists() for f in RUN_FILES) or (path / "checkpoints").is_dir())


class RunDir:
    """Writes one run's outputs; a ``None`` directory makes every method a no-op (library use).

    ``mode``: ``new`` (refuses a directory that holds a run), ``resume`` (continues metrics.jsonl from
    the checkpoint) or ``overwrite`` (removes the old run's files first, and only those).
    """

    def __init__(self, path: Path | str | None, mode: str = "new", keep: int = 3, finished_ok: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.mode = mode
        self.keep = keep
        self.checkpoint_key: bytes | None = None  # signs checkpoints (checkpoint.signing_key); never written here
        self.extending = False  # a finished run resumed with more rounds (resume.open_rundir)
        self._metrics = None
        self.round_offset = 0  # metrics.jsonl size after the last round line (what a checkpoint records)
        self.last_checkpoint_round: int | None = None
        self._lock: DirLock | None = None  # held from here until close(): one process per run directory
        if self.path is None:
            return
        p = self.path
        flag = option("resume" if mode == "resume" else "out", p)
        if p.exists() and not p.is_dir():
            raise RunDirError(f"{option('out', p)}: is a file, not a directory; give a directory path")
        if mode == "resume" and not p.is_dir():  # checked before mkdir: a failed resume creates nothing
            raise RunDirError(f"{option('resume', p)}: no checkpoint there (checkpoints/ckpt-*.pt); nothing to resume")
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".dcoord-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            # locked before the checks below and before anything is removed or cut back: a second process
            # on this directory is refused here, with the old run's files untouched
            self._lock = DirLock(p)
        except LockHeld as held:
            raise RunDirError(f"{flag}: another dcoord process ({held.holder}) is using this run directory; "
                              f"wait for it to finish or stop it, or choose another {_out_word()}") from None
        except OSError as exc:
            raise _io_error(p, exc) from None
        try:
            if mode == "new" and is_run(p):
                raise RunDirError(f"{option('out', p)}: already holds a run; pass {option('resume', p)} to "
                                  f"continue it, {option('overwrite')} to replace it, or choose another "
                                  f"{_out_word()}")
            if mode == "resume" and (p / "summary.json").is_file() and not finished_ok:  # ok: run extended
                more = "overrides=['rounds=N']" if NAMING.get() == "api" else "--set rounds=N"
                raise RunDirError(f"{option('resume', p)}: that run already finished (summary.json); to extend it, "
                                  f"give more rounds than it ran ({more})")
            if mode == "resume" and not ckpt.list_checkpoints(p / "checkpoints"):
                raise RunDirError(f"{option('resume', p)}: no checkpoint there (checkpoints/ckpt-*.pt); nothing "
                                  "to resume")
            if mode == "overwrite":
                self._remove_old_run()
        except BaseException:
            self.close()
            raise

    def _remove_old_run(self) -> None:
        assert self.path is not None
        try:
            for f in RUN_FILES:
                (self.path / f).unlink(missing_ok=True)
            for d in RUN_DIRS:
                if (self.path / d).is_dir():
                    shutil.rmtree(self.path / d)
        except OSError as exc:
            raise _io_error(self.path, exc) from None

    # -- metrics --------------------------------------------------------------------------------------
    def open_metrics(self, offset: int | None = None) -> None:
        """Start metrics.jsonl (new run) or continue it from ``offset`` (resume: later lines are cut off)."""
        if self.path is None:
            return
        path = self.path / "metrics.jsonl"
        try:
            if offset is None:
                self._metrics = open(path, "wb", buffering=0)  # unbuffered: a failed line can be cut off
                self.round_offset = 0
            else:
                self._metrics = open(path, "r+b" if path.exists() else "w+b", buffering=0)
                size = self._metrics.seek(0, os.SEEK_END)
                if size < offset:
                    raise RunDirError(f"{path}: shorter ({size} bytes) than the checkpoint recorded "
                                      f"({offset} bytes); it was edited or truncated, cannot resume")
                self._metrics.truncate(offset)
                self._metrics.seek(offset)
                self.round_offset = offset
        except OSError as exc:
            raise _io_error(path, exc) from None

    def _write_line(self, record: dict) -> int:
        """Append one JSON line whole or not at all; returns the file size after it."""
        assert self._metrics is not None
        f = self._metrics
        start = f.tell()
        try:
            view = memoryview((json.dumps(record) + "\n").encode())
            while view:  # raw writes may be short
                view = view[f.write(view):]
        except OSError as exc:
            try:  # cut the partial line off (shrinking a file needs no space)
                os.ftruncate(f.fileno(), start)
                f.seek(start)
            except OSError:
                pass
            raise _io_error(self.path / "metrics.jsonl", exc) from None  # type: ignore[operator]
        return f.tell()

    def log_round(self, record: dict) -> None:
        if self._metrics is None and self.path is not None:
            self.open_metrics()
        if self._metrics is not None:
            self.round_offset = self._write_line(record)

    def log_event(self, record: dict) -> None:
        """A line that is not a round (worker lost or back, resume, re-plan): it has an "event" key."""
        if self._metrics is not None:
            self._write_line(record)

    # -- files ----------------------------------------------------------------------------------------
    def write_config(self, yaml_text: str) -> None:
        if self.path is not None:
            atomic_write_bytes(self.path / "config.yaml", yaml_text.encode())

    def read_config(self) -> str | None:
        if self.path is None or not (self.path / "config.yaml").is_file():
            return None
        return (self.path / "config.yaml").read_text()

    def checkpoint(self, state: dict, round: int) -> Path | None:
        if self.path is None:
            return None
        try:
            path = ckpt.save(self.path / "checkpoints", state, round, self.keep, self.checkpoint_key)
            self.last_checkpoint_round = round
            return path
        except OSError as exc:
            raise _io_error(self.path / "checkpoints", exc) from None

    def finish(self, summary: dict, model_state: Any) -> None:
        if self.path is None:
            return
        try:
            atomic_torch_save(model_state, self.path / "model.pt")
            atomic_write_bytes(self.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        finally:
            self.close()

    def discard_final(self) -> None:
        """A finished run that is being extended: its summary and final model are written again at its end."""
        if self.path is not None:
            for f in ("summary.json", "model.pt"):
                (self.path / f).unlink(missing_ok=True)

    def close(self) -> None:
        """Close metrics.jsonl and release the directory's lock; safe to call more than once."""
        if self._metrics is not None:
            try:
                self._metrics.close()
            except OSError:
                pass
            self._metrics = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
