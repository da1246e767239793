"""Our signed address record, kept current and pushed to neighbours; theirs, verified and kept.

Protocol /gossipfl/addrs/1.0.0: one stream carries a 2-byte big-endian length and one record
(at most MAX_RECORD bytes, read within READ_TIMEOUT), then the end of the stream. Our record
is pushed on every new connection to a neighbour (direct, hole-punched or through a relay)
and to every connected neighbour when our addresses change (checked every CHECK_EVERY s:
interface addresses, reservations on relays, reachability). A record is taken only from a
peer that may send updates, and only for that peer (signer == named peer == the sender, seq
above the last one: gossip/p2p/records.py).

Which addresses we announce: the `announce` list when configured (a public address behind a
port forward), else our listen addresses with 0.0.0.0 expanded to the interfaces'
non-loopback IPv4 addresses; none of these when we are known to be private; plus a circuit
address through each relay that holds a reservation for us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import multiaddr
import trio

from ..identity import Identity
from .circuits import Relay
from .records import (
    MAX_ADDRS,
    MAX_RECORD,
    AddressBook,
    AddressRecord,
    RecordRefused,
    SeqCounter,
    StaleRecord,
    seal,
)
from .streams import close_quietly, read_exactly, remote_peer, reset, why

PROTOCOL = "/gossipfl/addrs/1.0.0"
READ_TIMEOUT = 5.0
CHECK_EVERY = 2.0

log = logging.getLogger("gossipfl.libp2p")


def interface_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (they change with DHCP or a new session)."""
    import socket

    import psutil

    out = []
    for entries in psutil.net_if_addrs().values():
        for e in entries:
            if e.family == socket.AF_INET and not e.address.startswith("127."):
                out.append(e.address)
    return sorted(set(out))


def own_addresses(bound: list[str], announce: list[str], reserved: list[Relay], *, direct: bool,
                  interfaces: list[str]) -> list[str]:
    """The addresses of our record (pure; see the module doc). `bound`: our listen addresses
    with their real ports."""
    out: list[str] = []
    if direct:
        if announce:
            out += [a.split("/p2p/")[0] for a in announce]
        else:
            for addr in bound:
                base = addr.split("/p2p/")[0]
                if base.startswith("/ip4/0.0.0.0/"):
                    rest = base[len("/ip4/0.0.0.0"):]
                    out += [f"/ip4/{ip}{rest}" for ip in interfaces]
                else:
                    out.append(base)
    out += [f"{r.addr}/p2p/{r.peer_id}/p2p-circuit" for r in reserved]
    seen: list[str] = []
    for a in out:
        if a not in seen:
            seen.append(a)
    return seen[:MAX_ADDRS]


class Announcer:
    """Seals our record when our addresses change, pushes it, and takes the neighbours' ones
    into `book`. `on_learned(record, previous)` is called for each newer record with the one it replaced
    (or None) (trio thread)."""

    def __init__(self, identity: Identity, seq: SeqCounter, book: AddressBook, may_send: Callable[[str], bool],
                 on_learned: Callable[[AddressRecord, AddressRecord | None], None]):
        self.identity, self.seq, self.book = identity, seq, book
        self.may_send, self.on_learned = may_send, on_learned
        self.addrs: list[str] | None = None
        self.record: bytes | None = None
        self.refused = 0

    def update(self, addrs: list[str]) -> str | None:
        """Seal a new record if `addrs` differ from the last one. Returns None (unchanged),
        "added" (only new addresses) or "removed" (an address a neighbour may hold is gone)."""
        if addrs == self.addrs:
            return None
        self.record = seal(self.identity, addrs, self.seq.next())
        removed = self.addrs is not None and bool(set(self.addrs) - set(addrs))
        if self.addrs is not None:
            log.info("our addresses changed: %s", ", ".join(addrs) or "none")
        self.addrs = list(addrs)
        return "removed" if removed else "added"

    async def push(self, host, peer_id: str) -> bool:
        from libp2p.peer.id import ID

        record = self.record
        if record is None:
            return False
        try:
            with trio.fail_after(READ_TIMEOUT):
                stream = await host.new_stream(ID.from_base58(peer_id), [PROTOCOL])
                try:
                    await stream.write(len(record).to_bytes(2, "big") + record)
                    await stream.close()
                except BaseException:
                    await reset(stream)
                    raise
            return True
        except Exception as exc:
            log.debug("pushing our record to %s failed: %s", peer_id, why(exc))
            return False

    async def handle(self, stream) -> None:
        sender = remote_peer(stream)
        if sender is None:
            await reset(stream)
            return
        if not self.may_send(sender):
            await reset(stream)
            return
        try:
            with trio.fail_after(READ_TIMEOUT):
                size = int.from_bytes(await read_exactly(stream, 2), "big")
                if size > MAX_RECORD:
                    raise RecordRefused(f"declared a {size}-byte record (limit {MAX_RECORD})")
                data = await read_exactly(stream, size)
            previous = self.book.records.get(sender)
            record = self.book.learn(bytes(data), sender)
        except StaleRecord as exc:  # a push that crossed a newer one
            log.debug("an older address record from %s: %s", sender, exc)
            await close_quietly(stream)
            return
        except RecordRefused as exc:
            self.refused += 1
            log.warning("refused an address record from %s: %s", sender, exc)
            await reset(stream)
            return
        except Exception as exc:
            log.debug("reading an address record from %s failed: %s", sender, why(exc))
            await reset(stream)
            return
        await close_quietly(stream)
        if record is not None:
            log.info("%s is at %s (record %d)", sender, ", ".join(record.addrs) or "no address", record.seq)
            self.on_learned(record, previous)


def parse_addrs(addrs: list[str], what: str) -> list[str]:
    """Check multiaddrs from a config; ValueError names the bad one."""
    for a in addrs:
        try:
            multiaddr.Multiaddr(a)
        except Exception:
            raise ValueError(f"{what}: {a!r} is not a multiaddr") from None
    return list(addrs)


def safe_interfaces() -> list[str]:
    try:
        return interface_addresses()
    except Exception:
        return []


def bound_addresses(host, peer_id: str) -> list[str]:
    out = []
    for a in host.get_transport_addrs() if hasattr(host, "get_transport_addrs") else host.get_addrs():
        text = str(a)
        if "/p2p-circuit" in text:
            continue
        out.append(text if "/p2p/" in text else f"{text}/p2p/{peer_id}")
    return out


class PushOnConnect:
    """Swarm notifee: `on_connected(PeerId)` for every new connection (it must not block)."""

    def __init__(self, on_connected):
        self.on_connected = on_connected

    async def connected(self, network, conn) -> None:
        try:
            peer_id = conn.muxed_conn.peer_id.to_base58()
        except Exception:
            return
        self.on_connected(peer_id)

    async def disconnected(self, network, conn) -> None:
        pass

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass
