"""Compressed updates: compressors on rows of a stacked tensor and the signed sparse codec.

A `Compression` names what a node keeps of a vector of n values: top-k (the k largest
magnitudes) or random-k (k coordinates drawn from a seed), k given as a fraction of n or a
count, the kept values in raw-f32, f16 or int8. `compress_rows` applies it to (B, n) rows at
once and returns what a receiver reconstructs (the quantized values on their coordinates),
so a sender's view of what it sent is bit-exact with the receiver's.

On the wire (an envelope with codec sparse-f32 | sparse-f16 | sparse-int8, gossip.codecs):
the header's `n` is k, the count of kept entries, fixed by the model's size and the settings
(`Compression.k`), so a message's size is exact before a byte of it is read (`message_size`).
The payload is k little-endian uint32 indices, strictly increasing and below the model's
size, then the k values in the values' codec. `open_sparse` checks, cheapest first: the entry
count, the payload size, the indices (order, uniqueness, range), the values (finite, no
negative zero, int8 blocks whose largest code is +-127 or all zero with a zero scale): one
update has exactly one byte string, and everything else is refused with a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .codecs import INT8_BLOCK, SPARSE_CODECS, Bytes, encode, encoded_size
from .envelope import max_message_size
from .errors import CodecError
from .lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")

COMPRESSORS = ("topk", "randk")
VALUE_CODECS = {"f32": "sparse-f32", "f16": "sparse-f16", "int8": "sparse-int8"}


@dataclass(frozen=True)
class Compression:
    """What a compressed update keeps: `fraction` of n or `count` values (one of them)."""

    compressor: str = "topk"
    fraction: float | None = 0.01
    count: int | None = None
    values: str = "f32"

    def __post_init__(self) -> None:
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {', '.join(COMPRESSORS)}, got {self.compressor!r:.40}")
        if self.values not in VALUE_CODECS:
            raise ValueError(f"values must be one of {', '.join(VALUE_CODECS)}, got {self.values!r:.40}")
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of fraction and count")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")

    @property
    def codec(self) -> str:
        return VALUE_CODECS[self.values]

    def k(self, n: int) -> int:
        """Entries kept of n values: the count, or ceil(fraction * n); at least 1, at most n."""
        if self.count is not None:
            want = self.count
        else:
            assert self.fraction is not None  # one of the two, checked on construction
            want = math.ceil(self.fraction * n)
        return max(0, min(n, max(1, want)))

    def payload_size(self, n: int) -> int:
        return encoded_size(self.codec, self.k(n))

    def message_size(self, n: int) -> int:
        """The largest valid message of this compression for a model of n values."""
        return max_message_size(self.codec, self.k(n))


# --- compressors on rows --------------------------------------------------------------------


def select(x: torch.Tensor, comp: Compression, seeds: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices (B, k) that `comp` keeps of each row of x (B, n). Random-k draws row b's
    coordinates from `seeds[b]` (an int64 per row; the same seed, the same coordinates)."""
    b, n = x.shape
    k = comp.k(n)
    if comp.compressor == "topk":
        idx = torch.topk(x.abs(), k, dim=1, sorted=False).indices
    else:
        if seeds is None:
            raise ValueError("random-k needs a seed per row")
        idx = torch.topk(torch.from_numpy(_keys(np.asarray(seeds, dtype=np.int64), n)), k, dim=1,
                         sorted=False).indices
    return torch.sort(idx, dim=1).values


def _keys(seeds: np.ndarray, n: int) -> np.ndarray:
    """(B, n) pseudo-random int64 keys, splitmix64 of (seed, coordinate): random-k's draw."""
    with np.errstate(over="ignore"):
        z = seeds.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.arange(n, dtype=np.uint64)[None, :]
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(1)).astype(np.int64)


