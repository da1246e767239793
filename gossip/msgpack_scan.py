"""A bounded scanner for the top level of a msgpack map, so the payload can be sliced
out of the received buffer (zero-copy) while every other field is decoded by msgpack.

Only the types an envelope uses are accepted: nil, bool, ints, floats, str, bin and
arrays/maps nested at most MAX_DEPTH deep; anything else (ext types, the reserved
0xc1 byte, truncated input, trailing bytes) is an error.
"""

from __future__ import annotations

MAX_DEPTH = 3


class ScanError(ValueError):
    pass


def _length(buf, i: int, size: int) -> int:
    if i + size > len(buf):
        raise ScanError("truncated")
    return int.from_bytes(buf[i : i + size], "big")


_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,
          0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin8/16/32, str8/16/32
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # (len bytes, values per item)


def skip(buf, i: int, depth: int = 0, max_items: int = 1024) -> int:
    """Index just past the msgpack value that starts at `i`."""
    if i >= len(buf):
        raise ScanError("truncated")
    b = buf[i]
    if b <= 0x7F or b >= 0xE0:  # fixints
        return i + 1
    if 0xA0 <= b <= 0xBF:  # fixstr
        end = i + 1 + (b & 0x1F)
    elif b in _FIXED:
        end = i + _FIXED[b]
    elif b in _SIZED:
        size = _SIZED[b]
        end = i + 1 + size + _length(buf, i + 1, size)
    elif 0x80 <= b <= 0x9F or b in _CONTAINER:
        if depth >= MAX_DEPTH:
            raise ScanError("nested too deep")
        if b <= 0x8F:
            count, j = 2 * (b & 0x0F), i + 1
        elif b <= 0x9F:
            count, j = b & 0x0F, i + 1
        else:
            size, per = _CONTAINER[b]
            count, j = per * _length(buf, i + 1, size), i + 1 + size
        if count > 2 * max_items:
            raise ScanError("container too large")
        for _ in range(count):
            j = skip(buf, j, depth + 1, max_items)
        end = j
    else:
        raise ScanError(f"type byte 0x{b:02x} is not allowed")
    if end > len(buf):
        raise ScanError("truncated")
    return end


def bin_body(buf, i: int) -> tuple[int, int] | None:
    """(start, end) of the bytes of a bin value at `i`, or None if it is not bin."""
    b = buf[i]
    if b not in (0xC4, 0xC5, 0xC6):
        return None
    size = _SIZED[b]
    start = i + 1 + size
    return start, start + _length(buf, i + 1, size)


def map_items(buf, max_pairs: int):
    """Yield (key_start, key_end, value_start, value_end) of the top-level map's pairs."""
    if not buf:
        raise ScanError("empty")
    b = buf[0]
    if 0x80 <= b <= 0x8F:
        count, i = b & 0x0F, 1
    elif b == 0xDE:
        count, i = _length(buf, 1, 2), 3
    elif b == 0xDF:
        count, i = _length(buf, 1, 4), 5
    else:
        raise ScanError("not a map")
    if count > max_pairs:
        raise ScanError(f"map has {count} entries")
    for _ in range(count):
        k_end = skip(buf, i, 1)
        v_end = skip(buf, k_end, 1)
        yield i, k_end, k_end, v_end
        i = v_end
    if i != len(buf):
        raise ScanError("trailing bytes after the envelope")
