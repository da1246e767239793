"""Atomic checkpoints: model, optimizer momentum, round, replay window, last inputs.

msgpack with raw little-endian float32 bytes (no pickle); written to a temporary file,
fsynced, renamed over the old one, and the directory fsynced: a crash leaves either the
old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import torch

from gossip.envelope import bin_header

from .errors import PeerError

FORMAT = "gossipfl-checkpoint/1"


class CheckpointError(PeerError):
    """A checkpoint is unreadable or belongs to another model."""


@dataclass
class Checkpoint:
    round: int
    schema: bytes
    params: torch.Tensor
    momentum: torch.Tensor | None = None
    replay: list = field(default_factory=list)
    parents: list[str] = field(default_factory=list)


def _f32(t: torch.Tensor) -> memoryview:
    """Little-endian float32 bytes of `t`, a view where the tensor already is that."""
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return memoryview(arr).cast("B")


def save(path: str | os.PathLike, ck: Checkpoint) -> None:
    """Write and commit: when this returns, the checkpoint survives a power cut."""
    commit(write(path, ck), path)


def write(path: str | os.PathLike, ck: Checkpoint) -> Path:
    """Write the checkpoint beside `path` (not yet durable, not yet in place); returns the
    temporary file for commit(): a crash in between leaves the old checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "round": ck.round, "schema": ck.schema, "params": _f32(ck.params),
           "momentum": None if ck.momentum is None else _f32(ck.momentum),
           "replay": [list(x) for x in ck.replay], "parents": list(ck.parents)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        # the same msgpack map packb would build, written piece by piece so the parameter
        # blocks go from the tensors to the file without a copy
        packer = msgpack.Packer(use_bin_type=True)
        fh.write(packer.pack_map_header(len(doc)))
        for key, value in doc.items():
            fh.write(packer.pack(key))
            if isinstance(value, memoryview):
                fh.write(bin_header(len(value)))
                fh.write(value)
            else:
                fh.write(packer.pack(value))
    return tmp


def commit(tmp: Path, path: str | os.PathLike) -> None:
    """fsync the written file, rename it over the old checkpoint, fsync the directory: a
    crash at any point leaves the old or the new checkpoint, never a torn one."""
    path = Path(path)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str | os.PathLike, schema: bytes, n_params: int) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; CheckpointError if it does not fit."""
    path = Path(path)
    if not path.exists():
        return None
    limit = 8 * n_params + (1 << 22)
    if path.stat().st_size > limit:
        raise CheckpointError(f"{path}: larger than a checkpoint of this model can be")
    try:
        doc = msgpack.unpackb(path.read_bytes(), raw=False, max_bin_len=limit, max_array_len=1 << 20)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}); move it away to start fresh") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gossipfl checkpoint")
    if doc.get("schema") != schema:
        raise CheckpointError(f"{path}: saved for a different model (schema differs); move it away to start fresh")

    def tensor(raw):
        if raw is None:
            return None
        if len(raw) != 4 * n_params:
            raise CheckpointError(f"{path}: parameter block has the wrong size")
        return torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))

    try:
        return Checkpoint(int(doc["round"]), schema, tensor(doc["params"]), tensor(doc.get("momentum")),
                          [(str(s), int(r)) for s, r in doc.get("replay", [])],
                          [str(p) for p in doc.get("parents", [])])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint ({exc})") from None
