"""One trio event loop in a dedicated thread, driven from asyncio.

py-libp2p runs on trio; peers run on asyncio. asyncio -> trio goes through the trio
token's thread-safe `run_sync_soon` (never `trio.from_thread.run` on the asyncio thread:
it would block the loop), and results come back with `loop.call_soon_threadsafe`. A
thread (rather than trio guest mode) keeps slow work on either side from freezing the other.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio


class BridgeClosed(RuntimeError):
    pass


class TrioBridge:
    def __init__(self, name: str = "trio-bridge"):
        self.name = name
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._token is None:
            raise BridgeClosed(f"trio thread failed to start: {self._error!r}")

    def _main(self) -> None:
        async def run():
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        try:
            trio.run(run)
        except BaseException as exc:  # reported to callers via BridgeClosed
            self._error = exc
        finally:
            self._token = None
            self._ready.set()

    def call(self, fn: Callable[..., Awaitable[Any]], *args) -> asyncio.Future:
        """Run `await fn(*args)` on the trio thread; an asyncio future gets its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            fut.set_exception(BridgeClosed("the trio thread is not running"))
            return fut

        def settle(ok: bool, value) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        async def runner():
            try:
                value = await fn(*args)
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
                if isinstance(exc, trio.Cancelled):
                    loop.call_soon_threadsafe(settle, False, BridgeClosed("cancelled"))
                    raise
                loop.call_soon_threadsafe(settle, False, exc)
            else:
                loop.call_soon_threadsafe(settle, True, value)

        try:
            token.run_sync_soon(lambda: nursery.start_soon(runner))
        except trio.RunFinishedError:
            fut.set_exception(BridgeClosed("the trio thread has stopped"))
        return fut

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args) -> None:
        """Start a background task on the trio side (fire and forget)."""
        token, nursery = self._token, self._nursery
        if token is not None and nursery is not None:
            token.run_sync_soon(lambda: nursery.start_soon(fn, *args))

    def stop(self, timeout: float = 10.0) -> None:
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            try:
                token.run_sync_soon(stop.set)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
