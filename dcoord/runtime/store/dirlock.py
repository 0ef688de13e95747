"""One process at a time per run directory: an exclusive, non-blocking flock on DIR/.dcoord.lock.

Why flock and not a PID file: the kernel drops a flock when its last file descriptor closes, which
includes the process dying (even by SIGKILL), so a crashed run never leaves a stale lock behind. The
holder's pid and host are written into the file only to name it in the refusal message.

The lock file is never removed: unlinking a lock file while another process has it open would let two
processes lock two different files under one name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".dcoord.lock"

#: flock not supported by the file system (e.g. Lustre mounted without flock): run unlocked, with a warning
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(Exception):
    """Another open file description (another process, or another RunDir here) holds the lock."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder}")
        self.path = path
        self.holder = holder


def holder_text(data: bytes) -> str:
    """'pid 1234 on host h' from the lock file's contents; what is known when it is empty or garbled."""
    try:
        info = json.loads(data.decode())
        pid, host = int(info["pid"]), str(info["host"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "pid unknown"
    mine = " (this process)" if pid == os.getpid() and host == socket.gethostname() else ""
    return f"pid {pid} on host {host}{mine}"


class DirLock:
    """Holds the lock while open; :meth:`release` (idempotent) drops it."""

    def __init__(self, directory: Path) -> None:
        """Take the lock on ``directory`` (which must exist) or raise :class:`LockHeld`; OSError on I/O."""
        self.path = Path(directory) / LOCK_NAME
        # os.open: close-on-exec by default, so spawned workers never inherit (and keep) the lock
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = holder_text(os.pread(fd, 4096, 0))
            except OSError:
                holder = "pid unknown"
            os.close(fd)
            raise LockHeld(self.path, holder) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _UNSUPPORTED:
                raise
            log.warning("cannot lock %s (%s): the file system does not support flock; nothing stops another "
                        "dcoord process from using this run directory at the same time", self.path, exc.strerror)
            self._close = None
            return
        # a DirLock dropped without release() (a leaked RunDir) still lets go when it is collected
        self._close = weakref.finalize(self, _close_quietly, fd)
        try:  # information for the refusal message only: a failure here must not cost the run
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass

    @property
    def held(self) -> bool:
        return self._close is not None and self._close.alive

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops the flock); the file stays, for the next holder."""
        if self._close is not None:
            self._close()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
