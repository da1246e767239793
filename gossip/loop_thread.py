"""A second asyncio event loop in its own thread, for client libraries that do heavy work
inside the loop (paho-mqtt assembles a 50 MB packet there): the peer's loop stays responsive."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    def __init__(self, name: str = "io-loop"):
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()

        def main():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait(10)

    def call(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future:
        """Run `coro` on the thread's loop; await the result from the caller's loop."""
        if self.loop is None:
            raise RuntimeError(f"{self.name}: call start() before calling into the loop thread")
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        self._thread = None
