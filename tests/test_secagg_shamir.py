"""Shamir sharing of 32-byte secrets (privacy.shamir): any t shares reconstruct, fewer say nothing."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy.shamir import (
    PRIME,
    SHARE_LEN,
    ShamirError,
    combine,
    combine_with,
    share_value,
    split,
)

secrets_ = st.binary(min_size=32, max_size=32)


def test_the_field_is_the_smallest_prime_above_2_to_the_256():
    assert PRIME > 1 << 256 and sympy.isprime(PRIME)
    assert not any(sympy.isprime((1 << 256) + k) for k in range(1, 297, 2))


@settings(max_examples=60, deadline=None)
@given(secret=secrets_, n=st.integers(1, 12), data=st.data())
def test_any_t_shares_reconstruct_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = list(range(1, n + 1))
    shares = split(secret, xs, t, random.Random(data.draw(st.integers(0, 2**32))).randbytes)
    assert all(len(s) == SHARE_LEN for s in shares)
    chosen = data.draw(st.lists(st.sampled_from(range(n)), min_size=t, max_size=n, unique=True))
    assert combine([(xs[i], shares[i]) for i in chosen], t) == secret


@settings(max_examples=60, deadline=None)
@given(secret=secrets_, n=st.integers(2, 12), data=st.data())
def test_fewer_than_t_shares_do_not_give_the_secret(secret, n, data):
    t = data.draw(st.integers(2, n))
    xs = list(range(1, n + 1))
    shares = split(secret, xs, t, os.urandom)
    chosen = data.draw(st.lists(st.sampled_from(range(n)), min_size=1, max_size=t - 1, unique=True))
    points = [(xs[i], shares[i]) for i in chosen]
    with pytest.raises(ShamirError, match="needed"):
        combine(points, t)
    try:  # interpolating them as if t were smaller does not give the secret
        assert combine(points, len(points)) != secret
    except ShamirError:
        pass  # an interpolated value above 2^256: not a secret at all


def test_one_share_of_a_pair_looks_the_same_whatever_the_secret():
    """t = 2: holder 1's share is s + a mod p with a uniform coefficient a, so its bytes are
    uniform for any secret s (the chi-square test sees the secret's bytes at once otherwise)."""
    for secret in (bytes(32), bytes([0xFF]) * 32):
        low = [split(secret, [1, 2], 2)[0][-1] for _ in range(4000)]
        assert stats.chisquare(np.bincount(low, minlength=256)).pvalue > 1e-3
    assert stats.chisquare(np.bincount([secret[-1]] * 4000, minlength=256)).pvalue < 1e-100


def test_a_changed_share_changes_the_secret():
    secret = bytes(range(32))
    shares = split(secret, [1, 2, 3], 3)
    bad = (share_value(shares[1]) + 1).to_bytes(SHARE_LEN, "big")
    try:
        assert combine([(1, shares[0]), (2, bad), (3, shares[2])], 3) != secret
    except ShamirError:
        pass  # or not a 32-byte secret at all


def test_shamir_refuses_bad_input():
    secret = bytes(32)
    for xs in ([0, 1], [1, 1], [1, PRIME], [True, 2]):
        with pytest.raises(ShamirError):
            split(secret, xs, 2)
    for t in (0, 3, True):
        with pytest.raises(ShamirError):
            split(secret, [1, 2], t)
    with pytest.raises(ShamirError):
        split(bytes(31), [1, 2], 2)
    with pytest.raises(ShamirError, match="random source"):
        split(secret, [1, 2], 2, lambda k: bytes(k - 1))
    for share in (bytes(32), PRIME.to_bytes(SHARE_LEN, "big")):
        with pytest.raises(ShamirError):
            share_value(share)
    with pytest.raises(ShamirError, match="interpolate"):
        combine_with([1], [((1 << 256) + 5).to_bytes(SHARE_LEN, "big")])


def test_the_random_source_decides_the_shares():
    secret = bytes(range(32))
    a = split(secret, [1, 2, 3], 2, random.Random(1).randbytes)
    assert a == split(secret, [1, 2, 3], 2, random.Random(1).randbytes)
    assert a != split(secret, [1, 2, 3], 2, random.Random(2).randbytes)
    assert split(secret, [1, 2, 3], 1) == [int.from_bytes(secret, "big").to_bytes(SHARE_LEN, "big")] * 3
