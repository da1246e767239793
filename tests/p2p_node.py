"""One process of the NAT lab tests: libp2p transports (or a fleet relay) driven over stdin.

    python -m tests.p2p_node SPEC_JSON

SPEC: {"peers": [PEER, ...]} (several transports in this one process, each its own thread)
or {"relay": RELAY}. PEER: {"seed": hex, "listen": [...], "neighbours": {PeerId: addr or null},
"allowed": [...] (default: the neighbours), "relays": [...], "reachability", "hole_punch",
"announce", "state_dir", "max_size", "reconnect_cap", "echo": true (send each update back)}. RELAY: {"seed", "listen", "allowed": [...],
"limits": {...}}.

Prints one JSON object a line: {"event": "ready", "addrs": {PeerId: [...]}} once listening,
{"event": "got", "to", "from", "size", "head"} for each update delivered. Reads one JSON
command a line, and answers each with {"event": "reply", "id": ..., ...}:
  {"op": "send", "from": PeerId, "to": PeerId, "size": n, "head": text}  -> {"ok": bool}
  {"op": "status"}    -> {"status": {PeerId: transport status}}   (peers)
  {"op": "metrics"}   -> {"metrics": {...}}                         (relay)
  {"op": "neighbours", "of": PeerId, "neighbours": {...}}          -> {}
Stops when stdin closes (so it never outlives the test that started it) or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.p2p.relay import RelayLimits
from gossip.p2p.relay_service import RelayService


def say(**event) -> None:
    print(json.dumps(event), flush=True)


def transport(spec: dict) -> Libp2pTransport:
    neighbours = spec.get("neighbours", {})
    return Libp2pTransport(
        Identity.from_seed(bytes.fromhex(spec["seed"])), spec.get("listen", ["/ip4/0.0.0.0/tcp/4001"]), neighbours,
        allowed=set(spec["allowed"]) if "allowed" in spec else None, max_size=spec.get("max_size", 16 << 20),
        relays=spec.get("relays", []), reachability=spec.get("reachability", "auto"),
        hole_punch=spec.get("hole_punch", True), announce=spec.get("announce", []),
        reconnect_cap=spec.get("reconnect_cap", 1.0), state_dir=spec.get("state_dir"))


async def main(spec: dict) -> None:
    loop = asyncio.get_running_loop()
    peers: dict[str, Libp2pTransport] = {}
    relay = None
    if "relay" in spec:
        r = spec["relay"]
        relay = RelayService(Identity.from_seed(bytes.fromhex(r["seed"])), r.get("listen", ["/ip4/0.0.0.0/tcp/4001"]),
                             set(r.get("allowed", [])), limits=RelayLimits(**r.get("limits", {})))
        await relay.start()
        say(event="ready", addrs={relay.identity.peer_id: relay.addresses()})
    else:
        for p in spec["peers"]:
            t = transport(p)
            await t.start()
            peers[t.peer_id] = t
        say(event="ready", addrs={pid: t.addresses() for pid, t in peers.items()})

    echo = {p_spec.get("seed") for p_spec in spec.get("peers", []) if p_spec.get("echo")}

    async def receive(t: Libp2pTransport) -> None:
        answers: set[asyncio.Task] = set()
        async for sender, data in t:
            head = bytes(data[:32]).decode(errors="replace")
            say(event="got", to=t.peer_id, **{"from": sender}, size=len(data), head=head)
            if t.identity.seed.hex() in echo and not head.startswith("echo"):
                task = asyncio.ensure_future(t.send(sender, b"echo" + bytes(data[4:])))
                answers.add(task)
                task.add_done_callback(answers.discard)

    async def answer(cmd: dict) -> None:
        reply = {"event": "reply", "id": cmd.get("id")}
        op = cmd.get("op")
        try:
            if op == "send":
                head = cmd.get("head", "").encode()
                data = head + bytes(max(0, cmd["size"] - len(head)))
                reply["ok"] = await peers[cmd["from"]].send(cmd["to"], data)
            elif op == "status":
                reply["status"] = {pid: await t.connectivity() for pid, t in peers.items()}
            elif op == "metrics":
                reply["metrics"] = relay.metrics() if relay is not None else {}
            elif op == "neighbours":
                await peers[cmd["of"]].set_neighbours(cmd["neighbours"])
            else:
                reply["error"] = f"unknown op {op!r}"
        except Exception as exc:  # reported to the test, which decides
            reply["error"] = f"{type(exc).__name__}: {exc}"
        say(**reply)

    tasks = [asyncio.ensure_future(receive(t)) for t in peers.values()]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pending: set[asyncio.Task] = set()
    try:
        while line := await reader.readline():
            task = asyncio.ensure_future(answer(json.loads(line)))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        for task in [*tasks, *pending]:
            task.cancel()
        for t in peers.values():
            await t.close()
        if relay is not None:
            await relay.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    try:
        asyncio.run(main(json.loads(sys.argv[1])))
    except KeyboardInterrupt:
        pass
