"""Throughput of one update between two peer processes, through the whole path (encode,
sign, send, receive, verify, decode), over libp2p and over MQTT (Mosquitto), next to the
same bytes over a plain TCP socket (the ceiling) and over a bare libp2p yamux stream (no
envelope: the baseline of the 50% target), all in the same run; and the worst asyncio
loop lag seen on either side during the transfers.

    python bench/transport.py            # 10 MB and 50 MB updates
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402
from tests.netfixtures import free_ports, mosquitto_broker  # noqa: E402

SENDER_SEED, RECEIVER_SEED = b"s" * 32, b"r" * 32
SCHEMA = b"\x05" * 32
REPEATS = 3


class LagMonitor:
    """Worst lateness of a 5 ms ticker: how long the event loop was blocked."""

    def __init__(self):
        self.worst = 0.0
        self._task = None

    async def _tick(self):
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - t - 0.005)

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def stop(self):
        self._task.cancel()


def transport(mode: str, ident, port: int, other_port: int | None, other_id: str | None):
    if mode in ("libp2p", "yamux"):
        from gossip.libp2p_transport import Libp2pTransport
        nbrs = {other_id: f"/ip4/127.0.0.1/tcp/{other_port}/p2p/{other_id}"} if other_id else {}
        return Libp2pTransport(ident, [f"/ip4/127.0.0.1/tcp/{port}"], nbrs, max_size=1 << 30)
    from gossip.mqtt_transport import MqttTransport
    return MqttTransport(ident, "bench", port=port, max_size=1 << 30)


async def receiver(mode: str, port: int, n_values: int, count: int) -> None:
    """Child process: receive `count` messages, verify and decode each, report when done."""
    from gossip.identity import Identity
    from gossip.verify import Accepted, Verifier
    from peer.runtime.process import configure_process

    configure_process()
    me, sender = Identity.from_seed(RECEIVER_SEED), Identity.from_seed(SENDER_SEED)
    lag = LagMonitor()
    done_at = []
    if mode == "tcp":
        got = asyncio.Queue()

        async def handle(reader, writer):
            while True:
                try:
                    head = await reader.readexactly(8)
                except asyncio.IncompleteReadError:
                    break
                data = await reader.readexactly(int.from_bytes(head, "big"))
                await got.put(data)

        await asyncio.start_server(handle, "127.0.0.1", port)
        print("ready", flush=True)
        lag.start()
        for _ in range(count):
            await got.get()
            done_at.append(time.time())
        # the server is left to the process exit: closing it cancels the idle handler noisily
    else:
        t = transport(mode, me, port, None, None)
        await t.start()
        print("ready", flush=True)
        lag.start()
        v = Verifier("bench", {sender.peer_id}, SCHEMA, n_values, max_size=1 << 30, max_lag=10**9)
        it = t.__aiter__()
        for _ in range(count):
            _, data = await it.__anext__()
            while not data:  # the sender's connection warm-up
                _, data = await it.__anext__()
            if mode != "yamux":  # as a peer does: large messages are verified off the event loop
                assert isinstance(await asyncio.to_thread(v.verify, data, 0), Accepted)
            done_at.append(time.time())
        await t.close()
    lag.stop()
    print(json.dumps({"done_at": done_at, "lag": lag.worst}), flush=True)


async def sender(mode: str, port: int, mb: int, broker: int | None) -> dict:
    import torch

    from gossip.envelope import seal_update
    from gossip.identity import Identity
    from peer.runtime.process import configure_process

    configure_process()
    n_values = mb * 1_000_000 // 4
    x = torch.randn(n_values)
    raw = x.numpy().tobytes()
    recv_port = broker if mode == "mqtt" else port
    child = subprocess.Popen([sys.executable, __file__, "--child", mode, str(recv_port), str(n_values), str(REPEATS)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        me, peer = Identity.from_seed(SENDER_SEED), Identity.from_seed(RECEIVER_SEED)
        lag = LagMonitor()
        starts = []
        if mode == "tcp":
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            lag.start()
            for _ in range(REPEATS):
                starts.append(time.time())
                writer.write(len(raw).to_bytes(8, "big") + raw)
                await writer.drain()
                await asyncio.sleep(0.5)
            writer.close()
        else:
            t = transport(mode, me, broker if mode == "mqtt" else 0, port, peer.peer_id)
            await t.start()
            lag.start()
            if mode != "mqtt":
                await t.send(peer.peer_id, b"")  # connection set-up is not part of the transfer
            for _ in range(REPEATS):
                starts.append(time.time())
                data = raw if mode == "yamux" else (await asyncio.to_thread(  # as a peer does
                    seal_update, me, x, net="bench", round=0, schema=SCHEMA)).data
                assert await t.send(peer.peer_id, data)
                await asyncio.sleep(0.5 + mb / 50)
            await t.close()
        lag.stop()
        out = json.loads(child.stdout.readline())
    finally:
        child.wait(60)
    times = [d - s for s, d in zip(starts, out["done_at"][-REPEATS:], strict=True)]
    best = min(times)
    return {"seconds": best, "MBps": mb / best, "lag_ms": 1000 * max(lag.worst, out["lag"])}


def main() -> None:
    answer_help(__doc__)
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, port, n_values, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        asyncio.run(receiver(mode, port, n_values, count))
        return
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp, mosquitto_broker(Path(tmp)) as broker_port:
        for mb in (10, 50):
            res = {}
            for mode in ("tcp", "yamux", "libp2p", "mqtt"):
                if mode == "mqtt" and broker_port is None:
                    continue
                port = free_ports(1)[0]
                res[mode] = asyncio.run(sender(mode, port, mb, broker_port))
            for mode, r in res.items():
                vs_yamux = r["MBps"] / res["yamux"]["MBps"]
                rows.append([f"{mb} MB", {"tcp": "plain TCP socket (ceiling)", "yamux": "bare libp2p yamux stream",
                                         "libp2p": "libp2p: seal+send+verify+decode",
                                         "mqtt": "MQTT via Mosquitto: full path"}[mode],
                             r["seconds"], r["MBps"], f"{100 * vs_yamux:.0f}%", f"{r['lag_ms']:.0f}"])
                figures[f"{mode}/{mb}MB"] = {k: round(v, 4) for k, v in r.items()} | {
                    "vs_yamux": round(vs_yamux, 3)}
    print_table(["update", "path", "seconds", "MB/s", "of yamux", "worst loop lag ms"], rows,
                title="one update between two processes on 127.0.0.1 (best of 3)")
    emit_json(figures)


if __name__ == "__main__":
    main()
