"""Payload codecs: flat float32 parameters <-> little-endian bytes.

- raw-f32: the bytes of the tensor; decode is zero-copy (a view on the received buffer).
- f16:     half precision; half the bytes.
- int8:    symmetric int8 with one float32 scale per block of INT8_BLOCK values (the block's
           largest magnitude / 127; a scale per block, not per whole model, so one large layer
           does not flatten the rest); payload = scales then codes; a quarter of the bytes
           plus 1/1024.
- sparse-f32, sparse-f16, sparse-int8: a compressed update (gossip.sparse): `n` is the count
           of kept entries, not the model's size; n uint32 indices (strictly increasing) then the
           n kept values in raw-f32, f16 or int8. Opened by gossip.sparse, never by `decode`.
- u32:     n little-endian uint32 words, not model values: a masked contribution of secure
           aggregation (privacy.secagg); decode is a zero-copy uint32 view. A peer never
           encodes its model with it (the `round.codec` setting offers FLOAT_CODECS only).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from .errors import CodecError
from .lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")  # loaded by the first encode/decode

FLOAT_CODECS = ("raw-f32", "f16", "int8")  # encodings of a flat float model
WORD_CODECS = ("u32",)  # opaque words (masked contributions), sealed as they are
SPARSE_CODECS = {"sparse-f32": "raw-f32", "sparse-f16": "f16", "sparse-int8": "int8"}  # -> the kept values' codec
CODECS = FLOAT_CODECS + WORD_CODECS + tuple(SPARSE_CODECS)
INT8_BLOCK = 4096
Bytes = bytes | bytearray | memoryview


def _n_blocks(n: int) -> int:
    return (n + INT8_BLOCK - 1) // INT8_BLOCK


def encoded_size(codec: str, n: int) -> int:
    if codec in ("raw-f32", "u32"):
        return 4 * n
    if codec == "f16":
        return 2 * n
    if codec == "int8":
        return 4 * _n_blocks(n) + n
    if codec in SPARSE_CODECS:  # n entries: an index each, then the values
        return 4 * n + encoded_size(SPARSE_CODECS[codec], n)
    raise CodecError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def encode(flat: torch.Tensor, codec: str = "raw-f32") -> memoryview:
    """The bytes of a flat float tensor in `codec` (for raw-f32, a view: no copy)."""
    x = flat.detach().reshape(-1).to(torch.float32).contiguous()
    arr = x.numpy()
    if codec == "raw-f32":
        return arr.astype("<f4", copy=False).data.cast("B")
    if codec == "f16":
        return arr.astype("<f2").data.cast("B")
    if codec == "int8":
        n = arr.size
        pad = _n_blocks(n) * INT8_BLOCK - n
        blocks = np.pad(arr, (0, pad)).reshape(-1, INT8_BLOCK)
        scales = (np.abs(blocks).max(axis=1) / 127.0).astype("<f4")
        safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
        codes = np.clip(np.rint(blocks / safe[:, None]), -127, 127).astype(np.int8).reshape(-1)[:n]
        return memoryview(scales.tobytes() + codes.tobytes())
    if codec in SPARSE_CODECS:
        raise CodecError(f"{codec} carries a compressed update: gossip.sparse encodes it")
    if codec in WORD_CODECS:
        raise CodecError(f"{codec} carries masked words, not model values; choose one of {', '.join(FLOAT_CODECS)}")
    raise CodecError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def _view(buf: Bytes, dtype: str, offset: int, count: int) -> torch.Tensor:
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    with warnings.catch_warnings():  # read-only buffer: callers never write into the view
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def decode(payload: Bytes, codec: str, n: int) -> torch.Tensor:
    """Float32 tensor of n values from `payload`; raw-f32 returns a read-only view (no copy),
    u32 a read-only uint32 view (masked words, not values)."""
    expected = encoded_size(codec, n)
    if len(payload) != expected:
        raise CodecError(f"{codec} payload for {n} values must have {expected} bytes, got {len(payload)}")
    if codec in SPARSE_CODECS:
        raise CodecError(f"{codec} carries a compressed update: gossip.sparse opens it")
    if codec == "raw-f32":
        return _view(payload, "<f4", 0, n)
    if codec == "u32":
        return _view(payload, "<u4", 0, n)
    if codec == "f16":
        return _view(payload, "<f2", 0, n).to(torch.float32)
    nb = _n_blocks(n)
    scales = _view(payload, "<f4", 0, nb)
    codes = _view(payload, "i1", 4 * nb, n).to(torch.float32)
    return codes * scales.repeat_interleave(INT8_BLOCK)[:n]
