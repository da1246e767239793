"""Local training data: demo shards of scikit-learn's digits (offline), NPZ or CSV files, or a
user loader; partitions (IID, Dirichlet alpha, label shards) are deterministic given a seed,
so every peer computes the same split and takes only its own shard."""

from __future__ import annotations

import csv
import os
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

DIGITS_TEST_FRACTION = 0.15


@dataclass
class LocalData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    classes: int

    @property
    def features(self) -> int:
        return int(self.x_train[0].numel())


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read from the file in its wheel without importing
    scikit-learn (which would add ~100 MB to a small gateway's peer process)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("data.source = digits needs scikit-learn installed (it ships the data set)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits file is missing: {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1] / 16.0, table[:, -1].astype(np.int64)


def digits_pool_and_test() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Digits split once (fixed seed) into a pool that shards are cut from and a common test set."""
    x, y = _digits()
    order = np.random.default_rng(12345).permutation(len(y))
    cut = int(len(y) * (1 - DIGITS_TEST_FRACTION))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def partition(labels: np.ndarray, shards: int, how: str = "iid", *, alpha: float = 0.5,
              labels_per_shard: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Index arrays, one per shard. 'iid': random equal split; 'dirichlet': per class, shard
    proportions ~ Dir(alpha); 'labels': sorted by label, cut into shards * labels_per_shard
    pieces, each shard taking labels_per_shard of them (the McMahan et al. pathological split)."""
    n = len(labels)
    if shards < 1 or shards > n:
        raise DataError(f"data.shards must be between 1 and {n} samples, got {shards}")
    rng = np.random.default_rng(seed)
    if how == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), shards)]
    if how == "dirichlet":
        if not alpha > 0:
            raise DataError(f"data.alpha must be > 0, got {alpha}")
        parts: list[list[int]] = [[] for _ in range(shards)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * shards)) * len(idx)).astype(int)[:-1]
            for s, piece in enumerate(np.split(idx, cuts)):
                parts[s].extend(piece.tolist())
        # no shard may be empty: give an empty shard one sample from the largest
        for s in range(shards):
            if not parts[s]:
                donor = max(range(shards), key=lambda k: len(parts[k]))
                parts[s].append(parts[donor].pop())
        return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    if how == "labels":
        order = np.argsort(labels, kind="stable")
        pieces = np.array_split(order, shards * labels_per_shard)
        assignment = rng.permutation(len(pieces))
        return [np.sort(np.concatenate([pieces[j] for j in assignment[s::shards]])) for s in range(shards)]
    raise DataError(f"data.partition must be iid, dirichlet or labels, got {how!r}")


def split_holdout(x: np.ndarray, y: np.ndarray, holdout: float, seed: int, classes: int) -> LocalData:
    if not 0 <= holdout < 1:
        raise DataError(f"data.holdout must be in [0, 1), got {holdout}")
    if len(y) == 0:
        raise DataError("the local data set is empty")
    if np.issubdtype(y.dtype, np.integer) and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"labels must be in 0..{classes - 1}, found {int(y.min())}..{int(y.max())} "
                        "(set model.classes to the number of classes)")
    order = np.random.default_rng(seed).permutation(len(y))
    k = int(round(len(y) * holdout)) if len(y) > 1 else 0
    ev, tr = order[:k], order[k:]
    t = torch.from_numpy
    return LocalData(t(np.ascontiguousarray(x[tr])), t(np.ascontiguousarray(y[tr])),
                     t(np.ascontiguousarray(x[ev])), t(np.ascontiguousarray(y[ev])), classes)


def digits_shard(shard: int, shards: int, how: str = "iid", *, alpha: float = 0.5, labels_per_shard: int = 2,
                 seed: int = 0, holdout: float = 0.2) -> LocalData:
    if not 0 <= shard < shards:
        raise DataError(f"data.shard must be in 0..{shards - 1}, got {shard}")
    (x, y), _ = digits_pool_and_test()
    idx = partition(y, shards, how, alpha=alpha, labels_per_shard=labels_per_shard, seed=seed)[shard]
    return split_holdout(x[idx], y[idx], holdout, seed + 1000 + shard, 10)


MAX_ARRAY_BYTES = 1 << 30  # one array of a data file, as stored
MAX_CSV_BYTES = 256 * 1024 * 1024
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what training can use