def quantize_rows(values: torch.Tensor, codec: str) -> torch.Tensor:
    """What the receiver decodes of each row of `values` (B, k) in the values' codec."""
    if codec == "sparse-f32":
        return values.to(torch.float32)
    if codec == "sparse-f16":
        return values.to(torch.float16).to(torch.float32)
    b, k = values.shape
    nb = max(1, -(-k // INT8_BLOCK))
    blocks = torch.nn.functional.pad(values, (0, nb * INT8_BLOCK - k)).view(b, nb, INT8_BLOCK)
    scales = (blocks.abs().amax(dim=2, keepdim=True) / 127.0).to(torch.float32)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.clamp(torch.round(blocks / safe), -127, 127)
    return (codes * scales).view(b, -1)[:, :k]


def compress_rows(x: torch.Tensor, comp: Compression,
                  seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, k), values (B, k)) a receiver reconstructs of rows x (B, n)."""
    idx = select(x, comp, seeds)
    return idx, quantize_rows(torch.gather(x, 1, idx), comp.codec)


def densify(idx: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """The (B, n) rows that are `values` on `idx` and zero elsewhere."""
    out = torch.zeros(idx.shape[0], n, dtype=values.dtype)
    return out.scatter_(1, idx, values)


# --- the codec --------------------------------------------------------------------------------


def encode_sparse(idx: torch.Tensor, values: torch.Tensor, codec: str) -> bytes:
    """The payload of one update: sorted unique indices (k,) then the values (k,) in `codec`."""
    ix = np.asarray(idx.detach().cpu().numpy(), dtype=np.int64).reshape(-1)
    if ix.size and (np.any(np.diff(ix) <= 0) or ix[0] < 0 or ix[-1] >= 1 << 32):
        raise CodecError("sparse indices must be strictly increasing uint32 values")
    vals = values.detach().reshape(-1).to(torch.float32) + 0.0  # + 0.0: no negative zero
    if vals.numel() != ix.size:
        raise CodecError(f"{ix.size} indices for {vals.numel()} values")
    return ix.astype("<u4").tobytes() + bytes(encode(vals, SPARSE_CODECS[codec]))


@dataclass
class SparseUpdate:
    indices: torch.Tensor  # int64 (k,), strictly increasing
    values: torch.Tensor  # float32 (k,)

    def dense(self, n: int) -> torch.Tensor:
        return torch.zeros(n).index_put_((self.indices,), self.values)


class SparseRejected(CodecError):
    """A sparse payload that is not the one canonical encoding of an update: `reason` is a
    verify.Reason value (malformed, non_canonical, non_finite)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode_sparse(payload: Bytes, codec: str, k: int, n: int) -> SparseUpdate:
    """Open a sparse payload of k entries for a model of n values; SparseRejected otherwise."""
    if codec not in SPARSE_CODECS:
        raise SparseRejected("malformed", f"codec {codec!r:.20} is not sparse")
    expected = encoded_size(codec, k)
    if len(payload) != expected:
        raise SparseRejected("malformed", f"{codec} payload of {k} entries must have {expected} bytes, "
                                          f"got {len(payload)}")
    ix = np.frombuffer(payload, dtype="<u4", count=k).astype(np.int64)
    if k and (ix[-1] >= n or np.any(np.diff(ix) <= 0)):
        raise SparseRejected("non_canonical" if ix[-1] < n else "malformed",
                             "indices not strictly increasing" if ix[-1] < n else f"an index beyond {n} values")
    body = memoryview(payload)[4 * k:]
    vc = SPARSE_CODECS[codec]
    if vc == "int8":
        nb = -(-k // INT8_BLOCK)
        scales = np.frombuffer(body, dtype="<f4", count=nb)
        codes = np.frombuffer(body, dtype="i1", count=k, offset=4 * nb)
        if not np.all(np.isfinite(scales)):
            raise SparseRejected("non_finite", "an int8 scale is NaN or Inf")
        peak = np.abs(np.pad(codes.astype(np.int16), (0, nb * INT8_BLOCK - k))).reshape(nb, INT8_BLOCK).max(1) \
            if k else np.zeros(0)
        ok = np.where(scales > 0, peak == 127, (peak == 0) & (scales.view(np.uint32) == 0))
        if not np.all(ok):
            raise SparseRejected("non_canonical", "an int8 block whose scale is not its largest magnitude / 127")
        values = torch.from_numpy(codes.astype(np.float32) * np.repeat(scales, INT8_BLOCK)[:k])
    else:
        raw = np.frombuffer(body, dtype="<f4" if vc == "raw-f32" else "<f2", count=k)
        if not np.all(np.isfinite(raw)):
            raise SparseRejected("non_finite", "a value is NaN or Inf")
        if np.any((raw == 0) & np.signbit(raw)):
            raise SparseRejected("non_canonical", "a negative zero (zero is written +0)")
        values = torch.from_numpy(raw.astype(np.float32))
    return SparseUpdate(torch.from_numpy(ix), values)
