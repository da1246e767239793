"""How the peer writes in its data folder: never through a symbolic link, owner-only, durable.

Whoever can put a link in `data/` must not make the peer truncate or overwrite the link's
target (under systemd the unit's ProtectSystem limits the damage; in the foreground nothing
would). So every file the peer writes there is opened with O_NOFOLLOW, created with O_EXCL
where it must be fresh (a leftover or a planted link is removed first: unlinking a link never
touches its target), with mode 0600, and a rename into place is followed by an fsync of the
directory. A write the disk cannot take (full, quota, I/O error) is a TransientError: the
service manager restarts the peer later; nothing is half-written in place.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import PeerError, TransientError

MODE = 0o600
TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ENOMEM, errno.EROFS}


class UnsafeFileError(PeerError):
    """A file the peer writes in its data folder is a symbolic link or not a regular file."""


def disk_error(path: str | os.PathLike, exc: OSError, doing: str) -> PeerError:
    """The typed error of a failed write: transient (the disk) or the file's fault."""
    if exc.errno in TRANSIENT:
        return TransientError(f"cannot {doing} {path}: {exc.strerror}; the peer stops and is restarted later "
                              "(free space in its data folder)")
    if exc.errno == errno.ELOOP:
        return UnsafeFileError(f"{path} is a symbolic link: the peer never writes through one; remove it")
    return PeerError(f"cannot {doing} {path}: {exc.strerror}")


def refuse_link(path: str | os.PathLike) -> None:
    """UnsafeFileError if `path` exists and is a link or not a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(f"{path} is a symbolic link: the peer never writes through one; remove it")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file; remove it")


def make_dir(path: str | os.PathLike) -> Path:
    """The data folder (created 0700 when missing)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def open_fresh(path: str | os.PathLike) -> int:
    """A new, empty file at `path` for writing (a leftover or a link there is removed first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise disk_error(path, exc, "remove") from None
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    except OSError as exc:
        raise disk_error(path, exc, "create") from None


def open_kept(path: str | os.PathLike, flags: int = os.O_RDWR) -> int:
    """A file kept across runs (the lock), created when missing; never through a link; 0600."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    except OSError as exc:
        raise disk_error(path, exc, "open") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFileError(f"{path} is not a regular file; remove it")
        os.fchmod(fd, MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data, path) -> None:
    view = memoryview(data).cast("B")
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise disk_error(path, exc, "write") from None


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise disk_error(path, exc, "sync") from None


def replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync `tmp`, rename it over `path` (a link at `path` is replaced, its target untouched),
    fsync the folder."""
    fsync_path(tmp)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise disk_error(path, exc, "rename into") from None
    fsync_path(Path(path).parent, directory=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`data` at `path`, whole or not at all, durable when this returns."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = open_fresh(tmp)
    try:
        write_all(fd, data, tmp)
    finally:
        os.close(fd)
    replace(tmp, path)
