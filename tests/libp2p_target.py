"""A victim for the hostile-network tests: one Libp2pTransport in its own process.

    python -m tests.libp2p_target --seed HEX --allow PEERID ... --max-size N

prints `ADDR <multiaddr>` once listening, then `GOT <sender> <bytes> <sha256-prefix>` per
delivered message, and `COUNTERS <json>` (the transport's counters) when it stops: on
SIGTERM/SIGINT or when stdin closes (so it never outlives the test that started it)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import sys

from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport


async def serve(seed: bytes, allow: list[str], max_size: int, port: int) -> None:
    t = Libp2pTransport(Identity.from_seed(seed), [f"/ip4/127.0.0.1/tcp/{port}"], {}, allowed=set(allow),
                        max_size=max_size)
    await t.start()
    print("ADDR", t.addresses()[0], flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)

    async def report():
        async for sender, data in t:
            print("GOT", sender, len(data), hashlib.sha256(data).hexdigest()[:16], flush=True)

    reporter = asyncio.ensure_future(report())
    try:
        await asyncio.wait([stdin_closed, reporter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        reporter.cancel()
        await t.close()
        print("COUNTERS", json.dumps(dataclasses.asdict(t.counters)), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", required=True)
    p.add_argument("--allow", nargs="*", default=[])
    p.add_argument("--max-size", type=int, required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    try:
        asyncio.run(serve(bytes.fromhex(a.seed), a.allow, a.max_size, a.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
