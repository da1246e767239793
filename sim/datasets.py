"""Offline data sets for simulations, as peer data loaders (`data.source = "sim.datasets:NAME"`).

- digits: scikit-learn's 8x8 digits (peer.learning.data does the work; here only its test split).
- fashion_mnist: the standard 60k/10k set from Debian's `dataset-fashion-mnist` (IDX files).
- synthetic: Synthetic(alpha, beta) of the FedProx paper: 60 features, 10 classes, each
  node drawing its own linear model and inputs from (seed, node id).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from peer.errors import DataError
from peer.learning.data import digits_pool_and_test, partition, split_holdout

FASHION_DIR = Path(os.environ.get("GOSSIPFL_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_HINT = ("Fashion-MNIST is not installed: run `sudo apt-get install dataset-fashion-mnist` "
                "(or set GOSSIPFL_FASHION_MNIST to a folder with its four IDX .gz files)")


def fashion_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX size does not match its header")
    return body.reshape(shape)


@lru_cache(maxsize=1)
def _fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not fashion_available():
        raise DataError(FASHION_HINT)
    load = lambda name: _idx(FASHION_DIR / name)  # noqa: E731
    xtr = load("train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    xte = load("t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    return xtr, load("train-labels-idx1-ubyte.gz").astype(np.int64), xte, load("t10k-labels-idx1-ubyte.gz").astype(np.int64)


def fashion_mnist(shard: int, shards: int, seed: int = 0, partition_: str = "iid", alpha: float = 0.5,
                  labels_per_shard: int = 2, limit: int = 0, **_):
    """This shard of the 60k training images (optionally only the first `limit` of them)."""
    x, y, _, _ = _fashion()
    if limit:
        x, y = x[:limit], y[:limit]
    idx = _fashion_split(shards, partition_, alpha, labels_per_shard, seed, limit)[shard]
    return x[idx], y[idx]


@lru_cache(maxsize=2)
def _fashion_split(shards: int, how: str, alpha: float, labels_per_shard: int, seed: int, limit: int) -> list:
    """The partition of the training labels, computed once per simulation, not once per node."""
    y = _fashion()[1]
    return partition(y[:limit] if limit else y, shards, how, alpha=alpha, labels_per_shard=labels_per_shard,
                     seed=seed)


def synthetic(shard: int, shards: int, seed: int = 0, alpha: float = 1.0, beta: float = 1.0, samples: int = 0,
              dim: int = 60, classes: int = 10, **_):
    """Node `shard` of Synthetic(alpha, beta): u ~ N(0, alpha), B ~ N(0, beta); W ~ N(u, 1),
    b ~ N(u, 1); v ~ N(B, 1); x ~ N(v, diag(j^-1.2)); y = argmax softmax(W x + b)."""
    rng = np.random.default_rng([seed, shard, 7919])
    n = samples or int(rng.lognormal(4, 2)) + 50
    n = min(n, 2000)
    u, big_b = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
    w = rng.normal(u, 1, (dim, classes))
    b = rng.normal(u, 1, classes)
    v = rng.normal(big_b, 1, dim)
    cov = np.arange(1, dim + 1) ** -1.2
    x = rng.normal(v, np.sqrt(cov), (n, dim)).astype(np.float32)
    y = np.argmax(x @ w + b, axis=1).astype(np.int64)
    return x, y


def test_set(dataset: str, options: dict | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """A common test set for global accuracy, or None where each node has its own distribution."""
    if dataset == "digits":
        return digits_pool_and_test()[1]
    if dataset == "fashion_mnist":
        _, _, x, y = _fashion()
        limit = int((options or {}).get("test_limit", 2000))
        return x[:limit], y[:limit]
    return None


FEATURES = {"digits": 64, "fashion_mnist": 784, "synthetic": 60}


def digits_node_limit() -> int:
    """Digits has one training sample per node at most: the size of its training pool."""
    return len(digits_pool_and_test()[0][1])


HOLDOUT = 0.1  # each node's held-out split by default (scenario data.holdout; the protocol engine's peers use the same)
PACK_NODES = 4096  # nodes' samples gathered per block while loading


@dataclass
class Packed:
    """Ragged per-node samples in one tensor: node k's samples are x[offset[k] : offset[k] + count[k]]."""

    x: torch.Tensor
    y: torch.Tensor
    offset: np.ndarray
    count: np.ndarray

    @staticmethod
    def join(parts: list[Packed], features: int) -> Packed:
        """The nodes of `parts`, in order, as one Packed."""
        if len(parts) == 1:
            return parts[0]
        count = np.concatenate([p.count for p in parts])
        offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        return Packed(torch.cat([p.x for p in parts]).reshape(int(count.sum()), features),
                      torch.cat([p.y for p in parts]), offset, count)

    @staticmethod
    def of(parts: list[tuple[torch.Tensor, torch.Tensor]], features: int) -> Packed:
        count = np.array([len(y) for _, y in parts], dtype=np.int64)
        offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        x = torch.cat([x for x, _ in parts]) if parts else torch.zeros(0, features)
        y = torch.cat([y for _, y in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        return Packed(x.reshape(len(y), features).contiguous(), y.contiguous(), offset, count)


def node_data(dataset: str, options: dict, *, partition_: str, alpha: float, labels_per_shard: int, seed: int,
              nodes: np.ndarray, total: int, progress=None, loader=None, classes: int = 10,
              shift=None, holdout: float = HOLDOUT) -> tuple[Packed, Packed]:
    """(train, held-out) samples of the given node indices out of `total` nodes: exactly what
    the protocol engine's peer with that plan index loads, with each partition computed once.
    `loader(i, total)`: the scenario's own data loader (sim.user.loader) instead of `dataset`.
    `shift`: (sim.shift.Shift, seed), each node's samples as that gateway sees them.
    `holdout`: the fraction of each node's samples kept as its held-out set."""
    from . import shift as shifts

    if loader is not None:
        load = lambda i: loader(int(i), total)  # noqa: E731
    elif dataset == "digits":
        (x_pool, y_pool), _ = digits_pool_and_test()
        split = partition(y_pool, total, partition_, alpha=alpha, labels_per_shard=labels_per_shard, seed=seed)
        load = lambda i: (x_pool[split[i]], y_pool[split[i]])  # noqa: E731
    elif dataset == "fashion_mnist":
        opts = {**options, "partition_": partition_, "alpha": alpha, "labels_per_shard": labels_per_shard}
        load = lambda i: fashion_mnist(int(i), total, seed=seed, **opts)  # noqa: E731
    else:
        load = lambda i: synthetic(int(i), total, seed=seed, **options)  # noqa: E731
    train, held = [], []  # per node, packed PACK_NODES at a time (a million small tensors cost more than their data)
    packed: list[tuple[Packed, Packed]] = []
    features = FEATURES.get(dataset, 0)
    for k, i in enumerate(nodes):
        x, y = load(i)
        y = np.asarray(y)
        y = y.astype(np.int64) if y.dtype.kind in "biu" else y.astype(np.float32)  # classes, or regression targets
        x = np.asarray(x, dtype=np.float32).reshape(len(y), -1)
        features = x.shape[1]
        d = split_holdout(x, y, holdout, seed + 1000 + int(i), classes)
        if shift is not None:
            d = shifts.apply_local(shift[0], shift[1], int(i), d)
        train.append((d.x_train, d.y_train))
        held.append((d.x_eval, d.y_eval))  # possibly none: such a node is not scored on its own data
        if len(train) == PACK_NODES:
            packed.append((Packed.of(train, features), Packed.of(held, features)))
            train, held = [], []
        if progress is not None and (k + 1) % 256 == 0:
            progress(256)
    if progress is not None:
        progress(len(nodes) % 256)
    if train or not packed:
        packed.append((Packed.of(train, features), Packed.of(held, features)))
    return Packed.join([p for p, _ in packed], features), Packed.join([h for _, h in packed], features)
