"""The MQTT transport (aiomqtt), for sites that already run a broker.

The broker only relays bytes: every message is still a signed envelope that the receiver
verifies; trust and aggregation stay with the peers. Each peer subscribes to
`PREFIX/NETWORK/PEER_ID/inbox/+` and publishes to `PREFIX/NETWORK/NEIGHBOUR/inbox/SENDER`
with QoS 1. The last level is the sender as the broker lets it through: a hint only, unless
the broker enforces it with the ACL that `gossipfl topology plan --transport mqtt` writes.
It keeps a retained status message under `PREFIX/NETWORK/PEER_ID/status` for dashboards
(`gossipfl fleet status`): the peer's last status with `"online": true` while connected, an
explicit `"online": false` on a clean close, and a last will (published by the broker when
the connection dies without one: a killed process, a lost link) saying the same.
The network admin publishes membership records into the inboxes the same way, under its own
PeerId as the sender (publish_to_inboxes); a record proves itself by its admin signature.
The MQTT client runs on its own event loop thread (gossip.loop_thread): paho moves whole
packets inside its loop, which stalled the peer's loop for 150 ms on a 50 MB update.
What arrives and the peer has not taken yet is bounded per sender and in total
(gossip.inbox_budget): a message is checked the moment paho hands it over, before any queue
(aiomqtt's own queue is bypassed: it had no bound), and one that does not fit is dropped and
counted by reason (`dropped`), so a flood into an inbox costs a fixed amount of memory. An
update is charged to its sender only once proven (gossip.inbox_gate: a sender that may send,
named by the topic too, not let in before, its signature and payload hash): without broker
logins a flood under a neighbour's name cannot crowd out that neighbour's real updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Container, Iterable

import aiomqtt

from .errors import TransportError
from .identity import Identity
from .inbox_budget import INBOX_FULL, TOO_LARGE, InboxBudget
from .inbox_gate import InboxGate
from .loop_thread import LoopThread
from .membership import MAX_RECORD, is_record
from .transport import QueuedTransport

log = logging.getLogger("gossipfl.mqtt")
PUBLISH_TIMEOUT = 60.0
STATUS_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
IO_SLACK = 5.0  # on top of a publish's own timeout, for the hop to the MQTT thread and back
# CONNACK codes that retrying cannot fix: v3.1.1 (4, 5) and v5 (134 bad login, 135 not authorized)
LOGIN_REFUSED = {4, 5, 134, 135}


def inbox_topic(prefix: str, network: str, owner: str, sender: str) -> str:
    """Where `sender` publishes updates for `owner` (the broker ACL of a plan uses the same)."""
    return f"{prefix}/{network}/{owner}/inbox/{sender}"


def status_topic(prefix: str, network: str, owner: str) -> str:
    return f"{prefix}/{network}/{owner}/status"


def _code(rc) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def _refused(granted) -> bool:
    """A SUBACK entry of 0x80 or more is a refusal (an ACL that does not grant the inbox)."""
    return any((_code(c) or 0) >= 0x80 for c in granted)


def handle_whole_packets(paho_client) -> None:
    """Make `loop_read` hand on a packet that it has read whole but left unhandled.

    paho-mqtt 2.x reads a large packet in at most 100 recv calls per loop_read; when the
    100th completes it, it returns before handling it, expecting another call. With an
    external event loop (aiomqtt) the next call comes only when more bytes arrive: a
    complete 4 MB update then waited for the next message or the keepalive ping (up to
    60 s), and the peer waited its whole round deadline with every update received.
    """
    read = paho_client.loop_read

    def loop_read(max_packets: int = 1):
        rc = read(max_packets)
        while rc == 0 and _whole_unhandled(paho_client):
            rc = read(max_packets)
        return rc

    paho_client.loop_read = loop_read


def _whole_unhandled(paho_client) -> bool:
    packet = getattr(paho_client, "_in_packet", None) or {}
    return bool(packet.get("command")) and bool(packet.get("have_remaining")) and packet.get("to_process") == 0


class _Refused(aiomqtt.MqttError):
    """The broker refused this login or its inbox subscription: retrying will not help."""


class MqttTransport(QueuedTransport):
    def __init__(self, identity: Identity, network: str, *, host: str = "127.0.0.1", port: int = 1883,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 ca_file: str | None = None, prefix: str = "gossipfl", status: bool = True,
                 max_size: int = 64 * 1024 * 1024, inbox: int = 256, name: str = "",
                 allowed: Container[str] | None = None, neighbours: Iterable[str] = ()):
        """`allowed`: who may send updates (read live; None: anyone), `neighbours`: who gets a
        share of the inbox of its own (set_neighbours replaces them)."""
        self.identity, self.peer_id, self.network, self.name = identity, identity.peer_id, network, name
        self.host, self.port, self.username, self.password = host, port, username, password
        self.tls, self.ca_file, self.prefix, self.publish_status = tls, ca_file, prefix, status
        super().__init__(inbox)
        self.max_size = max_size
        share = 2 * max(max_size, MAX_RECORD)  # two updates (or records) of one sender waiting
        self.budget = InboxBudget(share, total_messages=inbox)
        if neighbours:
            self.budget.set_known(neighbours)
        self.gate = InboxGate(allowed)
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self.client: aiomqtt.Client | None = None
        self._task: asyncio.Task | None = None
        self.io: LoopThread | None = None
        self.closed = True
        self._ever_connected = False
        self._last_error = ""
        self._last_status: dict = {}

    def topic(self, peer_id: str, leaf: str) -> str:
        return f"{self.prefix}/{self.network}/{peer_id}/{leaf}"

    def inbox(self) -> str:
        return inbox_topic(self.prefix, self.network, self.peer_id, "+")

    def addresses(self) -> list[str]:
        return [f"mqtt://{self.host}:{self.port}/{self.topic(self.peer_id, 'inbox')}"]

    def _login(self) -> str:
        return f"as {self.username!r}" if self.username else "anonymously"

    def _offline(self, reason: str) -> bytes:
        """The status saying this peer is gone (its last round kept when there was one)."""
        return json.dumps({**self._identity_status(), **self._last_status, "online": False, "reason": reason,
                           "ts": time.time()}).encode()

    def _identity_status(self) -> dict:
        return {"v": 1, "name": self.name, "peer_id": self.peer_id}

    def _client(self) -> aiomqtt.Client:
        tls_context = None
        if self.tls:
            tls_context = ssl.create_default_context(cafile=self.ca_file)
        will = aiomqtt.Will(status_topic(self.prefix, self.network, self.peer_id), self._offline("connection lost"),
                            qos=1, retain=True)
        client = aiomqtt.Client(self.host, self.port, username=self.username, password=self.password,
                                identifier=f"gossipfl-{self.peer_id[-16:]}", tls_context=tls_context,
                                timeout=CONNECT_TIMEOUT, will=will)
        handle_whole_packets(client._client)
        client._client.on_message = self._on_message  # instead of aiomqtt's unbounded queue
        return client

    @property
    def dropped(self):
        """Received messages dropped, by reason (gossip.inbox_budget)."""
        return self.budget.dropped

    def _on_message(self, _client, _userdata, message) -> None:
        """On the MQTT thread, as paho hands over a message: proven (the gate says whose share
        pays), held if that share and the total have room, then handed to the peer's loop;
        else dropped and counted."""
        payload, loop = message.payload, self._main_loop
        hint = message.topic.rsplit("/", 1)[-1]
        if loop is None or not isinstance(payload, bytes | bytearray):
            return
        if not self._fits(payload):
            self.budget.refuse(TOO_LARGE)
            self._note_drops()
            return
        share, uid, reason = self.gate.check(hint, payload)
        if reason is not None or not self.budget.take(share, len(payload)):
            if reason is not None:
                self.budget.refuse(reason)
            self._note_drops()
            return
        if uid is not None:
            self.gate.admitted(uid)
        try:
            loop.call_soon_threadsafe(self._deliver_held, share, hint, bytes(payload))
        except RuntimeError:  # the peer's loop is closed: we are going away
            self.budget.give_back(share, len(payload))

    def _note_drops(self) -> None:
        total = sum(self.budget.dropped.values())
        if total & (total - 1) == 0:  # the 1st, 2nd, 4th, 8th, ... drop: a flood is one line per doubling
            log.warning("inbox over its bounds: dropped %s so far", dict(self.budget.dropped))

    def _deliver_held(self, share: str, sender: str, data: bytes) -> None:
        """On the peer's loop: queue a message the budget holds under `share`."""
        try:
            self.queue.put_nowait((share, sender, data))
        except asyncio.QueueFull:
            self.budget.give_back(share, len(data), INBOX_FULL)

    async def _iterate(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            share, sender, data = item
            self.budget.give_back(share, len(data))
            yield sender, data

    async def set_neighbours(self, addrs) -> None:
        self.budget.set_known(addrs)

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.queue.maxsize)
        self.budget.clear()
        self.closed = False
        self.io = io = LoopThread(f"mqtt-{self.peer_id[-6:]}")
        io.start()
        error = await io.call(self._start_on_io(asyncio.get_running_loop()))
        if error is not None:
            self.closed = True
            io.stop()
            raise TransportError(f"cannot reach the MQTT broker at {self.host}:{self.port}{error}")

    async def _start_on_io(self, main_loop: asyncio.AbstractEventLoop) -> str | None:
        """On the MQTT thread: start the client task, wait for the first connection.
        `main_loop` is the peer's loop, where received messages are delivered."""
        connected = asyncio.Event()
        self._last_error = ""
        self._main_loop = main_loop
        self._task = task = asyncio.get_running_loop().create_task(self._run(connected))
        waiter = asyncio.ensure_future(connected.wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            task.add_done_callback(self._task_ended)
            return None
        waiter.cancel()
        exc = task.exception() if task.done() else None
        task.cancel()
        if exc:
            return f": {exc}"
        return f": {self._last_error}" if self._last_error else " (timed out)"

    def _task_ended(self, task: asyncio.Task) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not self.closed:
            self._failed(exc)  # the client loop died: the peer must know

    async def _run(self, connected: asyncio.Event) -> None:
        delay = 0.5
        while not self.closed:
            try:
                async with self._client() as client:
                    self.client = client
                    granted = await client.subscribe(self.inbox(), qos=1)
                    if _refused(granted):
                        raise _Refused(f"the broker refused the subscription to {self.inbox()} "
                                       f"for the login {self._login()} (check its ACL)")
                    connected.set()
                    self._ever_connected = True
                    delay = 0.5
                    log.info("connected to MQTT broker %s:%d", self.host, self.port)
                    if self.publish_status:  # online again: replaces a will the broker may have published
                        await self._status({**self._identity_status(), **self._last_status, "online": True})
                    async for _ in client.messages:  # messages go by _on_message: this only waits for a
                        pass  # lost connection (MqttError)
            except aiomqtt.MqttError as exc:
                self.client = None
                connected.clear()
                if self.closed:
                    return
                if isinstance(exc, aiomqtt.MqttCodeError) and _code(exc.rc) in LOGIN_REFUSED:
                    exc = _Refused(f"the broker refused the login {self._login()}: {exc} "
                                   "(check transport.username and transport.password)")
                self._last_error = str(exc)
                if isinstance(exc, _Refused) and not self._ever_connected:
                    raise exc  # at start: fail now with the reason, do not retry for CONNECT_TIMEOUT
                log.warning("MQTT connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _fits(self, payload: bytes | bytearray) -> bool:
        """At most max_size (an update of this peer's model), or a membership record of at most
        its own bound (a record naming many neighbours can outgrow the update of a tiny model)."""
        return len(payload) <= self.max_size or (len(payload) <= MAX_RECORD and is_record(payload))

    async def send(self, peer_id: str, data: bytes) -> bool:
        if self.closed or self.client is None or self.io is None:
            return False
        try:  # bounded here too: the round must not hang on the MQTT thread whatever happens there
            return await asyncio.wait_for(self.io.call(self._publish(peer_id, data)), PUBLISH_TIMEOUT + IO_SLACK)
        except TimeoutError:
            log.warning("publish of %d bytes to %s: no answer from the MQTT thread", len(data), peer_id)
            return False

    async def _publish(self, peer_id: str, data: bytes) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(inbox_topic(self.prefix, self.network, peer_id, self.peer_id), bytes(data), qos=1,
                                 timeout=PUBLISH_TIMEOUT)
            return True
        except (TimeoutError, aiomqtt.MqttError) as exc:
            log.warning("publish of %d bytes to %s failed (%s): if the message is large, check the broker's "
                        "maximum packet size (mosquitto: max_packet_size / message_size_limit)",
                        len(data), peer_id, exc or "timeout")
            return False

    async def status(self, info: dict) -> None:
        """Publish `info` (peer.runtime.metrics.PeerMetrics.status()) as the retained, online status.
        A clean close repeats its last values with `"online": false`; the will, fixed when the
        client connects, carries the values known then (always the name and PeerId)."""
        self._last_status = {k: v for k, v in info.items() if k not in ("online", "reason", "ts")}
        if self.publish_status and self.client is not None and self.io is not None and not self.closed:
            try:  # a status is best effort: it never holds the round for longer than this
                await asyncio.wait_for(self.io.call(self._status({**self._identity_status(), **info, "online": True})),
                                       STATUS_TIMEOUT + IO_SLACK)
            except TimeoutError:
                log.warning("status publish: no answer from the MQTT thread within %.0fs", STATUS_TIMEOUT + IO_SLACK)

    async def _status(self, info: dict) -> None:
        client = self.client
        if client is None:
            return
        info.setdefault("ts", time.time())
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
            await client.publish(status_topic(self.prefix, self.network, self.peer_id), json.dumps(info), qos=1,
                                 retain=True, timeout=STATUS_TIMEOUT)

    async def close(self, reason: str = "stopped") -> None:
        """Disconnect; the retained status says `reason` ("stopped", "revoked", ...)."""
        if self.closed:
            return
        self.closed = True
        if self.io is not None:
            io = self.io
            with contextlib.suppress(Exception):
                await asyncio.wait_for(io.call(self._stop_on_io(reason)), 10)
            await asyncio.to_thread(io.stop)
        self._end()

    async def _stop_on_io(self, reason: str) -> None:
        client = self.client
        if self.publish_status and client is not None:  # a clean close says so (the will is for the rest)
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                await client.publish(status_topic(self.prefix, self.network, self.peer_id), self._offline(reason),
                                     qos=1, retain=True, timeout=5)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def publish_to_inboxes(sender: str, network: str, data: bytes, owners: list[str], *, host: str, port: int,
                             username: str | None, password: str | None, tls: bool = False,
                             ca_file: str | None = None, prefix: str = "gossipfl") -> dict[str, bool]:
    """Publish `data` into each owner's inbox under `sender`, on one short connection (no
    subscription, no status, no will: the network admin's login may only write inboxes).
    An owner maps to True when the broker acknowledged the message (QoS 1); a broker that
    refuses the login raises TransportError."""
    tls_context = ssl.create_default_context(cafile=ca_file) if tls else None
    client = aiomqtt.Client(host, port, username=username, password=password, tls_context=tls_context,
                            timeout=CONNECT_TIMEOUT, identifier=f"gossipfl-admin-{sender[-12:]}")
    login = f"as {username!r}" if username else "anonymously"
    try:
        async with client:
            done = {}
            for owner in owners:
                try:
                    await client.publish(inbox_topic(prefix, network, owner, sender), bytes(data), qos=1,
                                         timeout=STATUS_TIMEOUT)
                    done[owner] = True
                except (TimeoutError, aiomqtt.MqttError) as exc:
                    log.warning("publish to %s's inbox failed: %s", owner, exc or "timeout")
                    done[owner] = False
            return done
    except aiomqtt.MqttError as exc:
        why = "refused the login" if isinstance(exc, aiomqtt.MqttCodeError) and _code(exc.rc) in LOGIN_REFUSED \
            else "cannot be reached"
        raise TransportError(f"the MQTT broker at {host}:{port} {why} {login}: {exc}") from None
