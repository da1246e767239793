"""Atomic checkpoints: model, learner state (optimizer), round, replay window, last inputs,
and the model's schema (parameter names, shapes, input size) so that `gossipfl peer export`
rebuilds a usable model without the training data.

msgpack with raw little-endian float32 bytes (no pickle); written to a temporary file,
fsynced, renamed over the old one, and the directory fsynced (peer.state.files: never
through a link, mode 0600): a crash leaves either the
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

from ..errors import PeerError
from ..learning.learner import MAX_STATE_TENSORS, state_limit
from ..learning.model import schema_hash
from . import files

FORMAT = "gossipfl-checkpoint/1"


class CheckpointError(PeerError):
    """A checkpoint is unreadable or belongs to another model."""


@dataclass(frozen=True)
class ModelInfo:
    """What rebuilding the model needs beyond the config: its input size, and the parameter
    names and shapes in flat order (their hash is the schema hash)."""

    in_features: int
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, flat_model, in_features: int) -> ModelInfo:
        return cls(int(in_features), tuple(flat_model.names), tuple(tuple(s) for s in flat_model.shapes))

    @property
    def schema(self) -> bytes:
        return schema_hash(list(self.names), list(self.shapes))

    @property
    def size(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    def to_doc(self) -> dict:
        return {"in_features": self.in_features, "names": list(self.names), "shapes": [list(s) for s in self.shapes]}


@dataclass
class Checkpoint:
    round: int
    schema: bytes
    params: torch.Tensor
    momentum: torch.Tensor | None = None  # the built-in learner's, as written before learner state existed
    replay: list = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    model: ModelInfo | None = None
    learner: dict[str, torch.Tensor] = field(default_factory=dict)  # the learner's state()
    # personalization.mode = "ditto": the gateway's personal model beside the fleet's, and its learner's state
    personal: torch.Tensor | None = None
    personal_learner: dict[str, torch.Tensor] = field(default_factory=dict)

    def learner_state(self) -> dict[str, torch.Tensor]:
        """The learner's state, reading an older checkpoint's momentum as the built-in's."""
        if self.learner:
            return dict(self.learner)
        return {} if self.momentum is None else {"momentum": self.momentum}


_STATE_DTYPES = {"<f4": torch.float32, "<f8": torch.float64, "<i8": torch.int64}


def _state_doc(state: dict[str, torch.Tensor]) -> dict:
    out = {}
    for name, t in state.items():
        t = t.detach().cpu()
        code = "<i8" if not t.is_floating_point() else ("<f8" if t.dtype == torch.float64 else "<f4")
        arr = t.to(_STATE_DTYPES[code]).contiguous().numpy().astype(code, copy=False)
        out[name] = {"dtype": code, "shape": list(t.shape), "data": arr.tobytes()}
    return out


def _f32(t: torch.Tensor) -> memoryview:
    """Little-endian float32 bytes of `t`, a view where the tensor already is that."""
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return memoryview(arr.data).cast("B")


def save(path: str | os.PathLike, ck: Checkpoint) -> None:
    """Write and commit: when this returns, the checkpoint survives a power cut."""
    commit(write(path, ck), path)


def write(path: str | os.PathLike, ck: Checkpoint) -> Path:
    """Write the checkpoint beside `path` (not yet durable, not yet in place); returns the
    temporary file for commit(): a crash in between leaves the old checkpoint."""
    path = Path(path)
    files.make_dir(path.parent)
    doc = {"format": FORMAT, "round": ck.round, "schema": ck.schema}
    if ck.model is not None:  # written only when known; before the parameters, so export reads it first
        doc["model"] = ck.model.to_doc()
    doc.update({"params": _f32(ck.params), "momentum": None if ck.momentum is None else _f32(ck.momentum),
                "replay": [list(x) for x in ck.replay], "parents": list(ck.parents)})
    if ck.learner:
        doc["learner"] = _state_doc(ck.learner)
    if ck.personal is not None:
        doc["personal"] = _f32(ck.personal)
        doc["personal_learner"] = _state_doc(ck.personal_learner)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_doc(files.open_fresh(tmp), doc)
    except OSError as exc:  # the disk is full, or failed: the old checkpoint stays in place
        tmp.unlink(missing_ok=True)
        raise files.disk_error(tmp, exc, "write") from None
    return tmp


def _write_doc(fd: int, doc: dict) -> None:
    with os.fdopen(fd, "wb") as fh:
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


def commit(tmp: Path, path: str | os.PathLike) -> None:
    """fsync the written file, rename it over the old checkpoint, fsync the directory: a
    crash at any point leaves the old or the new checkpoint, never a torn one."""
    files.replace(tmp, path)


MAX_REPLAY = 1 << 16  # (sender, round) pairs in the replay window
MAX_PARENTS = 1 << 12  # update ids the next update names as parents
_KEYS = {"format", "round", "schema", "params", "momentum", "replay", "parents"}
_OPTIONAL = {"model", "learner", "personal", "personal_learner"}


def params_hash(params: torch.Tensor, personal: torch.Tensor | None = None) -> str:
    """SHA-256 hex of the parameters as little-endian float32 (then the personal model's, when
    there is one): what a `checkpoint` event records and what resuming compares against."""
    h = hashlib.sha256(_f32(params))
    if personal is not None:
        h.update(_f32(personal))
    return h.hexdigest()


def state_hash(ck: Checkpoint) -> str:
    """params_hash of everything a checkpoint holds of the model(s)."""
    return params_hash(ck.params, ck.personal)


