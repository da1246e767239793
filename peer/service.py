"""Running a peer as a long-lived process: signals, a clean stop, exit codes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from .config import PeerConfig
from .node import Peer

log = logging.getLogger("gossipfl.peer")


async def serve(cfg: PeerConfig, rounds: int | None = None) -> int:
    """Run until the configured rounds are done or SIGINT/SIGTERM; a second signal exits at once."""
    from .runtime import configure_process

    configure_process()
    peer = Peer.from_config(cfg)
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum):
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("%s received: finishing cleanly (send again to exit at once)", signal.Signals(signum).name)
        peer.request_stop()

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s)
    try:
        await peer.start()
        await peer.run(rounds)
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)
    return 0
