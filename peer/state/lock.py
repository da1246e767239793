"""One process per data folder: an exclusive lock held for the peer's lifetime.

Two peers writing one provenance log and one checkpoint would interleave chains and
overwrite each other's state; the second one is refused at start with a one-line error.
The lock is an advisory `flock` on DATA_DIR/lock: the kernel drops it when the process
dies (even by kill -9), so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import PeerError
from . import files


class DataDirLocked(PeerError):
    """Another process holds the data folder."""


class DataDirLock:
    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir) / "lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        files.make_dir(self.path.parent)
        fd = files.open_kept(self.path)  # never through a link, 0600
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(f"{self.path.parent} is in use by another gossipfl peer (pid {holder}); "
                                "stop it first, or give this peer its own storage.dir") from None
        try:
            os.ftruncate(fd, 0)
            files.write_all(fd, f"{os.getpid()}\n".encode(), self.path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the descriptor drops the flock
