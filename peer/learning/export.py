"""Taking the model out: the last checkpoint the provenance log vouches for, rebuilt from the
config's model section and the checkpoint's own schema (no training data), written as a
torch state_dict, safetensors, TorchScript and ONNX.

Read-only throughout: the log is opened with SQLite's mode=ro and without the data-folder
lock, and a pending `.tmp` checkpoint is read, never renamed, so a running peer is undisturbed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config.parse import PeerConfig
from ..errors import PeerError
from ..state import checkpoint as ckpt
from ..state.provenance import _COLUMNS, EventKind, ProvenanceError, read_meta, row_to_event
from ..state.resume import ResumeError, matches, tmp_path, vouched
from .model import FlatModel, build_model

FORMATS = ("state_dict", "safetensors", "torchscript", "onnx")
FILES = {"state_dict": "model.pt", "safetensors": "model.safetensors", "torchscript": "model.torchscript.pt",
         "onnx": "model.onnx"}


class ExportError(PeerError):
    """Nothing exportable: no vouched checkpoint, a model that does not match it, a bad format."""


@dataclass
class Exported:
    round: int
    params_hash: str
    in_features: int
    serves: str = "shared"  # which model was written: "personal" ([personalization]) or "shared" (the fleet's)
    written: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it could not be written


class ReadOnlyLog:
    """The two things resume.vouched() reads from a provenance log, over a read-only connection."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise ExportError(f"{path}: no provenance log (has the peer started?)")
        try:
            self.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
            read_meta(self.con, path)
        except (sqlite3.DatabaseError, ProvenanceError) as exc:
            raise ExportError(f"{path}: not a readable provenance log ({exc})") from None

    def last_event(self, kind):
        try:
            row = self.con.execute(f"SELECT {_COLUMNS} FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                                   (EventKind(kind).value,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise ExportError(f"{self.path}: unreadable ({exc})") from None
        return row_to_event(row) if row else None

    def close(self) -> None:
        self.con.close()


def vouched_checkpoint(data_dir: Path) -> ckpt.Checkpoint:
    """The checkpoint the log's last `checkpoint` event describes (round and params hash)."""
    path, log = data_dir / "checkpoint.msgpack", ReadOnlyLog(data_dir / "provenance.db")
    try:
        want = vouched(log)
    except ResumeError as exc:
        raise ExportError(str(exc)) from None
    finally:
        log.close()
    if want is None:
        raise ExportError(f"{log.path} records no checkpoint yet: run the peer for a round first")
    problems = []
    for candidate in (path, tmp_path(path)):  # the .tmp: written and logged, not yet renamed
        if not candidate.is_file():
            continue
        try:
            info = ckpt.read_model_info(candidate)
            if info is None:
                problems.append(f"{candidate.name} carries no model schema (written by an older gossipfl; "
                                "run the peer one more round to rewrite it)")
                continue
            ck = ckpt.load(candidate, info.schema, info.size)
        except ckpt.CheckpointError as exc:
            problems.append(str(exc))
            continue
        if ck is not None and matches(ck, want):
            return ck
        problems.append(f"{candidate.name} is not the checkpoint of round {want.round} the log vouches for")
    raise ExportError(f"{data_dir}: no checkpoint the provenance log vouches for "
                      f"({'; '.join(problems) or 'no checkpoint file'})")


def served(cfg: PeerConfig, ck: ckpt.Checkpoint) -> str:
    """Which model a checkpoint gives the gateway: "personal" (ditto's personal model, or
    local_head's model with its own head) or "shared" (the fleet model)."""
    return "personal" if ck.personal is not None or cfg.personalization.mode == "local_head" else "shared"


def rebuild(cfg: PeerConfig, ck: ckpt.Checkpoint) -> FlatModel:
    """The config's model with the parameters the gateway uses (ditto: the personal model's);
    ExportError if they do not fit."""
    info = ck.model
    if info is None:
        raise ExportError("the checkpoint carries no model schema: run the peer one more round to rewrite it")
    base = cfg.source.resolve().parent if cfg.source is not None else None
    module = build_model(cfg.model.name, info.in_features, cfg.model.classes, cfg.model.options,
                         cfg.model.seed, base=base)
    fm = FlatModel(module)
    if fm.schema != ck.schema:
        raise ExportError(f"the config's model ({cfg.model.name}, options {cfg.model.options}) has parameters "
                          f"{list(zip(fm.names, fm.shapes, strict=True))[:3]}..., the checkpoint "
                          f"{list(zip(info.names, info.shapes, strict=True))[:3]}...: export with the config "
                          "the peer ran")
    fm.set(ck.personal if ck.personal is not None else ck.params)
    module.eval()
    return fm


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _write(fmt: str, module: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    if fmt == "state_dict":
        torch.save(_state_dict(module), dest)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(_state_dict(module), str(dest), metadata={"format": "pt"})
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=True)
            traced.save(str(dest))
    elif fmt == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(dest), dynamo=False, input_names=["input"],
                              output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def export(cfg: PeerConfig, out: str | os.PathLike, formats: tuple[str, ...] = FORMATS) -> Exported:
    """Write each format into `out` (plus model.json describing them); a format the model
    cannot take (e.g. ONNX of an unsupported operator) is skipped with the reason."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format: {unknown[0] if unknown else 'nothing'} is not one of {', '.join(FORMATS)}")
    ck = vouched_checkpoint(Path(cfg.data_dir))
    fm = rebuild(cfg, ck)
    assert ck.model is not None  # rebuild refuses a checkpoint without its model schema
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = Exported(ck.round, ckpt.state_hash(ck), ck.model.in_features, served(cfg, ck))
    example = torch.zeros(2, ck.model.in_features)
    for fmt in formats:
        dest = out / FILES[fmt]
        try:
            with torch.no_grad():
                _write(fmt, fm.module, example, dest)
        except ImportError as exc:
            result.skipped[fmt] = f"needs {exc.name or exc} installed (pip install {exc.name or ''})".strip()
        except Exception as exc:  # the model's own code: say which format it does not support and why
            dest.unlink(missing_ok=True)
            result.skipped[fmt] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        else:
            result.written[fmt] = dest
    (out / "model.json").write_text(json.dumps({
        "model": cfg.model.name, "options": cfg.model.options, "classes": cfg.model.classes,
        "in_features": ck.model.in_features, "input": {"name": "input", "shape": ["batch", ck.model.in_features],
                                                       "dtype": "float32"},
        "round": ck.round, "params_hash": result.params_hash, "serves": result.serves,
        "personalization": cfg.personalization.mode, "schema": ck.schema.hex(),
        "peer": cfg.name, "network": cfg.network, "learner": cfg.train.learner,
        "files": {f: p.name for f, p in result.written.items()}, "skipped": result.skipped}, indent=1))
    if not result.written:
        raise ExportError("no format could be written: " + "; ".join(f"{f}: {w}" for f, w in result.skipped.items()))
    return result
