"""The update stream protocol: one update per stream, read in the sender's own slot.

Each update travels on a fresh stream of protocol /gossipfl/update/1.0.0 as an 8-byte
big-endian length, the message, and the end of the stream. The handler reads the whole
message and the end of the stream, and only then hands the bytes on (`deliver`); what
happens to them there (a full inbox drops) never stalls the stream.

Bounded by what is expected, per trusted sender (keyed by the PeerId Noise authenticated,
so the same for a direct, relayed or hole-punched connection):
- only `gate.may_send(PeerId)` may send (membership changes apply to open connections: a
  stream from a peer no longer allowed closes its connection; a relay may connect but never
  send an update);
- one stream read and one waiting (more are reset), each sender its own lock: no slot is
  shared between senders;
- a message of at most `max_size` bytes, read within `read_deadline` = READ_TIMEOUT_BASE +
  (max_size + 8) / MIN_RATE, fixed by max_size (never by the size a sender declares); a
  stream past the deadline is reset;
- a declared size over max_size or bytes after the declared message: the stream is reset and
  the connection closed;
- past MESSAGE_BURST messages at MESSAGE_RATE a second, the sender's connection is closed and
  refused for COOLDOWN s. A neighbour sends one update a round (plus the odd membership
  record): junk under a stolen key then costs the peer a burst, not a stream of decryptions.
MIN_RATE (1 MB/s) also holds over a relay: measured 4.7-7.8 MB/s each way relayed, loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .host import Counters, Gate
from .streams import close_quietly, read_exactly, read_more, remote_peer, reset, why

PROTOCOL = "/gossipfl/update/1.0.0"
LENGTH_BYTES = 8
STREAMS_PER_SENDER = 2  # one being read, one waiting its turn
READ_TIMEOUT_BASE = 5.0
MIN_RATE = 1 << 20  # bytes per second a neighbour's message must at least arrive at
MESSAGE_BURST, MESSAGE_RATE, COOLDOWN = 32, 16.0, 2.0

log = logging.getLogger("gossipfl.libp2p")


class ProtocolViolation(Exception):
    """A trusted sender broke the stream protocol: its stream is reset and its connection closed."""


@dataclass
class _Sender:
    """One trusted sender's read slot: one stream read at a time, one more waiting."""

    open: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)


class UpdateReceiver:
    """The stream handler of PROTOCOL (trio thread only). `deliver(sender, body)` is called on
    the trio thread with each whole message."""

    def __init__(self, gate: Gate, counters: Counters, max_size: int,
                 deliver: Callable[[str, bytearray], None], min_rate: float = MIN_RATE):
        self.gate, self.counters, self.max_size, self.deliver = gate, counters, max_size, deliver
        self.min_rate = min_rate  # bytes/s: the slowest link a whole message must cross in time
        self._senders: dict[str, _Sender] = {}
        self._budget: dict[str, tuple[float, float]] = {}  # sender -> (tokens, at)

    @property
    def read_deadline(self) -> float:
        """Seconds a whole message may take: fixed by max_size, not by what a sender declares."""
        return read_deadline(self.max_size, self.min_rate)

    async def handle(self, stream) -> None:
        """Read one whole length-prefixed message in the sender's own slot, then deliver it."""
        sender = remote_peer(stream)
        if sender is None:
            await reset(stream)
            return
        if not self.gate.may_send(sender):  # no longer trusted since it connected, or a relay
            self.counters.refused_peers += 1
            await reset(stream)
            await close_quietly(stream.muxed_conn)
            return
        if not self._spend(sender):
            self.counters.violations += 1
            self.gate.cool(sender, COOLDOWN)
            log.warning("closing the connection of %s for %.0fs: more than %d messages at %.0f/s",
                        sender, COOLDOWN, MESSAGE_BURST, MESSAGE_RATE)
            await reset(stream)
            await close_quietly(stream.muxed_conn)
            return
        slot = self._senders.setdefault(sender, _Sender())
        if slot.open >= STREAMS_PER_SENDER:
            self.counters.refused_streams += 1
            log.debug("resetting a stream from %s: %d already open", sender, STREAMS_PER_SENDER)
            await reset(stream)
            return
        slot.open += 1
        try:
            async with slot.lock:
                body = await self._read_message(stream, sender)
        finally:
            slot.open -= 1
            if not slot.open:
                del self._senders[sender]
        if body is not None:
            self.deliver(sender, body)

    def _spend(self, sender: str) -> bool:
        """Take one message from the sender's token bucket; False when it is empty."""
        now = time.monotonic()
        tokens, at = self._budget.get(sender, (float(MESSAGE_BURST), now))
        tokens = min(float(MESSAGE_BURST), tokens + (now - at) * MESSAGE_RATE)
        if tokens < 1.0:
            return False
        self._budget[sender] = (tokens - 1.0, now)
        return True

    async def _read_message(self, stream, sender: str) -> bytearray | None:
        try:
            with trio.move_on_after(self.read_deadline) as deadline:
                head = await read_exactly(stream, LENGTH_BYTES)
                size = int.from_bytes(head, "big")
                if size > self.max_size:
                    raise ProtocolViolation(f"declared a {size}-byte message (limit {self.max_size})")
                body = await read_exactly(stream, size)
                if await read_more(stream):
                    raise ProtocolViolation(f"sent more than the {size} bytes it declared")
            if deadline.cancelled_caught:
                self.counters.timeouts += 1
                log.info("resetting a stream from %s: no whole message within %.1fs", sender, self.read_deadline)
                await reset(stream)
                return None
            await close_quietly(stream)
            return body
        except ProtocolViolation as exc:
            self.counters.violations += 1
            log.warning("closing the connection of %s: %s", sender, exc)
            await reset(stream)
            await close_quietly(stream.muxed_conn)
            return None
        except Exception as exc:  # a broken stream from one peer must not hurt the host
            log.debug("stream from %s failed: %s", sender, why(exc))
            await reset(stream)
            return None


def read_deadline(max_size: int, min_rate: float = MIN_RATE) -> float:
    """Seconds the largest valid message may take at `min_rate` bytes/s (the default, or a
    gateway's `transport.min_link_kbps` for neighbours on narrow links)."""
    return READ_TIMEOUT_BASE + (max_size + LENGTH_BYTES) / min_rate


async def write_update(stream, data) -> None:
    """One update on an open stream: the length, the message (written apart: no copy), the end."""
    try:
        await stream.write(len(data).to_bytes(LENGTH_BYTES, "big"))
        await stream.write(data)
        await stream.close()
    except BaseException:
        await reset(stream)
        raise
