"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

A secret s (32 bytes, read big-endian: an integer below 2^256, so below the prime) is the
constant term of a random polynomial f of degree t - 1; holder x gets f(x). Any t shares give
f(0) = s by Lagrange interpolation; t - 1 or fewer are consistent with every secret (for each
candidate secret exactly one polynomial passes through them), so they tell nothing about it.
Shares are 33 bytes (field elements, big-endian). Holders' x are small distinct positive ints
(secure aggregation uses 1 + a member's position in its sorted group).

Written here rather than taken from a library: pycryptodome's Shamir splits 16-byte secrets
over GF(2^128) with its own random source, and nothing else on PyPI is a maintained
implementation. The randomness is injectable (`random(n) -> n bytes`, os.urandom by default) so
that simulations and tests can be reproducible; coefficients are drawn as 48 random bytes
reduced modulo the prime (a distance to uniform below 2^-128). Plain Python integers: sharing
costs t multiplications per holder and secret, which for a group of a few hundred is
milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

PRIME = (1 << 256) + 297  # the smallest prime above 2^256
SECRET_LEN = 32
SHARE_LEN = 33
_DRAW = 48  # random bytes per coefficient


class ShamirError(ValueError):
    """Shares that cannot give a secret: too few, duplicate or invalid holders, values out of the
    field, or an interpolated value that is not a 32-byte secret (the shares were not all made
    from one polynomial)."""


def _check_xs(xs: Sequence[int]) -> list[int]:
    out = [int(x) for x in xs]
    if any(isinstance(x, bool) or not 0 < x < PRIME for x in xs):
        raise ShamirError("holders' x must be integers in [1, PRIME)")
    if len(set(out)) != len(out):
        raise ShamirError("two shares for the same holder")
    return out


def split(secret: bytes, xs: Sequence[int], threshold: int,
          random: Callable[[int], bytes] = os.urandom) -> list[bytes]:
    """The shares of `secret` for holders `xs` (one 33-byte share each, in the order of xs),
    any `threshold` of which recover it."""
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_LEN:
        raise ShamirError(f"a secret has {SECRET_LEN} bytes")
    xs = _check_xs(xs)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold must be in [1, {len(xs)}] (the number of holders), got {threshold!r}")
    coeffs = [int.from_bytes(secret, "big")]
    for _ in range(threshold - 1):
        draw = random(_DRAW)
        if len(draw) != _DRAW:
            raise ShamirError(f"the random source gave {len(draw)} bytes, {_DRAW} asked")
        coeffs.append(int.from_bytes(draw, "big") % PRIME)
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(SHARE_LEN, "big"))
    return shares


def share_value(share: bytes) -> int:
    """A share's field element; ShamirError if it is not one."""
    if not isinstance(share, bytes | bytearray) or len(share) != SHARE_LEN:
        raise ShamirError(f"a share has {SHARE_LEN} bytes")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise ShamirError("a share is not below the prime")
    return y


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """The coefficients l_i with f(0) = sum l_i f(x_i) for every f of degree < len(xs): computed
    once for a set of holders, then each secret costs len(xs) multiplications."""
    xs = _check_xs(xs)
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return out


def combine_with(coefficients: Sequence[int], shares: Sequence[bytes]) -> bytes:
    """The secret from shares of the holders whose `lagrange_at_zero` coefficients are given (same
    order); ShamirError if the result is not a 32-byte secret."""
    if len(coefficients) != len(shares):
        raise ShamirError("one share per coefficient")
    s = sum(c * share_value(y) for c, y in zip(coefficients, shares, strict=True)) % PRIME
    if s >= 1 << (8 * SECRET_LEN):
        raise ShamirError("the shares do not interpolate to a 32-byte secret")
    return s.to_bytes(SECRET_LEN, "big")


def combine(points: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
    """The secret from at least `threshold` (x, share) points (the first `threshold` are used)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ShamirError(f"threshold must be a positive integer, got {threshold!r}")
    if len(points) < threshold:
        raise ShamirError(f"{len(points)} shares, {threshold} needed")
    used = list(points)[:threshold]
    return combine_with(lagrange_at_zero([x for x, _ in used]), [y for _, y in used])
