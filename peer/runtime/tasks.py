"""A peer's background work, tracked in one place: every task is named, a task that fails is
reported to the owner at once (never lost in a forgotten future), and all are cancelled and
awaited when the peer closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

log = logging.getLogger("gossipfl.peer")


class TaskSet:
    def __init__(self, on_failure: Callable[[str, BaseException], None]):
        self.on_failure = on_failure
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, what: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=what)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self.on_failure(task.get_name(), exc)

    async def wait(self, timeout: float) -> None:
        """Let running tasks finish for up to `timeout` seconds."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    async def cancel(self) -> None:
        """Cancel every task and wait until each has ended."""
        tasks = set(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
