"""A strict cursor over msgpack bytes that reads only canonical encodings of the types the wire
format uses: the shortest header for ints, str, bin, arrays and maps, and float64 for floats
(exactly what msgpack-python's `packb(..., use_bin_type=True)` writes).

A value of the wrong type, out of its bounds, or cut short is `Malformed`; an allowed value
written with a wider header or a sibling type (str for bin, float32 for float64, a signed int
for a non-negative one) is `NonCanonical`. Each read costs O(its own bytes): a declared
length is checked against its bound and against the buffer before anything is read, and
nothing walks nested containers.
"""

from __future__ import annotations

import builtins  # the Cursor's methods `int` and `str` (named after what they read) shadow the types
import math
import struct


class Malformed(ValueError):
    """Not the expected value: wrong type, out of bounds, truncated, trailing bytes."""

    offset: int | None = None  # bytes read when parsing stopped (set by the parser that raises)


class NonCanonical(ValueError):
    """An acceptable value in a byte string other than its one canonical encoding."""

    offset: int | None = None


_FIXSTR, _STR8, _STR16, _STR32 = 0xA0, 0xD9, 0xDA, 0xDB
_BIN8, _BIN16, _BIN32 = 0xC4, 0xC5, 0xC6
_FLOAT32, _FLOAT64 = 0xCA, 0xCB
_UINT8, _INT8 = 0xCC, 0xD0
_ARRAY16, _ARRAY32, _MAP16, _MAP32 = 0xDC, 0xDD, 0xDE, 0xDF
# the smallest count a 1-, 2- or 4-byte length may carry: anything less fits a shorter header
_STR_MIN = {1: 32, 2: 1 << 8, 4: 1 << 16}
_BIN_MIN = {1: 0, 2: 1 << 8, 4: 1 << 16}
_CONTAINER_MIN = {2: 16, 4: 1 << 16}
_UINT_MIN = {1: 1 << 7, 2: 1 << 8, 4: 1 << 16, 8: 1 << 32}  # uint8..uint64
_INT_MAX = {1: -33, 2: -(1 << 7) - 1, 4: -(1 << 15) - 1, 8: -(1 << 31) - 1}  # int8..int64, negatives


def is_int_type(b: int) -> bool:
    return b <= 0x7F or b >= 0xE0 or 0xCC <= b <= 0xD3


def is_str_type(b: int) -> bool:
    return 0xA0 <= b <= 0xBF or b in (_STR8, _STR16, _STR32)


def is_bin_type(b: int) -> bool:
    return b in (_BIN8, _BIN16, _BIN32)


