"""Attack clients against a libp2p gossipfl peer: the hostile side of tests and bench/hostile.py.

Each attack is a trio function `attack(target, seconds, **options) -> dict` that stops by
itself (after `seconds`, or earlier when it has nothing left to do) and returns counts of
what it managed. The clients are built from py-libp2p's own pieces (TCP, Noise, yamux,
multistream-select) rather than a full host, so one process can hold hundreds of identities
and can break the protocol where an honest host would not (ignore the flow-control window,
send more than it declared, stall a handshake, claim an identity over plaintext).

    python -m tests.attackers ATTACK --target /ip4/127.0.0.1/tcp/PORT/p2p/PEERID --seconds N [...]

prints one JSON line with the counts. Counts and time are bounded (MAX_* below).

Attacks (the `--key PATH` of a peer key makes the attacker a trusted neighbour):
  streams     identities open streams that declare a size and trickle it (default fresh keys)
  window      push data on one stream past the yamux receive window
  oversize    declare a message larger than the target's limit (`--declared`)
  overlong    declare `--size` bytes and send `--extra` more after them
  junk        send well-framed junk messages of `--size` bytes back to back
  conn_flood  `--connections` connections from fresh identities, held open
  churn       connect and disconnect `--connections` times in a row
  stall       TCP connections that never start the handshake
  stall_rate  TCP connections opened at `--rate` a second that never send a byte (churn)
  plaintext   claim `--claim PEERID` over /plaintext/2.0.0 (refused when only Noise is offered)
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
import time
from dataclasses import dataclass

import multiaddr
import trio

PROTOCOL = "/gossipfl/update/1.0.0"  # the update protocol of gossip/libp2p_transport.py
LENGTH_BYTES = 8
MAX_SECONDS = 600.0
MAX_IDENTITIES = 2000
MAX_STREAMS = 64
MAX_BYTES = 1 << 32
MAX_CONNECTIONS = 20000
MAX_RATE = 2000.0
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    peer_id: str

    @classmethod
    def parse(cls, addr: str) -> Target:
        ma = multiaddr.Multiaddr(addr)
        return cls(ma.value_for_protocol("ip4"), int(ma.value_for_protocol("tcp")), ma.value_for_protocol("p2p"))


def _key_pair(seed: bytes | None):
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair(seed) if seed is not None else create_new_key_pair()


async def _raw(target: Target):
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection

    stream = await trio.open_tcp_stream(target.host, target.port)
    return RawConnection(TrioTCPStream(stream), True)


def _upgrader(key_pair, plaintext: bool = False):
    from libp2p import create_yamux_muxer_option
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.transport.upgrader import TransportUpgrader

    secure = ({PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)} if plaintext
              else {NOISE: Noise(key_pair, noise_privkey=x25519().private_key)})
    return TransportUpgrader(secure, create_yamux_muxer_option())


class Session:
    """One authenticated, multiplexed connection to the target under one identity."""

    def __init__(self, yamux, secured):
        self.yamux, self.secured = yamux, secured

    @property
    def closed(self) -> bool:
        return self.yamux.event_shutting_down.is_set() or self.yamux.is_closed

    async def open_update_stream(self):
        from libp2p.protocol_muxer.multiselect_client import MultiselectClient
        from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

        stream = await self.yamux.open_stream()
        await MultiselectClient().select_one_of([PROTOCOL], MultiselectCommunicator(stream), 5)
        return stream

    async def write_past_window(self, stream, data: bytes) -> None:
        """Send `data` as yamux DATA frames without waiting for window updates."""
        from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_DATA, YAMUX_HEADER_FORMAT

        step = 64 * 1024 - HEADER_SIZE
        for i in range(0, len(data), step):
            chunk = data[i:i + step]
            await self.yamux._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, stream.stream_id,
                                                      len(chunk)) + chunk)

    async def close(self) -> None:
        try:
            await self.yamux.close()
        except Exception:
            pass


async def secure(target: Target, seed: bytes | None = None, plaintext: bool = False):
    """TCP + security handshake; returns (upgrader, secured connection). Raises on refusal."""
    from libp2p.peer.id import ID

    upgrader = _upgrader(_key_pair(seed), plaintext)
    raw = await _raw(target)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            secured = await upgrader.upgrade_security(raw, True, ID.from_base58(target.peer_id))
    except BaseException:
        await raw.close()
        raise
    return upgrader, secured


async def connect(target: Target, nursery: trio.Nursery, seed: bytes | None = None) -> Session:
    """A full session (Noise then yamux). Raises when the target refuses at either step."""
    from libp2p.peer.id import ID

    upgrader, secured = await secure(target, seed)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            yamux = await upgrader.upgrade_connection(secured, ID.from_base58(target.peer_id))
    except BaseException:
        await secured.close()
        raise
    nursery.start_soon(yamux.start)
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await yamux.event_started.wait()
    return Session(yamux, secured)


def _bounded(n: int, limit: int, what: str) -> int:
    if not 0 <= n <= limit:
        raise ValueError(f"{what} must be between 0 and {limit}, got {n}")
    return n


# --- attacks -------------------------------------------------------------------------------


async def streams(target: Target, seconds: float, identities: int = 6, per_identity: int = 2,
                  declared: int = 1000, seed: bytes | None = None) -> dict:
    """Open streams that declare `declared` bytes and send one byte per second."""
    _bounded(identities, MAX_IDENTITIES, "identities")
    _bounded(per_identity, MAX_STREAMS, "streams per identity")
    out = {"identities": identities, "sessions": 0, "refused": 0, "streams": 0, "stream_failures": 0,
           "bytes": 0, "reset_by_target": 0, "closed_by_target": 0}

    async def one(nursery):
        try:
            session = await connect(target, nursery, seed)
        except Exception:
            out["refused"] += 1
            return
        out["sessions"] += 1
        opened = []
        for _ in range(per_identity):
            try:
                s = await session.open_update_stream()
                await s.write(declared.to_bytes(LENGTH_BYTES, "big"))
                opened.append(s)
                out["streams"] += 1
            except Exception:
                out["stream_failures"] += 1
        while opened and not session.closed:
            for s in list(opened):
                try:
                    await s.write(b"x")
                    out["bytes"] += 1
                except Exception:
                    opened.remove(s)
                    out["reset_by_target"] += 1
            await trio.sleep(1.0)
        out["closed_by_target"] += session.closed
        await session.close()

    await _run_all(seconds, [one] * identities)
    return out


async def window(target: Target, seconds: float, identities: int = 2, megabytes: int = 256,
                 seed: bytes | None = None) -> dict:
    """Declare a large message and push `megabytes` per identity ignoring the flow-control window."""
    _bounded(identities, MAX_IDENTITIES, "identities")
    total = _bounded(megabytes << 20, MAX_BYTES, "bytes")
    out = {"identities": identities, "sessions": 0, "refused": 0, "bytes": 0, "closed_by_target": 0}

    async def one(nursery):
        try:
            session = await connect(target, nursery, seed)
            stream = await session.open_update_stream()
        except Exception:
            out["refused"] += 1
            return
        out["sessions"] += 1
        block = (total - LENGTH_BYTES).to_bytes(LENGTH_BYTES, "big") + bytes(1 << 20)
        sent = 0
        try:
            while sent < total and not session.closed:
                await session.write_past_window(stream, block if sent == 0 else block[LENGTH_BYTES:])
                sent += len(block)
                out["bytes"] += len(block)
        except Exception:
            pass
        with trio.move_on_after(2):
            while not session.closed:
                await trio.sleep(0.05)
        out["closed_by_target"] += session.closed
        await session.close()

    await _run_all(seconds, [one] * identities)
    return out


async def oversize(target: Target, seconds: float, declared: int = 1 << 30, send: int = 1 << 20,
                   seed: bytes | None = None) -> dict:
    """Declare `declared` bytes (over the target's limit) and start sending them."""
    return await _one_message(target, seconds, declared, send, seed)


async def overlong(target: Target, seconds: float, size: int = 1000, extra: int = 1 << 20,
                   seed: bytes | None = None) -> dict:
    """Declare `size` bytes, send them, then `extra` bytes more on the same stream."""
    return await _one_message(target, seconds, size, size + extra, seed)


async def _one_message(target, seconds, declared, send, seed) -> dict:
    _bounded(send, MAX_BYTES, "bytes")
    out = {"sessions": 0, "refused": 0, "bytes": 0, "stream_reset": False, "closed_by_target": False}

    async def one(nursery):
        try:
            session = await connect(target, nursery, seed)
            stream = await session.open_update_stream()
        except Exception:
            out["refused"] += 1
            return
        out["sessions"] += 1
        try:
            await stream.write(declared.to_bytes(LENGTH_BYTES, "big"))
            step = 64 * 1024
            for i in range(0, send, step):
                await stream.write(bytes(min(step, send - i)))
                out["bytes"] += min(step, send - i)
            await stream.close()
        except Exception:
            out["stream_reset"] = True
        with trio.move_on_after(min(5.0, seconds)):
            while not session.closed:
                await trio.sleep(0.05)
        out["stream_reset"] = out["stream_reset"] or stream.reset_received
        out["closed_by_target"] = session.closed
        await session.close()

    await _run_all(seconds, [one])
    return out


MAX_JUNK_MESSAGES = 100_000  # per identity


def junk_body(size: int, body: str = "bytes") -> bytes:
    """`bytes`: random-looking bytes; `nested`: msgpack arrays of one element nested as deep as
    `size` allows (the scanner bomb that cost 1.57 s of CPU before the strict envelope reader)."""
    if body == "nested":
        return b"\x91" * (size - 1) + b"\xc0"
    if body == "bytes":
        return (bytes(range(256)) * (size // 256 + 1))[:size]
    raise ValueError(f"body must be bytes or nested, got {body!r}")


async def junk(target: Target, seconds: float, size: int = 1 << 20, seed: bytes | None = None,
               identities: int = 1, body: str = "bytes", messages: int = MAX_JUNK_MESSAGES) -> dict:
    """Each of `identities` connections sends well-framed messages of `size` bytes of junk, one
    after another, until time is up (or `messages` each)."""
    _bounded(size, MAX_BYTES, "size")
    _bounded(messages, MAX_JUNK_MESSAGES, "messages")
    _bounded(identities, MAX_IDENTITIES, "identities")
    content = junk_body(size, body)
    out = {"identities": identities, "sessions": 0, "refused": 0, "messages": 0, "failures": 0,
           "closed_by_target": 0}

    async def one(nursery):
        try:
            session = await connect(target, nursery, seed)
        except Exception:
            out["refused"] += 1
            return
        out["sessions"] += 1
        sent = 0
        while not session.closed and sent < messages:
            try:
                stream = await session.open_update_stream()
                await stream.write(size.to_bytes(LENGTH_BYTES, "big"))
                await stream.write(content)
                await stream.close()
                out["messages"] += 1
                sent += 1
            except Exception:
                out["failures"] += 1
                await trio.sleep(0.1)
        out["closed_by_target"] += session.closed
        await session.close()

    await _run_all(seconds, [one] * identities)
    return out


async def conn_flood(target: Target, seconds: float, connections: int = 300, parallel: int = 32,
                     hold: bool = True) -> dict:
    """`connections` fresh identities connect (`parallel` at a time); each holds its connection
    until the target closes it or time is up."""
    _bounded(connections, MAX_IDENTITIES, "connections")
    out = {"connections": connections, "handshakes": 0, "sessions": 0, "refused": 0, "closed_by_target": 0}
    gate = trio.Semaphore(max(1, parallel))
    held: list[Session] = []

    async def one(nursery):
        async with gate:
            try:
                upgrader, secured = await secure(target)
            except Exception:
                out["refused"] += 1
                return
            out["handshakes"] += 1
            from libp2p.peer.id import ID

            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    yamux = await upgrader.upgrade_connection(secured, ID.from_base58(target.peer_id))
            except Exception:
                out["closed_by_target"] += 1
                await secured.close()
                return
            out["sessions"] += 1
            nursery.start_soon(yamux.start)
            held.append(Session(yamux, secured))
        while hold and not held[-1].closed:
            await trio.sleep(0.5)

    await _run_all(seconds, [one] * connections)
    for s in held:
        await s.close()
    return out


async def churn(target: Target, seconds: float, connections: int = 300, seed: bytes | None = None) -> dict:
    """Connect and disconnect `connections` times, one after another (with --key: as a neighbour)."""
    _bounded(connections, MAX_IDENTITIES, "connections")
    out = {"connections": connections, "sessions": 0, "refused": 0}

    async def all_of_them(nursery):
        for _ in range(connections):
            try:
                session = await connect(target, nursery, seed)
            except Exception:
                out["refused"] += 1
                continue
            out["sessions"] += 1
            await session.close()

    await _run_all(seconds, [all_of_them])
    return out


async def stall(target: Target, seconds: float, connections: int = 100) -> dict:
    """TCP connections that send nothing; counts those the target closes before time is up."""
    _bounded(connections, MAX_IDENTITIES, "connections")
    out = {"connections": connections, "opened": 0, "closed_by_target": 0}

    async def one(nursery):
        try:
            stream = await trio.open_tcp_stream(target.host, target.port)
        except OSError:
            return
        out["opened"] += 1
        try:
            while True:
                if not await stream.receive_some(65536):
                    out["closed_by_target"] += 1
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            out["closed_by_target"] += 1
        finally:
            await trio.aclose_forcefully(stream)

    await _run_all(seconds, [one] * connections)
    return out


async def stall_rate(target: Target, seconds: float, rate: float = 500.0, connections: int = 2000,
                     hold: bool = True, linger: float = 0.0) -> dict:
    """Start a TCP connection every 1/`rate` s (at most `connections` in all) without waiting for
    it to complete (a non-blocking connect, as a SYN flood tool would), send nothing on any of
    them, and hold them open (`hold`; else close each at once) until `seconds` are up: connection
    churn that needs no key and is not slowed down by a full accept queue at the target.
    Then waits up to `linger` s more until the target closed every one, and counts the
    connections the target closed (EOF or reset) and those still open."""
    import errno
    import socket

    _bounded(connections, MAX_CONNECTIONS, "connections")
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE:g}], got {rate}")
    out = {"connections": connections, "opened": 0, "failed": 0, "closed_by_target": 0, "still_open": 0}
    held: list[socket.socket] = []
    closed: set[int] = set()

    def all_closed() -> bool:
        for i, s in enumerate(held):
            if i not in closed and _closed_by_peer(s):
                closed.add(i)
        return len(closed) == len(held)

    try:
        with trio.move_on_after(min(max(0.0, seconds), MAX_SECONDS)):
            start = trio.current_time()
            for i in range(connections):
                await trio.sleep_until(start + i / rate)
                try:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError:  # out of file descriptors: what is held stays held
                    out["failed"] += 1
                    continue
                s.setblocking(False)
                code = s.connect_ex((target.host, target.port))
                if code not in (0, errno.EINPROGRESS):
                    out["failed"] += 1
                    s.close()
                    continue
                out["opened"] += 1
                if hold:
                    held.append(s)
                else:
                    s.close()
            await trio.sleep_forever()
        with trio.move_on_after(min(max(0.0, linger), MAX_SECONDS)):
            while not all_closed():
                await trio.sleep(0.2)
    finally:
        all_closed()
        out["closed_by_target"], out["still_open"] = len(closed), len(held) - len(closed)
        for s in held:
            s.close()
    return out


def _closed_by_peer(s) -> bool:
    """A non-blocking socket's peer closed it (EOF or reset); what it sent (the target speaks
    first in multistream-select) is read and dropped, at most 64 KB."""
    for _ in range(16):
        try:
            if not s.recv(4096):
                return True
        except BlockingIOError:
            return False
        except OSError:  # reset by the target, or never connected
            return True
    return False


async def plaintext(target: Target, seconds: float, claim: str | None = None) -> dict:
    """Offer /plaintext/2.0.0 claiming `claim`'s PeerId (its public key is in the PeerId)."""
    out = {"claimed": claim, "secured": False, "streams": 0}
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.crypto.keys import KeyPair

    claimed_key = None
    if claim:
        from cryptography.hazmat.primitives import serialization

        from gossip.identity import public_key_of

        raw = public_key_of(claim).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        claimed_key = Ed25519PublicKey.from_bytes(raw)
    with trio.move_on_after(min(seconds, MAX_SECONDS)):
        real = _key_pair(None)
        pair = KeyPair(real.private_key, claimed_key or real.public_key)
        from libp2p.peer.id import ID

        upgrader = _upgrader(pair, plaintext=True)
        raw_conn = await _raw(target)
        try:
            secured = await upgrader.upgrade_security(raw_conn, True, ID.from_base58(target.peer_id))
        except Exception:
            await raw_conn.close()
            return out
        out["secured"] = True
        async with trio.open_nursery() as nursery:
            try:
                yamux = await upgrader.upgrade_connection(secured, ID.from_base58(target.peer_id))
                nursery.start_soon(yamux.start)
                await yamux.event_started.wait()
                session = Session(yamux, secured)
                stream = await session.open_update_stream()
                out["streams"] += 1
                await stream.write((5).to_bytes(LENGTH_BYTES, "big") + b"spoof")
                await stream.close()
                await session.close()
            except Exception:
                pass
            nursery.cancel_scope.cancel()
    return out


async def _run_all(seconds: float, jobs) -> None:
    """Run the jobs concurrently, each given the nursery, all cancelled after `seconds`."""
    seconds = min(max(0.0, seconds), MAX_SECONDS)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as inner:
                for job in jobs:
                    inner.start_soon(job, nursery)
            nursery.cancel_scope.cancel()


ATTACKS = {"streams": streams, "window": window, "oversize": oversize, "overlong": overlong, "junk": junk,
           "conn_flood": conn_flood, "churn": churn, "stall": stall, "stall_rate": stall_rate,
           "plaintext": plaintext}


def run(attack: str, target: str, seconds: float, **options) -> dict:
    """Run one attack to completion in this process (trio); returns its counts."""
    fn = ATTACKS[attack]
    started = time.monotonic()
    result = trio.run(lambda: fn(Target.parse(target), seconds, **options))
    result["attack"] = attack
    result["elapsed"] = round(time.monotonic() - started, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.attackers", description=__doc__.split("\n")[0])
    p.add_argument("attack", choices=sorted(ATTACKS))
    p.add_argument("--target", required=True, help="/ip4/HOST/tcp/PORT/p2p/PEERID")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--key", help="a peer key file: attack as that (trusted) identity")
    p.add_argument("--identities", type=int)
    p.add_argument("--per-identity", type=int)
    p.add_argument("--declared", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--extra", type=int)
    p.add_argument("--send", type=int)
    p.add_argument("--megabytes", type=int)
    p.add_argument("--connections", type=int)
    p.add_argument("--parallel", type=int)
    p.add_argument("--rate", type=float, help="stall_rate: connections opened per second")
    p.add_argument("--linger", type=float, help="stall_rate: wait this long for the target to close them all")
    p.add_argument("--no-hold", dest="hold", action="store_false", default=None,
                   help="stall_rate: close each connection at once")
    p.add_argument("--claim")
    p.add_argument("--body", choices=["bytes", "nested"], help="junk: random-looking bytes or a msgpack bomb")
    p.add_argument("--messages", type=int, help="junk: at most this many messages per identity")
    a = p.parse_args(argv)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # our half-protocols make it complain
    if not 0 < a.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    options = {k: v for k, v in vars(a).items()
               if k not in ("attack", "target", "seconds", "key") and v is not None}
    if a.key:
        from gossip.identity import load_key

        options["seed"] = load_key(a.key).seed
    import inspect

    accepted = inspect.signature(ATTACKS[a.attack]).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        p.error(f"{a.attack} does not take {', '.join('--' + u.replace('_', '-') for u in unknown)}")
    try:
        result = run(a.attack, a.target, a.seconds, **options)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
