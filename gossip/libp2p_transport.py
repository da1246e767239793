"""The libp2p transport: TCP + Noise + yamux via py-libp2p, one direct stream per update.

Each update travels on a fresh stream of protocol /gossipfl/update/1.0.0 as an 8-byte
big-endian length, the message, and the end of the stream. The handler reads the whole
message and the end of the stream, and only then hands the bytes to asyncio; a full inbox
drops the message, it never stalls the stream. The host key is the peer's own Ed25519 key,
so the PeerId that libp2p authenticates (Noise, the only security protocol offered: py-libp2p
would otherwise also accept /plaintext/2.0.0, where anyone can claim any PeerId) is the
PeerId that signs the updates.

Only the trusted talk. `allowed` (a set of PeerIds, or a callable PeerId -> bool, read at
each check; default: the neighbours) is checked right after the Noise handshake of every
inbound connection: a stranger's connection is closed before the muxer is negotiated, so it
never has a stream, a read slot or a connection slot. Streams are checked again (membership
changes), and a stream from a peer no longer allowed closes its connection.

Bounded by what is expected, per trusted sender:
- one stream read and one waiting (more are reset), each sender its own lock: no slot is
  shared between senders;
- a message of at most `max_size` bytes, read within `read_deadline` = READ_TIMEOUT_BASE +
  (max_size + 8) / MIN_RATE, fixed by max_size (never by the size a sender declares); a
  stream past the deadline is reset;
- a declared size over max_size, bytes after the declared message, data beyond the yamux
  receive window, a DATA frame over the stream bound, or more than STREAMS_PER_CONNECTION
  streams: the stream is reset and the connection closed (gossip/yamux_guard.py).

Memory held for unverified input, hard bounds (M = max_size + 8, W = 256 KB, yamux's
initial window): per connection, yamux buffers at most B = M + STREAM_SLACK per stream and
B + (STREAMS_PER_CONNECTION - 1) * W in all; per sender, at most CONNECTIONS_PER_PEER
connections plus the message being read (M, one buffer), so at most
3 * (M + 64 KB + 7 * 256 KB) + M (about 5.7 MB + 4 M; 6 MB for a 10 KB model). In total:
that times the number of trusted neighbours, plus HANDSHAKE_SLOTS handshakes in progress
(each a few KB of Noise messages, at most 64 KB each).

Connections: at most HANDSHAKE_SLOTS inbound handshakes run at once, each within
HANDSHAKE_TIMEOUT; when all slots are taken, the oldest handshake is dropped for the new
one, so a flood of fresh identities or stalled TCP connections cannot keep a neighbour out
(it would have to open HANDSHAKE_SLOTS connections within one honest handshake, a few ms).
A connection occupies nothing after it closes: py-libp2p's own inbound path holds a slot
of a 250-slot limiter for the life of the swarm, even after the connection closed, so a
host refused every inbound connection after 250 of them; this transport does not use that
path. An inbound connection from a neighbour clears the dial backoff towards it, and
py-libp2p's 60 s "negative cache" of failed peers is bypassed (the backoff here replaces it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import multiaddr
import trio

from .errors import TransportError
from .identity import Identity
from .transport import QueuedTransport
from .trio_bridge import TrioBridge
from .yamux_guard import guard as guard_yamux

PROTOCOL = "/gossipfl/update/1.0.0"
LENGTH_BYTES = 8
DIAL_TIMEOUT = 10.0
SEND_TIMEOUT = 120.0
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
STREAMS_PER_SENDER = 2  # one being read, one waiting its turn
STREAMS_PER_CONNECTION = 8  # our update streams, identify, ping, ours outbound
CONNECTIONS_PER_PEER = 3
STREAM_SLACK = 64 * 1024  # protocol negotiation and one yamux frame on top of a message
READ_TIMEOUT_BASE = 5.0
MIN_RATE = 1 << 20  # bytes per second a neighbour's message must at least arrive at
HANDSHAKE_SLOTS = 64
# A neighbour sends one update a round (plus the odd membership record): past MESSAGE_BURST
# messages at MESSAGE_RATE a second, its connection is closed and refused for COOLDOWN s. Junk
# under a stolen key then costs the peer a burst, not a stream of decryptions (bench/hostile).
MESSAGE_BURST, MESSAGE_RATE, COOLDOWN = 32, 16.0, 2.0
HANDSHAKE_TIMEOUT = 5.0
YAMUX_WINDOW = 256 * 1024

log = logging.getLogger("gossipfl.libp2p")

Allowed = Collection[str] | Callable[[str], bool]


class DialFailed(Exception):
    """The neighbour could not be reached (backoff applies), as opposed to one stream failing."""


class ProtocolViolation(Exception):
    """A trusted sender broke the stream protocol: its stream is reset and its connection closed."""


@dataclass
class _Sender:
    """One trusted sender's read slot: one stream read at a time, one more waiting."""

    open: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass
