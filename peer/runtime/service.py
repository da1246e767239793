"""Running a peer as a long-lived process: signals, a clean stop, exit codes, and systemd's
notify protocol (READY once started, the watchdog fed from the loop, STOPPING on the way out)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from ..config.parse import PeerConfig
from ..ops.systemd import Notifier, feed_watchdog, watchdog_interval
from .driver import Peer

log = logging.getLogger("gossipfl.peer")


async def serve(cfg: PeerConfig, rounds: int | None = None, accept_rollback: bool = False) -> int:
    """Run until the configured rounds are done or SIGINT/SIGTERM; a second signal exits at once.
    `accept_rollback`: start even from a state older than the neighbours witnessed (logged)."""
    from .process import configure_process

    configure_process()
    peer = Peer.from_config(cfg)
    peer.witness.accept = accept_rollback
    loop = asyncio.get_running_loop()
    signals = {"count": 0}
    notifier = Notifier.from_env()

    def on_signal(signum):
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("%s received: finishing cleanly (send again to exit at once)", signal.Signals(signum).name)
        notifier.stopping()
        peer.request_stop()

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s)
    watchdog = None
    try:
        await peer.start()
        notifier.ready(f"peer {cfg.name} started" if cfg.name else "peer started")
        interval = watchdog_interval()
        if notifier.enabled and interval:
            watchdog = asyncio.create_task(feed_watchdog(notifier, interval), name="systemd-watchdog")
        await peer.run(rounds)
    finally:
        notifier.stopping()
        if watchdog is not None:
            watchdog.cancel()
        notifier.close()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)
    return 0
