"""Virtual time for the protocol engine: every peer of a simulation runs on one event loop
whose clock is simulated, so deadlines, latency, stragglers and partitions are simulated seconds
and a run's result does not depend on how busy the machine is.

The loop's clock (`loop.time()`, which the peer's driver reads) only moves when nothing is ready
to run: then it jumps to the next timer. Work a peer would hand to a thread (training, sealing,
verifying large updates) runs inline, taking no simulated time, so the order in which the
engine trains its peers never decides who misses a deadline. Real peers never use this: a
gateway's clock is the monotonic one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def run_in_executor(self, executor, func, *args) -> asyncio.Future:
        """Run `func` now, on the loop's thread: it takes no simulated time."""
        future = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:  # delivered to whoever awaits it, as a thread's would be
            future.set_exception(exc)
        return future

    def _run_once(self) -> None:
        if not self._ready and self._scheduled:  # idle: jump to the next timer
            self._now = max(self._now, self._scheduled[0]._when)
        super()._run_once()


def run_virtual(coro: Coroutine[Any, Any, Any]):
    """asyncio.run(coro) on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = asyncio.all_tasks(loop)  # e.g. messages still in flight: cancelled, as asyncio.run does
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
