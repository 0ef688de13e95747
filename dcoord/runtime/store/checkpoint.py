"""Checkpoints that survive crashes: atomic, checksummed, the last K kept, a corrupt one skipped.

File format: one line ``dcoord-checkpoint v1 sha256=<hex> round=<r>`` (`` hmac=<hex>`` when signed) then a
``torch.save`` payload.
The payload holds only tensors and plain Python values (numpy arrays are wrapped as tensors), so it is
read back with ``torch.load(weights_only=True)``: loading a checkpoint never runs pickled code.

Writes go to a temporary name, are fsync'ed and renamed (then the directory is fsync'ed), so a crash,
a full disk or SIGKILL at any moment leaves either the previous checkpoint or the new one, never half of
one. On load the newest file whose checksum matches wins; a corrupt or truncated one is skipped with a
warning and the one before it is used.

Who can write the run directory: the sha256 catches accidents, not people (anyone can recompute it). With
a key the operator holds (``--checkpoint-key-file``, else the coordinator's ``--token-file``; never written
into the run directory) every checkpoint also carries an HMAC-SHA256 of its round and payload, and
``--resume`` refuses, in one line, a checkpoint whose HMAC is missing or wrong: a forged one is never
loaded, and neither is an older one in its place. Without a key the check is integrity only, and whoever
can write the run directory controls the model.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcoord.errors import DcoordError

log = logging.getLogger("dcoord.checkpoint")

MAGIC = b"dcoord-checkpoint v1"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
_ND = "__ndarray__"
_TUPLE = "__tuple__"


class CheckpointError(DcoordError):
    """No usable checkpoint (none written yet, or every one is corrupt)."""


class CheckpointForged(CheckpointError):
    """A checkpoint not signed with the operator's key: never loaded, nothing older tried in its place."""


def signing_key(secret: bytes | str) -> bytes:
    """The checkpoint HMAC key derived from an operator's secret (the token or a key file's bytes), so the
    token itself is never used as a MAC key of another protocol."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, b"dcoord-checkpoint-key v1", hashlib.sha256).digest()


def _mac(key: bytes, round: int, payload: bytes) -> str:
    return hmac.new(key, b"dcoord-checkpoint v1 round=%d\n" % round + payload, hashlib.sha256).hexdigest()


# -- plain-value encoding (numpy <-> tensors, tuples kept) ------------------------------------------
def to_plain(obj: Any) -> Any:
    """Make ``obj`` loadable with weights_only=True: numpy arrays/scalars become tagged tensors."""
    if isinstance(obj, np.ndarray):
        return {_ND: torch.from_numpy(np.ascontiguousarray(obj).copy()), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k if not isinstance(k, np.generic) else k.item(): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {_TUPLE: [to_plain(v) for v in obj]}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        if _ND in obj:
            arr = obj[_ND].numpy()
            return arr.astype(obj["dtype"], copy=True) if str(arr.dtype) != obj["dtype"] else arr.copy()
        if _TUPLE in obj and len(obj) == 1:
            return tuple(from_plain(v) for v in obj[_TUPLE])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


# -- files ---------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp + fsync + rename); on failure nothing is left behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def encode(state: dict, round: int, key: bytes | None = None) -> bytes:
    """One checkpoint file's bytes; with ``key`` (see signing_key) signed with an HMAC."""
    buf = io.BytesIO()
    torch.save(to_plain(state), buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    mac = f" hmac={_mac(key, round, payload)}" if key is not None else ""
    return MAGIC + f" sha256={digest} round={round}{mac}\n".encode() + payload


def decode(data: bytes, key: bytes | None = None, name: str = "checkpoint") -> dict:
    """Parse and verify one checkpoint file's bytes; ValueError says what is wrong, CheckpointForged when
    its HMAC does not match ``key`` (or it has one and no key was given, or none and a key was)."""
    head, sep, payload = data.partition(b"\n")
    if not sep or not head.startswith(MAGIC):
        raise ValueError("not a dcoord checkpoint (bad header)")
    m = re.search(rb"sha256=([0-9a-f]{64})", head)
    if m is None:
        raise ValueError("header has no checksum")
    if hashlib.sha256(payload).hexdigest().encode() != m.group(1):
        raise ValueError("checksum mismatch (truncated or corrupt)")
    signed = re.search(rb" hmac=([0-9a-f]{64})", head)
    if key is None and signed is not None:
        raise CheckpointForged(f"{name} is signed: give the key it was written with (--checkpoint-key-file, or "
                               "the coordinator's --token-file) to resume from it")
    if key is not None:
        r = re.search(rb" round=(-?\d+)", head)
        if signed is None or r is None:
            raise CheckpointForged(f"{name} carries no HMAC under the given key (--checkpoint-key-file / "
                                   "--token-file): refusing to resume from a checkpoint that is not signed")
        if not hmac.compare_digest(signed.group(1).decode(), _mac(key, int(r.group(1)), payload)):
            raise CheckpointForged(f"{name}: its HMAC does not match the key (--checkpoint-key-file / "
                                   "--token-file): written by someone without it; refusing to resume")
    return from_plain(torch.load(io.BytesIO(payload), weights_only=True))


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save(directory: Path, state: dict, round: int, keep: int, key: bytes | None = None) -> Path:
    """Write the checkpoint of ``round`` (signed with ``key`` if given) and delete all but the newest ``keep``;
    returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{round + 1:08d}.pt"  # named by rounds completed (round -1 -> 0)
    atomic_write(path, encode(state, round, key))
    for old in list_checkpoints(directory)[:-max(keep, 1)]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def load_latest(directory: Path, key: bytes | None = None) -> tuple[dict, Path]:
    """The newest checkpoint whose checksum matches; corrupt ones are skipped with a warning. With ``key``
    its HMAC must match too: a forged one (CheckpointForged) ends the search, nothing older is tried."""
    files = list_checkpoints(directory)
    if not files:
        raise CheckpointError(f"{directory}: no checkpoint to resume from")
    problems = []
    for path in reversed(files):
        try:
            return decode(path.read_bytes(), key, f"checkpoint {path}"), path
        except CheckpointForged:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file: fall back to the previous one
            msg = f"checkpoint {path} is unusable ({exc}); trying the previous one"
            log.warning(msg)
            warn(msg)
            problems.append(path.name)
    raise CheckpointError(f"{directory}: every checkpoint is corrupt ({', '.join(problems)}); cannot resume")


def warn(msg: str) -> None:
    """A warning the user sees even without -v (one line on stderr)."""
    import sys

    print(f"dcoord: warning: {msg}", file=sys.stderr, flush=True)