def _regular_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data.path: {path} not found")
    if not path.is_file():
        raise DataError(f"data.path: {path} is not a regular file")


def _npz_header(f, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array, read from its .npy header before the data is touched
    (so a member that would decompress to gigabytes is refused unread)."""
    with f.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise DataError(f"data.path: {path}: array {key!r} holds {dtype}, not numbers")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"data.path: {path}: array {key!r} of shape {shape} is larger than "
                        f"{MAX_ARRAY_BYTES >> 20} MB")
    return shape, dtype


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from an .npz of numeric arrays (never pickled objects); y_key = ""
    for unlabelled data (the labels are then zeros)."""
    path = Path(path)
    _regular_file(path)
    with path.open("rb") as fh:
        if fh.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load of anything else may try pickle
            raise DataError(f"data.path: {path} is not an NPZ file (a zip of .npy arrays {x_key!r} and {y_key!r})")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = (x_key, y_key) if y_key else (x_key,)
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"data.path: {path} has arrays {sorted(f.files)[:10]}, missing {missing} "
                                "(set data.x_key and data.y_key)")
            for k in keys:
                _npz_header(f, k, path)
            x, y = f[x_key], (f[y_key] if y_key else None)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"data.path: {path} is not a readable NPZ file ({exc})") from None
    return _as_xy(x, y, str(path))


def load_csv(path: str | os.PathLike, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """A header row, then one sample per row: numeric features and a label column (whole
    numbers for classes, any number for regression targets); label_column = "" for none."""
    path = Path(path)
    _regular_file(path)
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"data.path: {path} is larger than {MAX_CSV_BYTES >> 20} MB; use an .npz file")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DataError(f"data.path: {path} is empty")
            if label_column and label_column not in header:
                raise DataError(f"data.label_column: {label_column!r} is not a column of {path} "
                                f"(columns: {header[:10]})")
            if len(header) < (2 if label_column else 1):
                raise DataError(f"data.path: {path} has no feature columns besides {label_column!r}")
            li = header.index(label_column) if label_column else -1
            xs, ys = [], []
            for row in reader:
                lineno = reader.line_num
                if len(row) != len(header):
                    raise DataError(f"{path}:{lineno}: expected {len(header)} columns, got {len(row)}")
                try:
                    if li >= 0:
                        ys.append(float(row[li]))
                    xs.append([float(v) for j, v in enumerate(row) if j != li])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: not a number") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"data.path: {path} is not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"data.path: {path} is not a valid CSV file: {exc}") from None
    if not xs:
        raise DataError(f"data.path: {path} has a header but no rows")
    return _as_xy(np.array(xs, dtype=np.float32), np.array(ys, dtype=np.float64) if li >= 0 else None, str(path))


def from_loader(result, where: str) -> tuple[np.ndarray, np.ndarray]:
    """What a package.module:loader returned: (x, y), (x, None) or x alone (unlabelled)."""
    if isinstance(result, tuple | list):
        if len(result) == 1:
            result = (result[0], None)
        if len(result) != 2:
            raise DataError(f"{where} must return x, (x, y) or (x, None), got {len(result)} values")
        x, y = result
    else:
        x, y = result, None
    try:
        x = torch.as_tensor(x).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        y = None if y is None else (y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{where}: not arrays of numbers ({exc})") from None
    return _as_xy(x, y, where)


def _as_xy(x, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, features) float32 and labels: int64 when whole numbers (classes), else float32
    (regression targets); no labels (y None) become zeros."""
    x = np.asarray(x)
    y = np.zeros(len(x), dtype=np.int64) if y is None else np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{where}: expected features (N, ...) and labels (N,), got {x.shape} and {y.shape}")
    if x.dtype.kind not in NUMERIC_KINDS or y.dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{where}: features and labels must be numbers, got {x.dtype} and {y.dtype}")
    if x[0].size == 0:
        raise DataError(f"{where}: the samples have no features (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: features contain NaN or Inf")
    x = x.astype(np.float32).reshape(len(x), -1)
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return x, y.astype(np.int64)
    if not np.all(np.isfinite(y)):
        raise DataError(f"{where}: labels contain NaN or Inf")
    if np.all(np.equal(np.mod(y, 1), 0)):
        return x, y.astype(np.int64)
    return x, y.astype(np.float32)
