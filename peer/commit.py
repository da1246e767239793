"""Checkpoints made durable off the event loop and published only once the log records them.

A worker thread hashes the model, writes `checkpoint.msgpack.tmp` and fsyncs it while the next
round trains. The driver then logs the `checkpoint` event (with that hash) and only after that
renames the file into place. So the log's last `checkpoint` event always describes either the
checkpoint or its complete `.tmp`, and a restart can check one against the other
(peer.resume rolls a complete `.tmp` forward).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from . import checkpoint as ckpt


class CheckpointWriter:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._job: tuple[asyncio.Future, int] | None = None
        self._written: Path | None = None  # fsynced, its event on the way to the log

    @property
    def latest(self) -> Path:
        """The newest durable checkpoint file (written but not yet published, or in place)."""
        return self._written or self.path

    def begin(self, ck: ckpt.Checkpoint) -> None:
        """Hash and write `ck` on a worker thread (nothing may change its tensors until durable())."""

        def write() -> tuple[Path, str]:
            digest = ckpt.params_hash(ck.params)
            tmp = ckpt.write(self.path, ck)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return tmp, digest

        self._job = (asyncio.get_running_loop().run_in_executor(None, write), ck.round)

    async def durable(self) -> tuple[int, str] | None:
        """(next round, params hash) of the checkpoint begun last, once it is on disk; None if none."""
        if self._job is None:
            return None
        (job, next_round), self._job = self._job, None
        self._written, digest = await job
        return next_round, digest

    def publish(self) -> None:
        """Rename the written checkpoint into place; call after its event is in the log."""
        if self._written is not None:
            tmp, self._written = self._written, None
            ckpt.commit(tmp, self.path)
