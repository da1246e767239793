"""The libp2p transport: TCP + Noise + yamux via py-libp2p, one direct stream per update.

Each update travels on a fresh stream of protocol /gossipfl/update/1.0.0 as an 8-byte
big-endian length and the message. The handler reads the whole message (yamux resets
a stream whose reader stalls for 5 s) and only then hands the bytes to asyncio; a message
over the size limit resets the stream; a full inbox drops the message, it never stalls
the stream. The host key is the peer's own Ed25519 key, so the PeerId that libp2p
authenticates (Noise) is the PeerId that signs the updates.

Memory is bounded before any verification: a sender has at most one stream being read
and one waiting (more are reset), at most `max_reads` messages are read at once (the
others wait under yamux flow control, a window each), and a message must arrive within
READ_TIMEOUT_BASE plus one second per MB. A flooding or trickling sender occupies its
own slot, never all of them while max_reads > the number of Byzantine neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import multiaddr
import trio

from .errors import TransportError
from .identity import Identity
from .transport import QueuedTransport
from .trio_bridge import TrioBridge

PROTOCOL = "/gossipfl/update/1.0.0"
LENGTH_BYTES = 8
DIAL_TIMEOUT = 10.0
SEND_TIMEOUT = 120.0
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
STREAMS_PER_SENDER = 2  # one being read, one waiting its turn
READ_TIMEOUT_BASE = 10.0

log = logging.getLogger("gossipfl.libp2p")


class DialFailed(Exception):
    """The neighbour could not be reached (backoff applies), as opposed to one stream failing."""


class Libp2pTransport(QueuedTransport):
    def __init__(self, identity: Identity, listen: list[str], neighbours: Mapping[str, str | None],
                 *, max_size: int = 64 * 1024 * 1024, inbox: int = 256, mdns: bool = False, max_reads: int = 4):
        self.identity = identity
        self.peer_id = identity.peer_id
        self.listen = list(listen)
        self.neighbour_addrs = {k: v for k, v in neighbours.items()}
        self.max_size = max_size
        self.mdns = mdns
        self.max_reads = max_reads
        self._open_from: dict[str, int] = {}  # sender -> streams open (trio thread only)
        self._one_per_sender: dict[str, trio.Lock] = {}
        self._reads: trio.Semaphore | None = None
        self.refused_streams = 0
        super().__init__(inbox)
        self.bridge = TrioBridge(f"libp2p-{identity.peer_id[-6:]}")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.host = None
        self._stop_host: trio.Event | None = None
        self._backoff: dict[str, tuple[float, float]] = {}  # peer -> (retry at, delay)
        self._addrs: list[str] = []
        self.closed = True

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

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await asyncio.wait_for(self.bridge.call(self._trio_stop), 10)
        except Exception:
            pass
        await asyncio.to_thread(self.bridge.stop)
        self._end()

    # --- trio side ---------------------------------------------------------------------

    async def _trio_start(self) -> list[str]:
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair

        key_pair = create_new_key_pair(self.identity.seed)
        addrs = [multiaddr.Multiaddr(a) for a in self.listen]
        self.host = new_host(key_pair=key_pair, muxer_preference="YAMUX", listen_addrs=addrs,
                             enable_mDNS=self.mdns)
        if self.host.get_id().to_base58() != self.peer_id:
            raise TransportError("libp2p derived a different PeerId from the key")
        self.host.set_stream_handler(PROTOCOL, self._handle)
        started = trio.Event()
        failure: list[BaseException] = []
        self._stop_host = trio.Event()

        async def run_host():
            try:
                async with self.host.run(addrs):
                    started.set()
                    await self._stop_host.wait()
            except BaseException as exc:  # noqa: BLE001 - reported through `failure`
                failure.append(exc)
                started.set()
                if isinstance(exc, trio.Cancelled):
                    raise

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

    def _remember(self, pid: str, addr: str) -> None:
        from libp2p.peer.id import ID

        base = addr.split("/p2p/")[0]
        self.host.get_peerstore().add_addrs(ID.from_base58(pid), [multiaddr.Multiaddr(base)], 10**9)

    async def _trio_stop(self) -> None:
        if self._stop_host is not None:
            self._stop_host.set()
        await trio.sleep(0.05)

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
            except Exception:
                pass
        elif network.connections.get(pid):
            return
        store = self.host.get_peerstore()
        addrs = store.addrs(pid) if pid in store.peer_ids() else []
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self.host.connect(PeerInfo(pid, addrs))
        except Exception as exc:
            raise DialFailed(_why(exc)) from None

    async def _handle(self, stream) -> None:
        """Read one whole length-prefixed message within the stream limits, then hand it to asyncio."""
        try:
            sender = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            await _reset(stream)
            return
        if self._open_from.get(sender, 0) >= STREAMS_PER_SENDER:
            self.refused_streams += 1
            log.debug("resetting a stream from %s: %d already open", sender, STREAMS_PER_SENDER)
            await _reset(stream)
            return
        if self._reads is None:
            self._reads = trio.Semaphore(self.max_reads)
        self._open_from[sender] = self._open_from.get(sender, 0) + 1
        try:
            async with self._one_per_sender.setdefault(sender, trio.Lock()), self._reads:
                body = await self._read_message(stream, sender)
        finally:
            self._open_from[sender] -= 1
            if not self._open_from[sender]:
                del self._open_from[sender], self._one_per_sender[sender]
        if body is not None and self.loop is not None and not self.closed:
            self.loop.call_soon_threadsafe(self._deliver, sender, body)

    async def _read_message(self, stream, sender: str) -> bytes | None:
        try:
            with trio.fail_after(READ_TIMEOUT_BASE):
                head = await _read_exactly(stream, LENGTH_BYTES)
            size = int.from_bytes(head, "big")
            if size > self.max_size:
                log.warning("resetting a %d-byte message from %s (limit %d)", size, sender, self.max_size)
                await _reset(stream)
                return None
            with trio.fail_after(READ_TIMEOUT_BASE + size / (1 << 20)):
                body = await _read_exactly(stream, size)
            await stream.close()
            return body
        except Exception as exc:  # a broken or too slow stream from one peer must not hurt the host
            log.debug("stream from %s failed: %s", sender, _why(exc))
            await _reset(stream)
            return None


async def _read_exactly(stream, n: int) -> bytes:
    """Exactly n bytes. The chunks are kept as they come and joined once: memory grows with
    what the sender really sent (a declared size reserves nothing), and a message costs
    its size twice only for the moment of the join (growing a bytearray and copying it
    out cost up to three times, per concurrent stream)."""
    from libp2p.network.stream.exceptions import StreamEOF

    chunks, got = [], 0
    while got < n:
        try:
            chunk = await stream.read(min(n - got, 1 << 20))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise EOFError(f"stream ended after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


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
