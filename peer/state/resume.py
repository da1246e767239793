"""Resuming from a checkpoint only when the provenance log vouches for it.

The log's last `checkpoint` event names the round the peer continues from and the hash of
the parameters it saved (`next_round`, `params_hash`). A checkpoint that disagrees (flipped
bytes, a round edited, a file deleted or restored from elsewhere) is refused: the peer
would otherwise train on weights its own log does not describe.

The peer writes `checkpoint.msgpack.tmp` (fsynced), then logs the event, then renames the
file into place. A kill -9 between the last two steps leaves the event describing the
`.tmp`: resuming rolls that file forward. Pure decisions and file reads; no asyncio.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import PeerError
from . import checkpoint as ckpt
from .checkpoint import Checkpoint, CheckpointError, state_hash
from .provenance import Event, EventKind, ProvenanceLog

_HASH = re.compile(r"[0-9a-f]{64}")


class ResumeError(PeerError):
    """The checkpoint and the provenance log disagree: resuming would continue from state the
    log does not describe."""


class EventSource(Protocol):
    """A provenance log to read from: the peer's own, or export's read-only view of it."""

    path: Path

    def last_event(self, kind: EventKind) -> Event | None: ...


@dataclass(frozen=True)
class Vouched:
    """What the log's last `checkpoint` event says the checkpoint holds."""

    seq: int
    round: int
    params_hash: str


def vouched(log: EventSource) -> Vouched | None:
    """The log's last checkpoint event, None if it has none; ResumeError if it is malformed."""
    ev = log.last_event(EventKind.CHECKPOINT)
    if ev is None:
        return None
    rnd, digest = ev.details.get("next_round"), ev.details.get("params_hash")
    if type(rnd) is not int or rnd < 0 or not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise ResumeError(f"{log.path}: checkpoint event {ev.seq} lacks a valid next_round and params_hash")
    return Vouched(ev.seq, rnd, digest)


def tmp_path(path: str | os.PathLike) -> Path:
    """Where checkpoint.write() puts a checkpoint before commit() renames it into place."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def _describe(ck: Checkpoint | None, problem: str | None) -> str:
    if problem is not None:
        return problem
    if ck is None:
        return "missing"
    return f"at round {ck.round} with params hash {state_hash(ck)[:16]}..."


def _load(path: Path, schema: bytes, n_params: int) -> tuple[Checkpoint | None, str | None]:
    """(checkpoint or None, why it could not be read or None)."""
    try:
        return ckpt.load(path, schema, n_params), None
    except CheckpointError as exc:  # said once: the caller names the path
        return None, str(exc).removeprefix(f"{path}: ")


def matches(ck: Checkpoint | None, want: Vouched) -> bool:
    return ck is not None and ck.round == want.round and state_hash(ck) == want.params_hash


def load_for_resume(path: str | os.PathLike, log: ProvenanceLog, schema: bytes, n_params: int) -> Checkpoint | None:
    """The checkpoint to continue from, None for a fresh start, ResumeError if the checkpoint
    and the log disagree. Rolls a complete `.tmp` the log vouches for into place."""
    path = Path(path)
    want = vouched(log)
    current, problem = _load(path, schema, n_params)
    if want is None:
        if problem is not None or (current is not None and current.round > 0):
            raise ResumeError(
                f"{path} is {_describe(current, problem)} but the provenance log {log.path} records no "
                "checkpoint (was the log deleted, emptied or replaced?). To start a new chain deliberately, "
                "move both aside")
        return None  # fresh start (a round-0 checkpoint holds nothing the log would vouch for)
    if matches(current, want):
        return current
    pending = tmp_path(path)
    rolled, _ = _load(pending, schema, n_params) if pending.is_file() else (None, None)
    if matches(rolled, want):  # written and logged, killed before the rename
        ckpt.commit(pending, path)
        return rolled
    raise ResumeError(
        f"{path} is {_describe(current, problem)} but the provenance log's last checkpoint event "
        f"(event {want.seq}) says round {want.round} with params hash {want.params_hash[:16]}...; "
        f"refusing to resume from state the log does not describe. Inspect the log with "
        f"`gossipfl audit show {log.path} --kind checkpoint`; to start a new chain deliberately, move "
        "the checkpoint and the log aside")
