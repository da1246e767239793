"""Hard bounds on what one py-libp2p yamux connection may buffer, which py-libp2p lacks.

py-libp2p 0.8's yamux only logs "peer exceeded receive window" and keeps buffering, reads a
DATA frame of up to 16 MB into memory before looking at it, and lets a peer open any number
of streams. `guard(conn, ...)` bounds one connection in place, before its reader starts:

- a DATA frame longer than `per_stream` bytes is refused before its body is read;
- data beyond a stream's receive window (what the peer was allowed to send) is dropped;
- a stream may hold at most `per_stream` unread bytes, the connection at most `per_conn`;
- at most `max_streams` streams at once;
- with `max_window`, no stream's receive window grows past it. py-libp2p 0.8 grows a stream's
  window as it is read, up to 16 MB (go-yamux's auto-tuning): on a connection that carries
  relayed circuits (whole connections, not one bounded message per stream) the bytes a stream
  may hold unread would then be 16 MB, not a window. Update streams need no cap: `per_stream`
  bounds them.

Any violation calls `on_violation(conn, why)` once (the transport closes the connection) and
nothing more from that connection is buffered. It works by replacing the connection's
`stream_buffers` dict and `_read_data_body` method (instance attributes, so other
connections and other users of py-libp2p in the process are untouched).
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class YamuxViolation(trio.TooSlowError):
    """Raised from the frame reader: yamux treats it like a stalled frame and closes the connection."""


class _Buffers(dict):
    """yamux's stream id -> receive buffer map for one connection, with the bounds applied."""

    def __init__(self, conn, per_stream: int, per_conn: int, max_streams: int,
                 on_violation: Callable[[object, str], None], max_window: int | None = None):
        super().__init__()
        self.conn = conn
        self.per_stream, self.per_conn, self.max_streams = per_stream, per_conn, max_streams
        self.max_window = max_window
        self.on_violation = on_violation
        self.violated = False

    def violate(self, why: str) -> None:
        if not self.violated:
            self.violated = True
            self.on_violation(self.conn, why)

    def __setitem__(self, stream_id, value) -> None:
        if stream_id not in self and len(self) >= self.max_streams:
            self.violate(f"more than {self.max_streams} streams at once")
        stream = self.conn.streams.get(stream_id)
        if self.max_window is not None and stream is not None:  # yamux adds the stream first
            _cap_window(stream, self.max_window)
        super().__setitem__(stream_id, _Buffer(self, stream_id, value))

    def buffered(self) -> int:
        return sum(len(b) for b in self.values())


class _Buffer(bytearray):
    """One stream's receive buffer: `extend` refuses what the window or the bounds do not allow."""

    def __init__(self, owner: _Buffers, stream_id: int, initial=b""):
        super().__init__(initial)
        self.owner, self.stream_id = owner, stream_id

    def extend(self, data) -> None:
        owner = self.owner
        if owner.violated:
            return
        stream = owner.conn.streams.get(self.stream_id)
        window = stream.recv_window if stream is not None else 0
        n = len(data)
        if n > window:
            owner.violate(f"stream {self.stream_id} sent {n} bytes with a receive window of {window}")
        elif len(self) + n > owner.per_stream:
            owner.violate(f"stream {self.stream_id} would buffer more than {owner.per_stream} bytes")
        elif owner.buffered() + n > owner.per_conn:
            owner.violate(f"the connection would buffer more than {owner.per_conn} bytes")
        else:
            super().extend(data)


def _cap_window(stream, max_window: int) -> None:
    """The stream's receive window stays at most `max_window` (its auto-tuning is turned off)."""
    stream.target_recv_window = min(stream.target_recv_window, max_window)
    stream._apply_autotune_epoch = lambda buffered: 0


def guard(conn, *, per_stream: int, per_conn: int, max_streams: int,
          on_violation: Callable[[object, str], None], max_window: int | None = None) -> bool:
    """Bound `conn` (a py-libp2p Yamux not yet started). Returns False for other muxers."""
    from libp2p.stream_muxer.yamux.yamux import Yamux

    if not isinstance(conn, Yamux) or conn.event_started.is_set():
        return False
    buffers = _Buffers(conn, per_stream, per_conn, max_streams, on_violation, max_window)
    for sid, buf in conn.stream_buffers.items():
        buffers[sid] = buf
    conn.stream_buffers = buffers
    read_body = conn._read_data_body

    async def read_data_body(length: int) -> bytes:
        if length > per_stream:
            buffers.violate(f"a {length}-byte DATA frame (limit {per_stream})")
        if buffers.violated:
            raise YamuxViolation(f"closing the connection of {conn.peer_id}")
        return await read_body(length)

    # on this instance only, over the class's method: the point of the guard
    conn._read_data_body = read_data_body  # type: ignore[method-assign]
    return True
