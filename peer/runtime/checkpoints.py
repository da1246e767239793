"""Checkpoints made durable off the event loop and published only once the log records them.

A worker thread hashes the model, writes `checkpoint.msgpack.tmp` and fsyncs it while the next
round trains. The driver then logs the `checkpoint` event (with that hash) and only after that
renames the file into place. So the log's last `checkpoint` event always describes either the
checkpoint or its complete `.tmp`, and a restart can check one against the other
(peer.state.resume rolls a complete `.tmp` forward).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gossip.lazy import lazy

from ..errors import PeerError
from ..state import checkpoint as ckpt
from ..state.provenance import EventKind, NewEvent
from ..state.resume import load_for_resume
from .round import Log

if TYPE_CHECKING:
    from .driver import Peer

torch = lazy("torch")
log = logging.getLogger("gossipfl.peer")


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


MAX_DIVERGED = 3  # rounds in a row with a non-finite model before the peer stops


class Checkpoints:
    """The peer's state on disk: resumed only when the log vouches for it, written each round
    while the next one trains, and the model restored from it when training diverges."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.path = Path(peer.cfg.data_dir) / "checkpoint.msgpack"
        self.writer = CheckpointWriter(self.path)
        self.result: torch.Tensor | None = None  # the model the next checkpoint holds (the aggregate)
        self.diverged = 0

    def resume(self) -> int | None:
        """Continue from the checkpoint, after checking it against the log's last checkpoint event."""
        p = self.peer
        ck = load_for_resume(self.path, p.prov, p.model.schema, p.model.size)
        if ck is None:
            return None
        p.model.set(ck.params)
        p.learner.load_state(ck.learner_state())
        p.state.resume(ck.round, ck.parents, ck.replay)
        return ck.round

    def begin(self, next_round: int) -> None:
        """Hash and write the state the next round starts from while it trains; logged once durable."""
        p = self.peer
        params = p.model.flat.detach().clone() if self.result is None else self.result
        self.result = None
        state = {k: v.clone() for k, v in p.learner.state().items()}
        self.writer.begin(ckpt.Checkpoint(next_round, p.model.schema, params, None,
                                          sorted([s, r] for s, r in p.state.seen), list(p.state.parents),
                                          p.model_info, state))

    async def durable(self) -> None:
        done = await self.writer.durable()
        if done is not None:
            self.peer.log_events(self.peer.state.committed(*done))

    async def now(self) -> None:
        await self.durable()
        self.begin(self.peer.round)
        await self.durable()
        self.peer.log_events([], flush=True)

    def publish(self) -> None:
        self.writer.publish()

    def check_finite(self) -> None:
        """A model that diverged is never sent: log it and return to the last checkpoint."""
        p = self.peer
        lo, hi = torch.aminmax(p.model.flat)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            self.diverged = 0
            return
        self.diverged += 1
        ck = ckpt.load(self.writer.latest, p.model.schema, p.model.size)
        p.log_events([Log(NewEvent(EventKind.DIVERGED, p.round, details={
            "times": self.diverged, "restored_round": None if ck is None else ck.round}))], flush=True)
        if ck is None or self.diverged >= MAX_DIVERGED:
            raise PeerError(f"the model diverged (NaN or Inf parameters after training) in {self.diverged} "
                            "round(s) in a row and there is no good checkpoint to return to; lower train.lr")
        log.warning("round %d: the model diverged after training; back to the checkpoint of round %d",
                    p.round, ck.round)
        p.model.set(ck.params)
        p.learner.load_state(ck.learner_state())
