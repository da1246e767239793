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

from ..state import checkpoint as ckpt
from ..state import files
from ..state.provenance import EventKind, NewEvent
from ..state.resume import load_for_resume

if TYPE_CHECKING:
    import torch
else:
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
            digest = ckpt.state_hash(ck)
            tmp = ckpt.write(self.path, ck)
            files.fsync_path(tmp)
            return tmp, digest

        self._job = (asyncio.get_running_loop().run_in_executor(None, write), ck.round)

    async def durable(self) -> tuple[int, str] | None:
        """(next round, params hash) of the checkpoint begun last, once it is on disk; None if none."""
        if self._job is None:
            return None
        job, next_round = self._job
        try:
            self._written, digest = await job
        finally:
            if self._job is not None and self._job[0] is job:
                self._job = None
        return next_round, digest

    def publish(self) -> None:
        """Rename the written checkpoint into place; call after its event is in the log. Not
        while a newer one is being written: the log is flushed from the receive loop too (an
        event that must be durable before a message leaves), and the newer write reuses the
        same `.tmp`, so renaming it then would move a half-written file."""
        if self._written is not None and self._job is None:
            tmp, self._written = self._written, None
            ckpt.commit(tmp, self.path)


MAX_DIVERGED = 3  # rounds in a row with a non-finite model before the peer stops


class Checkpoints:
    """The peer's model on disk: resumed only when the log vouches for it, written each round
    while the next one trains, and the model restored from it when training diverges. Takes
    the model, the learner and the checkpoint path; the driver hands it the round's state."""

    def __init__(self, path: Path, model, learner, model_info: ckpt.ModelInfo, personal=None):
        self.path = Path(path)
        self.model, self.learner, self.model_info = model, learner, model_info
        self.personal = personal  # a peer.runtime.personalize.Personalizer: ditto's personal model rides along
        self.writer = CheckpointWriter(self.path)
        self.diverged = 0
        self.gave_up: str | None = None  # why the peer must stop: it keeps diverging

    def resume(self, prov) -> ckpt.Checkpoint | None:
        """The checkpoint to continue from, after checking it against the log's last checkpoint
        event; loads its model and learner state. None: start fresh."""
        ck = load_for_resume(self.path, prov, self.model.schema, self.model.size)
        if ck is None:
            return None
        self._restore(ck)
        return ck

    def _restore(self, ck: ckpt.Checkpoint) -> None:
        self.model.set(ck.params)
        self.learner.load_state(ck.learner_state())
        if self.personal is not None:
            self.personal.restore(ck)

    def begin(self, next_round: int, params: torch.Tensor | None, seen, parents) -> None:
        """Hash and write the state round `next_round` starts from (`params`: the round's result,
        None for the current model) while it trains; logged once durable."""
        params = self.model.flat.detach().clone() if params is None else params
        state = {k: v.clone() for k, v in self.learner.state().items()}
        personal, personal_state = self.personal.state() if self.personal is not None else (None, {})
        self.writer.begin(ckpt.Checkpoint(next_round, self.model.schema, params, None,
                                          sorted([s, r] for s, r in seen), list(parents),
                                          self.model_info, state, personal, personal_state))

    async def durable(self) -> tuple[int, str] | None:
        """(next round, params hash) once the checkpoint begun last is on disk; None if none."""
        return await self.writer.durable()

    def publish(self) -> None:
        self.writer.publish()

    def restore_if_diverged(self, round_: int) -> NewEvent | None:
        """A model that diverged is never sent: return to the last checkpoint and say so (the
        event to log); when there is none or it keeps diverging, `gave_up` says why to stop."""
        lo, hi = torch.aminmax(self.model.flat)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)) and (self.personal is None
                                                                     or self.personal.finite()):
            self.diverged = 0
            return None
        self.diverged += 1
        ck = ckpt.load(self.writer.latest, self.model.schema, self.model.size)
        event = NewEvent(EventKind.DIVERGED, round_, details={
            "times": self.diverged, "restored_round": None if ck is None else ck.round})
        if ck is None or self.diverged >= MAX_DIVERGED:
            self.gave_up = (f"the model diverged (NaN or Inf parameters after training) in {self.diverged} "
                            "round(s) in a row and there is no good checkpoint to return to; lower train.lr")
            return event
        log.warning("round %d: the model diverged after training; back to the checkpoint of round %d",
                    round_, ck.round)
        self._restore(ck)
        return event
