"""Small helpers for py-libp2p streams and connections: bounded exact reads, resets and
closes that never raise (what an attacker left half-open may fail in many ways), and a
one-line reason for an exception."""

from __future__ import annotations

import logging

log = logging.getLogger("gossipfl.libp2p")


async def read_exactly(stream, n: int) -> bytearray:
    """Exactly n bytes, in one buffer of n bytes allocated when the first of them arrives
    (a size only declared reserves nothing). Each piece is copied in as it comes and
    dropped at once: a message costs its size once. Keeping the pieces and joining them
    cost it twice at the join and left a hole of its size in the heap each time: one
    receiver taking 2 rounds of 8 updates of 4 MB grew by 68 MB of RSS, 39 MB this way.
    The bytearray is handed on as it is (receivers take any bytes-like message)."""
    from libp2p.network.stream.exceptions import StreamEOF

    buf, got = bytearray(), 0
    while got < n:
        try:
            chunk = await stream.read(min(n - got, 1 << 20))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise EOFError(f"stream ended after {got} of {n} bytes")
        if len(chunk) > n - got:  # a slice assignment would grow the buffer, not fill it
            raise EOFError(f"a read returned {len(chunk)} bytes where {n - got} were asked")
        if not got:
            buf = bytearray(n)
        buf[got:got + len(chunk)] = chunk
        got += len(chunk)
    return buf


async def read_more(stream) -> bool:
    """After a declared message: True if the sender sent anything but the end of the stream."""
    from libp2p.network.stream.exceptions import StreamEOF

    try:
        return bool(await stream.read(1))
    except StreamEOF:
        return False


def remote_peer(stream) -> str | None:
    """The PeerId at the other end of a stream (proven by the secure channel), or None when the
    stream no longer says (a connection torn down under it)."""
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:
        return None


async def reset(stream) -> None:
    try:
        await stream.reset()
    except Exception as exc:  # a stream that is already broken needs no reset
        log.debug("stream reset failed: %s", why(exc))


async def close_quietly(thing) -> None:
    try:
        await thing.close()
    except Exception as exc:  # closing what an attacker left half-open may fail in many ways
        log.debug("closing %s failed: %s", type(thing).__name__, why(exc))


def why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, BaseExceptionGroup):
        text = "; ".join(why(e) for e in exc.exceptions)
    if "Address already in use" in text or "[Errno 98]" in text:
        return "address already in use (another process has this port)"
    return text.splitlines()[0][:200]


def peer_of(conn) -> str:
    try:
        return conn.peer_id.to_base58()
    except Exception:
        return "an unknown peer"
