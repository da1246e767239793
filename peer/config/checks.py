"""Checks of single config values, shared by peer.config.parse and the transport declarations
(peer.transports): each returns None when the value is fine, else what is wrong ("must be
..."), which the parser prefixes with the field's name."""

from __future__ import annotations

MAX_SECONDS = 30 * 86400.0  # round deadlines and pacing intervals: at most 30 days
MAX_SEED = 2**32 - 1
MAX_MESSAGE_MB = 4096.0


def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def between(low, high):
    def check(v):
        return None if low <= v <= high else f"must be in {low}..{high}"
    return check


def fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def seconds(positive: bool):
    def check(v):
        if positive and v <= 0:
            return "must be > 0 seconds"
        return None if 0 <= v <= MAX_SECONDS else f"must be in 0..{MAX_SECONDS:g} seconds"
    return check


def message_mb(v):
    return None if 0 < v <= MAX_MESSAGE_MB else f"must be > 0 and at most {MAX_MESSAGE_MB:g} (MB)"


def tcp_port(v):
    return None if 0 < v < 65536 else "must be a TCP port"


def host_name(v):
    return None if v and v.isprintable() else "must be a host name or address"


def multiaddr(v):
    return None if v.startswith("/") and v.isprintable() else "must be a multiaddr like /ip4/10.0.0.2/tcp/4001"


SEED = (int, {"check": between(0, MAX_SEED)})