def _is_update_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def max_file_size(n_params: int) -> int:
    """The largest checkpoint file of a model of n_params: parameters, learner state, the rest."""
    return 2 * (8 * n_params + state_limit(n_params) + MAX_STATE_TENSORS * 512) + (1 << 22)  # a personal model too


def load(path: str | os.PathLike, schema: bytes, n_params: int) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; CheckpointError naming the field
    that does not fit (every field is checked: a checkpoint is bytes from disk)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    limit = max_file_size(n_params)
    try:
        if path.stat().st_size > limit:
            raise CheckpointError(f"{path}: larger than a checkpoint of this model can be")
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror})") from None
    doc = _parse(path, raw, limit)
    if doc["schema"] != schema:
        raise CheckpointError(f"{path}: saved for a different model (its schema differs from the configured model's)")

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
            isinstance(p, str) and _is_update_id(p) for p in parents):
        raise bad("parents", f"must be a list of at most {MAX_PARENTS} update ids (64 hex digits)")
    info = _model_info(path, doc) if "model" in doc else None
    if info is not None and info.schema != schema:
        raise bad("model", "does not match the checkpoint's schema hash")
    learner = _learner_state(path, doc.get("learner", {}), n_params)
    params = tensor("params", False)
    assert params is not None  # not optional: tensor() raised otherwise
    if ("personal" in doc) != ("personal_learner" in doc):
        raise bad("personal", "and 'personal_learner' come together")
    personal = tensor("personal", False) if "personal" in doc else None
    return Checkpoint(rnd, schema, params, tensor("momentum", True), [(s, r) for s, r in replay], list(parents),
                      info, learner, personal, _learner_state(path, doc.get("personal_learner", {}), n_params,
                                                                     "personal_learner"))


def _parse(path: Path, raw: bytes, limit: int) -> dict:
    try:
        doc = msgpack.unpackb(raw, raw=False, max_bin_len=limit, max_str_len=1 << 12,
                              max_array_len=MAX_REPLAY, max_map_len=max(4 * len(_KEYS), MAX_STATE_TENSORS),
                              strict_map_key=True)
    except Exception:
        raise CheckpointError(f"{path}: unreadable checkpoint (not a well-formed msgpack document)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gossipfl checkpoint")
    if not _KEYS <= set(doc) <= _KEYS | _OPTIONAL:
        odd = (_KEYS - set(doc)) | (set(doc) - _KEYS - _OPTIONAL)
        raise CheckpointError(f"{path}: fields {sorted(map(str, odd))} missing or unexpected")
    return doc


def _model_info(path: Path, doc: dict) -> ModelInfo:
    m = doc["model"]

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: field 'model' {why}")

    if not isinstance(m, dict) or set(m) != {"in_features", "names", "shapes"}:
        raise bad("must be a map of in_features, names and shapes")
    f, names, shapes = m["in_features"], m["names"], m["shapes"]
    if type(f) is not int or not 0 < f < 1 << 40:
        raise bad("in_features must be a positive integer")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise bad("names must be a list of parameter names")
    if not isinstance(shapes, list) or len(shapes) != len(names) or not all(
            isinstance(s, list) and len(s) <= 16 and all(type(d) is int and 0 <= d < 1 << 40 for d in s)
            for s in shapes):
        raise bad("shapes must be one list of dimensions per name")
    return ModelInfo(f, tuple(names), tuple(tuple(s) for s in shapes))


def _learner_state(path: Path, raw, n_params: int, field_: str = "learner") -> dict[str, torch.Tensor]:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: field {field_!r} {why}")

    if not isinstance(raw, dict) or len(raw) > MAX_STATE_TENSORS:
        raise bad(f"must be a map of at most {MAX_STATE_TENSORS} tensors")
    out, total = {}, 0
    for name, t in raw.items():
        if not isinstance(name, str) or not isinstance(t, dict) or set(t) != {"dtype", "shape", "data"}:
            raise bad("entries must be {dtype, shape, data}")
        code, shape, data = t["dtype"], t["shape"], t["data"]
        if code not in _STATE_DTYPES or not isinstance(data, bytes) or not isinstance(shape, list) or not all(
                type(d) is int and 0 <= d < 1 << 40 for d in shape) or len(shape) > 16:
            raise bad(f"entry {name!r:.60} has a bad dtype, shape or data")
        count = int(np.prod(shape, dtype=np.int64))
        if count * np.dtype(code).itemsize != len(data):
            raise bad(f"entry {name!r:.60}: {len(data)} bytes for shape {shape}")
        total += len(data)
        out[name] = torch.from_numpy(np.frombuffer(data, dtype=code).astype(code[1:]).reshape(shape))
    if total > state_limit(n_params):
        raise bad(f"holds {total:,} bytes, more than a learner of this model may keep")
    return out


def read_model_info(path: str | os.PathLike) -> ModelInfo | None:
    """The model schema a checkpoint carries, read before the model is known (for export);
    None for a checkpoint written before it carried one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (has the peer run a round?)")
    with open(path, "rb") as fh:
        unpacker = msgpack.Unpacker(fh, raw=False, max_buffer_size=1 << 31, max_bin_len=1 << 31,
                                    max_str_len=1 << 12, max_array_len=MAX_REPLAY,
                                    max_map_len=max(4 * len(_KEYS), MAX_STATE_TENSORS))
        try:
            n = unpacker.read_map_header()
            for _ in range(min(n, 16)):
                key = unpacker.unpack()
                if key == "model":
                    return _model_info(path, {"model": unpacker.unpack()})
                unpacker.skip()
        except Exception:
            raise CheckpointError(f"{path}: unreadable checkpoint (not a well-formed msgpack document)") from None
    return None
