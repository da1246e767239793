"""A large MQTT message whose last bytes arrive on paho's 100th read must be delivered by
that read, not left waiting for the next bytes on the socket (the next message or the
keepalive ping, up to 60 s: a peer then waited its round deadline with every update in)."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from gossip.mqtt_transport import handle_whole_packets

PIECES = 100  # paho-mqtt 2.x reads at most this many times per loop_read before returning


class _Trickle:
    """A non-blocking socket that returns the queued pieces one recv at a time."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = list(pieces)

    def recv(self, n: int) -> bytes:
        if not self.pieces:
            raise BlockingIOError
        piece = self.pieces.pop(0)
        assert len(piece) <= n, "the test must not hand paho more than it asked for"
        return piece

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.pieces = []


def _publish_packet(topic: bytes, payload: bytes, reads: int = PIECES) -> list[bytes]:
    """A QoS 0 PUBLISH as paho reads it: the command byte, the remaining length a byte per
    read, then the body in exactly `reads` reads."""
    body = len(topic).to_bytes(2, "big") + topic + payload
    length, n = [], len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(bytes([byte | (0x80 if n else 0)]))
        if not n:
            break
    step = -(-len(body) // reads)
    pieces = [body[i:i + step] for i in range(0, len(body), step)]
    assert len(pieces) == reads
    return [b"\x30", *length, *pieces]


def _client(pieces: list[bytes]) -> tuple[mqtt.Client, list[bytes]]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    got: list[bytes] = []
    client.on_message = lambda _c, _u, msg: got.append(msg.payload)
    client._sock = _Trickle(pieces)  # as connected: loop_read reads from this socket
    return client, got


def test_paho_leaves_a_message_completed_by_its_100th_read_unhandled():
    """The library behaviour the fix is for: without it, the whole message sits in paho."""
    payload = bytes(range(256)) * 40
    client, got = _client(_publish_packet(b"gossipfl/n/me/inbox/you", payload))
    client.loop_read()
    assert got == []
    client.loop_read()  # any later read (here with no new bytes at all) hands it on
    assert got == [payload]


def test_the_message_completed_by_the_100th_read_is_delivered_by_that_read():
    payload = bytes(range(256)) * 40
    client, got = _client(_publish_packet(b"gossipfl/n/me/inbox/you", payload))
    handle_whole_packets(client)
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert got == [payload]


def test_messages_in_fewer_reads_are_delivered_once():
    payload = bytes(range(256)) * 40
    client, got = _client(_publish_packet(b"t", payload, reads=PIECES - 1))
    handle_whole_packets(client)
    client.loop_read()
    client.loop_read()  # nothing more on the socket: nothing more delivered
    assert got == [payload]
