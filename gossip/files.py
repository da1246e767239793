"""Bounded reads of the small files a peer trusts (keys, trust lists, configs, scenarios).

A path may name a FIFO, a device (`/dev/zero`) or a file that grows while it is read, so
the size is never taken from `stat` alone: the file must be a regular file, and at most
`limit + 1` bytes are read, so anything larger is refused without reading it all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import GossipError


class FileReadError(GossipError):
    """A small input file is missing, not a regular file, too large or unreadable; the
    message names the file. Callers re-raise it as their own typed error."""


def read_limited(path: str | os.PathLike, limit: int, what: str,
                 check_mode: Callable[[int], str | None] | None = None) -> bytes:
    """The bytes of regular file `path`, at most `limit` of them; `what` names it in errors
    (e.g. "key file"). `check_mode(st_mode)` may refuse the open file by returning a
    message (checked on the descriptor that is read, so the file cannot be swapped)."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not block; regular files ignore it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileReadError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise FileReadError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise FileReadError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileReadError(f"{what} {path} is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise FileReadError(f"{what} {path} is not a regular file (a device, FIFO or socket)")
        problem = check_mode(mode) if check_mode else None
        if problem:
            raise FileReadError(problem)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise FileReadError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileReadError(f"{what} {path} is larger than {limit:,} bytes")
    return data


def read_limited_text(path: str | os.PathLike, limit: int, what: str) -> str:
    """`read_limited` decoded as UTF-8; a file that is not UTF-8 is refused by name."""
    data = read_limited(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileReadError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
