"""Atomic checkpoints: model, optimizer momentum, round, replay window, last inputs.

msgpack with raw little-endian float32 bytes (no pickle); written to a temporary file,
fsynced, renamed over the old one, and the directory fsynced: a crash leaves either the
old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import torch

from gossip.envelope import bin_header
from gossip.identity import MAX_PEER_ID_LEN

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


MAX_REPLAY = 1 << 16  # (sender, round) pairs in the replay window
MAX_PARENTS = 1 << 12  # update ids the next update names as parents
_KEYS = {"format", "round", "schema", "params", "momentum", "replay", "parents"}


def params_hash(params: torch.Tensor) -> str:
    """SHA-256 hex of the parameters as little-endian float32: what a `checkpoint` event
    records and what resuming compares against the checkpoint's parameters."""
    return hashlib.sha256(_f32(params)).hexdigest()


def load(path: str | os.PathLike, schema: bytes, n_params: int) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; CheckpointError naming the field
    that does not fit (every field is checked: a checkpoint is bytes from disk)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    limit = 8 * n_params + (1 << 22)
    try:
        if path.stat().st_size > limit:
            raise CheckpointError(f"{path}: larger than a checkpoint of this model can be")
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror})") from None
    try:
        doc = msgpack.unpackb(raw, raw=False, max_bin_len=limit, max_str_len=1 << 12,
                              max_array_len=MAX_REPLAY, max_map_len=4 * len(_KEYS), strict_map_key=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}); move it away to start fresh") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gossipfl checkpoint")
    if set(doc) != _KEYS:
        raise CheckpointError(f"{path}: fields {sorted(map(str, set(doc) ^ _KEYS))} missing or unexpected")
    if doc["schema"] != schema:
        raise CheckpointError(f"{path}: saved for a different model (schema differs); move it away to start fresh")

    def bad(field_: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: field {field_!r} {why}")

    rnd = doc["round"]
    if type(rnd) is not int or rnd < 0:
        raise bad("round", f"must be a non-negative integer, not {rnd!r:.40}")

    def tensor(field_: str, optional: bool) -> torch.Tensor | None:
        raw_ = doc[field_]
        if raw_ is None and optional:
            return None
        if not isinstance(raw_, bytes) or len(raw_) != 4 * n_params:
            raise bad(field_, f"must be {4 * n_params} bytes of float32")
        return torch.from_numpy(np.frombuffer(raw_, dtype="<f4").astype(np.float32))

    replay, parents = doc["replay"], doc["parents"]
    if not isinstance(replay, list) or not all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and len(x[0]) <= MAX_PEER_ID_LEN
            and type(x[1]) is int and x[1] >= 0 for x in replay):
        raise bad("replay", "must be a list of [PeerId, round] pairs")
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS or not all(
            isinstance(p, str) and len(p) <= 64 for p in parents):
        raise bad("parents", f"must be a list of at most {MAX_PARENTS} update ids")
    return Checkpoint(rnd, schema, tensor("params", False), tensor("momentum", True),
                      [(s, r) for s, r in replay], list(parents))