class Cursor:
    """Reads values one after the other from `buf` (a byte memoryview); slices stay views."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int = 0):
        self.buf, self.pos = buf, pos

    def at_end(self) -> bool:
        return self.pos == len(self.buf)

    def peek(self) -> int:
        if self.pos >= len(self.buf):
            raise Malformed("truncated")
        return self.buf[self.pos]

    def _byte(self) -> int:
        b = self.peek()
        self.pos += 1
        return b

    def _take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise Malformed(f"{what}: truncated ({n} bytes declared, {len(self.buf) - self.pos} left)")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def _length(self, width: int, what: str) -> int:
        return int.from_bytes(self._take(width, what), "big")

    def literal(self, expected: bytes) -> bool:
        """Consume `expected` if the next bytes are exactly it."""
        end = self.pos + len(expected)
        if self.buf[self.pos : end] != expected:
            return False
        self.pos = end
        return True

    def int(self, what: str) -> int:
        b = self._byte()
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if _UINT8 <= b <= _UINT8 + 3:
            width = 1 << (b - _UINT8)
            v = self._length(width, what)
            if v < _UINT_MIN[width]:
                raise NonCanonical(f"{what}: {v} written with a {width}-byte integer header")
            return v
        if _INT8 <= b <= _INT8 + 3:
            width = 1 << (b - _INT8)
            v = int.from_bytes(self._take(width, what), "big", signed=True)
            if v > _INT_MAX[width]:
                raise NonCanonical(f"{what}: {v} written with a {width}-byte signed integer header")
            return v
        raise Malformed(f"{what} must be an integer (type byte 0x{b:02x})")

    def uint(self, what: str) -> builtins.int:
        v = self.int(what)
        if v < 0:
            raise Malformed(f"{what} must be >= 0, got {v}")
        return v

    def float64(self, what: str) -> float:
        b = self._byte()
        if b == _FLOAT32:
            raise NonCanonical(f"{what} must be a float64, not a float32")
        if b != _FLOAT64:
            raise Malformed(f"{what} must be a float64 (type byte 0x{b:02x})")
        (v,) = struct.unpack(">d", self._take(8, what))
        if not math.isfinite(v):
            raise Malformed(f"{what} must be finite")
        return v

    def _str_length(self, b: builtins.int, what: str) -> builtins.int:
        if b <= 0xBF:
            return b & 0x1F
        width = 1 << (b - _STR8)
        n = self._length(width, what)
        if n < _STR_MIN[width]:
            raise NonCanonical(f"{what}: a {n}-byte string with a {width}-byte length")
        return n

    def str(self, what: str, max_len: builtins.int) -> str:
        """A UTF-8 string of at most `max_len` bytes."""
        buf, pos = self.buf, self.pos
        if pos + 2 <= len(buf):  # fast path: a fixstr, or a str8 of 32 to 255 bytes (PeerIds)
            b = buf[pos]
            n, start = (b & 0x1F, pos + 1) if 0xA0 <= b <= 0xBF else (buf[pos + 1], pos + 2) if b == _STR8 else (-1, 0)
            if (b != _STR8 or n >= 32) and 0 <= n <= max_len and start + n <= len(buf):
                try:
                    value = str(buf[start : start + n], "utf-8")
                except UnicodeDecodeError:
                    raise Malformed(f"{what} is not UTF-8") from None
                self.pos = start + n
                return value
        b = self._byte()
        if is_bin_type(b):
            raise NonCanonical(f"{what} must be a str, not bin")
        if not is_str_type(b):
            raise Malformed(f"{what} must be a string (type byte 0x{b:02x})")
        n = self._str_length(b, what)
        if n > max_len:
            raise Malformed(f"{what} has {n} bytes, at most {max_len} allowed")
        try:
            return str(self._take(n, what), "utf-8")
        except UnicodeDecodeError:
            raise Malformed(f"{what} is not UTF-8") from None

    def bin(self, what: builtins.str, size: builtins.int) -> memoryview:
        """Exactly `size` bytes written as bin (a view, not a copy)."""
        buf, pos = self.buf, self.pos
        end = pos + 2 + size
        if size <= 0xFF and end <= len(buf) and buf[pos] == _BIN8 and buf[pos + 1] == size:  # the canonical form
            self.pos = end
            return buf[pos + 2 : end]
        b = self._byte()
        if is_str_type(b):
            raise NonCanonical(f"{what} must be bin, not str")
        if not is_bin_type(b):
            raise Malformed(f"{what} must be bin (type byte 0x{b:02x})")
        width = 1 << (b - _BIN8)
        n = self._length(width, what)
        if n < _BIN_MIN[width]:
            raise NonCanonical(f"{what}: {n} bytes with a {width}-byte length")
        if n != size:
            raise Malformed(f"{what} has {n} bytes, {size} expected")
        return self._take(n, what)

    def array_header(self, what: builtins.str, max_len: builtins.int) -> builtins.int:
        b = self._byte()
        if 0x90 <= b <= 0x9F:
            n = b & 0x0F
        elif b in (_ARRAY16, _ARRAY32):
            width = 2 if b == _ARRAY16 else 4
            n = self._length(width, what)
            if n < _CONTAINER_MIN[width]:
                raise NonCanonical(f"{what}: {n} items with a {width}-byte length")
        else:
            raise Malformed(f"{what} must be an array (type byte 0x{b:02x})")
        if n > max_len:
            raise Malformed(f"{what} has {n} items, at most {max_len} allowed")
        return n

    def map_header(self, what: builtins.str) -> tuple[builtins.int, bool]:
        """(number of pairs, whether the header is the shortest one for that number)."""
        b = self._byte()
        if 0x80 <= b <= 0x8F:
            return b & 0x0F, True
        if b in (_MAP16, _MAP32):
            width = 2 if b == _MAP16 else 4
            n = self._length(width, what)
            return n, n >= _CONTAINER_MIN[width]
        raise Malformed(f"{what} must be a map (type byte 0x{b:02x})")

    def short_str(self, max_len: builtins.int = 16) -> builtins.str | None:
        """A string of at most `max_len` bytes in any str encoding, or None (for messages
        about an unexpected key; never raises but on truncation)."""
        b = self.peek()
        if not is_str_type(b):
            return None
        start = self.pos
        self.pos += 1
        width = 0 if b <= 0xBF else 1 << (b - _STR8)
        n = b & 0x1F if b <= 0xBF else self._length(width, "key")
        if n > max_len:
            self.pos = start
            return None
        try:
            return str(self._take(n, "key"), "utf-8")
        except UnicodeDecodeError:
            return None