class Counters:
    refused_peers: int = 0  # connections closed after the handshake: not allowed
    refused_streams: int = 0  # streams reset: the sender had two open
    dropped_handshakes: int = 0  # oldest handshake dropped for a new one (slots full)
    timeouts: int = 0  # streams reset at the read deadline
    violations: int = 0  # connections closed for a protocol violation


class Libp2pTransport(QueuedTransport):
    def __init__(self, identity: Identity, listen: list[str], neighbours: Mapping[str, str | None],
                 *, max_size: int = 64 * 1024 * 1024, inbox: int = 256, mdns: bool = False,
                 allowed: Allowed | None = None, max_reads: int | None = None):
        """`allowed`: who may connect and send (default: the keys of `neighbours`). `max_reads`
        is accepted for compatibility and unused: reads are bounded per sender."""
        if max_size < 1:
            raise TransportError(f"max_size must be a positive number of bytes, got {max_size}")
        self.identity = identity
        self.peer_id = identity.peer_id
        self.listen = list(listen)
        self.neighbour_addrs = {k: v for k, v in neighbours.items()}
        self.allowed: Allowed = set(self.neighbour_addrs) if allowed is None else allowed
        self.max_size = max_size
        self.mdns = mdns
        self.counters = Counters()
        self._senders: dict[str, _Sender] = {}  # trio thread only
        self._budget: dict[str, tuple[float, float]] = {}  # sender -> (tokens, at); trio thread only
        self._cooling: dict[str, float] = {}  # sender -> refused until (monotonic)
        self._handshakes: dict[int, trio.CancelScope] = {}  # in arrival order; trio thread only
        super().__init__(inbox)
        self.bridge = TrioBridge(f"libp2p-{identity.peer_id[-6:]}")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.host = None
        self._nursery: trio.Nursery | None = None
        self._stop_host: trio.Event | None = None
        self._backoff: dict[str, tuple[float, float]] = {}  # peer -> (retry at, delay); asyncio side
        self._addrs: list[str] = []
        self.closed = True

    @property
    def refused_streams(self) -> int:
        return self.counters.refused_streams

    @property
    def read_deadline(self) -> float:
        """Seconds a whole message may take: fixed by max_size, not by what a sender declares."""
        return READ_TIMEOUT_BASE + (self.max_size + LENGTH_BYTES) / MIN_RATE

    def is_allowed(self, peer_id: str) -> bool:
        until = self._cooling.get(peer_id)
        if until is not None:
            if time.monotonic() < until:
                return False
            self._cooling.pop(peer_id, None)
        allowed = self.allowed
        try:
            return bool(allowed(peer_id)) if callable(allowed) else peer_id in allowed
        except Exception:  # a broken predicate trusts nobody
            log.exception("the allowed() check failed for %s", peer_id)
            return False

    # --- asyncio side ------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue(maxsize=self.queue.maxsize)
        for addr in self.listen:
            _check_bindable(addr)
        self.bridge.start()
        try:
            self._addrs = await self.bridge.call(self._trio_start)
        except Exception as exc:
            self.bridge.stop()
            raise TransportError(f"libp2p cannot listen on {', '.join(self.listen)}: {_why(exc)}") from None
        self.closed = False

    def addresses(self) -> list[str]:
        return list(self._addrs)

    async def set_neighbours(self, addrs: Mapping[str, str | None]) -> None:
        """Fleet membership changed the neighbours: dial the new ones at their addresses."""
        self.neighbour_addrs = dict(addrs)
        if self.closed:
            return

        async def remember() -> None:
            for pid, addr in addrs.items():
                if addr:
                    self._remember(pid, addr)

        await self.bridge.call(remember)

    async def send(self, peer_id: str, data: bytes) -> bool:
        if self.closed:
            return False
        retry_at, _ = self._backoff.get(peer_id, (0.0, 0.0))
        if time.monotonic() < retry_at:
            return False
        try:
            await self.bridge.call(self._trio_send, peer_id, data)
        except DialFailed as exc:
            _, delay = self._backoff.get(peer_id, (0.0, BACKOFF_START / 2))
            delay = min(BACKOFF_MAX, delay * 2)
            self._backoff[peer_id] = (time.monotonic() + delay, delay)
            log.warning("cannot reach %s (%s); retrying after %.1fs", peer_id, _why(exc), delay)
            return False
        except Exception as exc:
            log.warning("send to %s failed: %s", peer_id, _why(exc))
            return False
        self._backoff.pop(peer_id, None)
        return True

    async def close(self, reason: str = "stopped") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await asyncio.wait_for(self.bridge.call(self._trio_stop), 10)
        except Exception as exc:  # the host is going away either way; the trio thread is stopped next
            log.debug("libp2p host did not stop cleanly: %s", _why(exc))
        await asyncio.to_thread(self.bridge.stop)
        self._end()

    def _reachable_again(self, peer_id: str) -> None:
        """The neighbour just connected to us: dial it at once, whatever the backoff said."""
        self._backoff.pop(peer_id, None)

    # --- trio side: host ---------------------------------------------------------------

    async def _trio_start(self) -> list[str]:
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
        from libp2p.security.noise.transport import Transport as Noise

        key_pair = create_new_key_pair(self.identity.seed)
        addrs = [multiaddr.Multiaddr(a) for a in self.listen]
        noise_only = {NOISE: Noise(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
        self.host = new_host(key_pair=key_pair, muxer_preference="YAMUX", listen_addrs=addrs,
                             enable_mDNS=self.mdns, sec_opt=noise_only)
        if self.host.get_id().to_base58() != self.peer_id:
            raise TransportError("libp2p derived a different PeerId from the key")
        self._harden(self.host.get_network())
        self.host.set_stream_handler(PROTOCOL, self._handle)
        started = trio.Event()
        failure: list[BaseException] = []
        self._stop_host = trio.Event()

        async def run_host():
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    async with self.host.run(addrs):
                        started.set()
                        await self._stop_host.wait()
                    nursery.cancel_scope.cancel()
            except BaseException as exc:  # noqa: BLE001 - reported through `failure`
                failure.append(exc)
                if started.is_set() and not self.closed and not isinstance(exc, trio.Cancelled):
                    self._failed(exc)  # the host died after it started: the peer must know
                started.set()
                if isinstance(exc, trio.Cancelled):
                    raise
            finally:
                self._nursery = None

        self.bridge.spawn(run_host)
        await started.wait()
        if failure:
            raise failure[0]
        for pid, addr in self.neighbour_addrs.items():
            if addr:
                self._remember(pid, addr)
        if not self.host.get_addrs():
            raise TransportError("the host is not listening on any address")
        out = []
        for a in self.host.get_addrs():
            text = str(a)
            out.append(text if "/p2p/" in text else f"{text}/p2p/{self.peer_id}")
        return out

    def _harden(self, swarm) -> None:
        """Install the trust check, the yamux bounds and our inbound path on this host's swarm.
        Instance attributes only: py-libp2p's classes stay as they are."""
        from libp2p.transport.exceptions import SecurityUpgradeFailure

        swarm.set_resource_manager(None)  # its limits are global, not per neighbour; ours replace them
        swarm.connection_config.max_connections_per_peer = CONNECTIONS_PER_PEER
        upgrader = swarm.upgrader
        upgrade_security, upgrade_connection = upgrader.upgrade_security, upgrader.upgrade_connection

        async def secure_then_check(raw_conn, is_initiator: bool, peer_id=None):
            secured = await upgrade_security(raw_conn, is_initiator, peer_id)
            if not is_initiator:
                remote = secured.get_remote_peer().to_base58()
                if not self.is_allowed(remote):
                    self.counters.refused_peers += 1
                    log.debug("closing a connection from %s: not a trusted neighbour", remote)
                    await _close_quietly(secured)
                    raise SecurityUpgradeFailure(f"{remote} is not a trusted neighbour")
                if self.loop is not None:
                    self.loop.call_soon_threadsafe(self._reachable_again, remote)
            return secured

        async def mux_then_bound(secured, peer_id):
            muxed = await upgrade_connection(secured, peer_id)
            per_stream = self.max_size + LENGTH_BYTES + STREAM_SLACK
            guard_yamux(muxed, per_stream=per_stream, per_conn=per_stream + (STREAMS_PER_CONNECTION - 1) * YAMUX_WINDOW,
                        max_streams=STREAMS_PER_CONNECTION, on_violation=self._violated)
            return muxed

        upgrader.upgrade_security = secure_then_check
        upgrader.upgrade_connection = mux_then_bound

        async def inbound(read_write_closer, maddr, _swarm=swarm):
            await self._inbound(_swarm, read_write_closer, maddr)

        swarm._handle_inbound_connection = inbound

    async def _inbound(self, swarm, read_write_closer, maddr) -> None:
        """Handshake within HANDSHAKE_TIMEOUT in one of HANDSHAKE_SLOTS (the oldest is dropped
        when all are taken), then hold the socket exactly as long as the connection lives."""
        from libp2p.network.connection.raw_connection import RawConnection

        raw = RawConnection(read_write_closer, False)
        scope = trio.CancelScope(deadline=trio.current_time() + HANDSHAKE_TIMEOUT)
        if len(self._handshakes) >= HANDSHAKE_SLOTS:
            oldest = next(iter(self._handshakes))
            self._handshakes.pop(oldest).cancel()
            self.counters.dropped_handshakes += 1
        self._handshakes[id(scope)] = scope
        muxed = None
        try:
            with scope:
                muxed = await swarm.upgrade_inbound_raw_conn(raw, maddr)
        except Exception as exc:
            log.debug("inbound connection on %s failed: %s", maddr, _why(exc))
        finally:
            self._handshakes.pop(id(scope), None)
        if muxed is None:
            await _close_quietly(raw)
            return
        await muxed.event_closed.wait()

    def _violated(self, conn, why: str) -> None:
        """Called by the yamux guard (synchronously, on the trio thread): close that connection."""
        self.counters.violations += 1
        log.warning("closing the connection of %s: %s", _peer_of(conn), why)
        if self._nursery is not None:
            self._nursery.start_soon(_close_quietly, conn)

    def _remember(self, pid: str, addr: str) -> None:
        from libp2p.peer.id import ID

        base = addr.split("/p2p/")[0]
        self.host.get_peerstore().add_addrs(ID.from_base58(pid), [multiaddr.Multiaddr(base)], 10**9)

    async def _trio_stop(self) -> None:
        if self._stop_host is not None:
            self._stop_host.set()
        await trio.sleep(0.05)

    # --- trio side: sending ------------------------------------------------------------

    async def _trio_send(self, peer_id: str, data: bytes) -> None:
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer_id)
        head = len(data).to_bytes(LENGTH_BYTES, "big")  # written apart: no copy of the message
        with trio.fail_after(SEND_TIMEOUT):
            for attempt in (1, 2):
                await self._ensure_connection(pid, fresh=attempt == 2)
                try:
                    stream = await self.host.new_stream(pid, [PROTOCOL])
                except Exception:
                    if attempt == 2:
                        raise
                    continue  # a stale or half-open connection: drop it and dial again
                try:
                    await stream.write(head)
                    await stream.write(data)
                    await stream.close()
                    return
                except BaseException:
                    await _reset(stream)
                    raise

    async def _ensure_connection(self, pid, fresh: bool) -> None:
        from libp2p.peer.peerinfo import PeerInfo

        network = self.host.get_network()
        if fresh:
            try:
                await self.host.disconnect(pid)
            except Exception as exc:  # already gone: the dial below starts afresh anyway
                log.debug("disconnecting %s before a redial: %s", pid, _why(exc))
        elif network.connections.get(pid):
            return
        network.unblock_peer(pid)  # our backoff decides when to retry, not py-libp2p's 60 s cache
        store = self.host.get_peerstore()
        addrs = store.addrs(pid) if pid in store.peer_ids() else []
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self.host.connect(PeerInfo(pid, addrs))
        except Exception as exc:
            raise DialFailed(_why(exc)) from None

    # --- trio side: receiving ----------------------------------------------------------

    async def _handle(self, stream) -> None:
        """Read one whole length-prefixed message in the sender's own slot, then hand it to asyncio."""
        try:
            sender = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            await _reset(stream)
            return
        if not self.is_allowed(sender):  # no longer trusted since it connected
            self.counters.refused_peers += 1
            await _reset(stream)
            await _close_quietly(stream.muxed_conn)
            return
        if not self._spend(sender):
            self.counters.violations += 1
            self._cooling[sender] = time.monotonic() + COOLDOWN
            log.warning("closing the connection of %s for %.0fs: more than %d messages at %.0f/s",
                        sender, COOLDOWN, MESSAGE_BURST, MESSAGE_RATE)
            await _reset(stream)
            await _close_quietly(stream.muxed_conn)
            return
        slot = self._senders.setdefault(sender, _Sender())
        if slot.open >= STREAMS_PER_SENDER:
            self.counters.refused_streams += 1
            log.debug("resetting a stream from %s: %d already open", sender, STREAMS_PER_SENDER)
            await _reset(stream)
            return
        slot.open += 1
        try:
            async with slot.lock:
                body = await self._read_message(stream, sender)
        finally:
            slot.open -= 1
            if not slot.open:
                del self._senders[sender]
        if body is not None and self.loop is not None and not self.closed:
            self.loop.call_soon_threadsafe(self._deliver, sender, body)

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
                head = await _read_exactly(stream, LENGTH_BYTES)
                size = int.from_bytes(head, "big")
                if size > self.max_size:
                    raise ProtocolViolation(f"declared a {size}-byte message (limit {self.max_size})")
                body = await _read_exactly(stream, size)
                if await _read_more(stream):
                    raise ProtocolViolation(f"sent more than the {size} bytes it declared")
            if deadline.cancelled_caught:
                self.counters.timeouts += 1
                log.info("resetting a stream from %s: no whole message within %.1fs", sender, self.read_deadline)
                await _reset(stream)
                return None
            await _close_quietly(stream)
            return body
        except ProtocolViolation as exc:
            self.counters.violations += 1
            log.warning("closing the connection of %s: %s", sender, exc)
            await _reset(stream)
            await _close_quietly(stream.muxed_conn)
            return None
        except Exception as exc:  # a broken stream from one peer must not hurt the host
            log.debug("stream from %s failed: %s", sender, _why(exc))
            await _reset(stream)
            return None


async def _read_exactly(stream, n: int) -> bytearray:
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


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except Exception as exc:  # a stream that is already broken needs no reset
        log.debug("stream reset failed: %s", _why(exc))


def _check_bindable(addr: str) -> None:
    """Fail early and clearly when a listen port is taken (py-libp2p only logs it)."""
    import socket

    try:
        ma = multiaddr.Multiaddr(addr)
        host = ma.value_for_protocol("ip4")
        port = int(ma.value_for_protocol("tcp"))
    except Exception:
        raise TransportError(f"transport.listen: {addr!r} is not an /ip4/HOST/tcp/PORT multiaddr") from None
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise TransportError(f"cannot listen on {addr}: {exc.strerror.lower()} "
                                 "(another process has this port?)") from None


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, BaseExceptionGroup):
        text = "; ".join(_why(e) for e in exc.exceptions)
    if "Address already in use" in text or "[Errno 98]" in text:
        return "address already in use (another process has this port)"
    return text.splitlines()[0][:200]


async def _read_more(stream) -> bool:
    """After the declared message: True if the sender sent anything but the end of the stream."""
    from libp2p.network.stream.exceptions import StreamEOF

    try:
        return bool(await stream.read(1))
    except StreamEOF:
        return False


async def _close_quietly(thing) -> None:
    try:
        await thing.close()
    except Exception as exc:  # closing what an attacker left half-open may fail in many ways
        log.debug("closing %s failed: %s", type(thing).__name__, _why(exc))


def _peer_of(conn) -> str:
    try:
        return conn.peer_id.to_base58()
    except Exception:
        return "an unknown peer"
