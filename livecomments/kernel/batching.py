"""Group commit: one call in flight, everything that arrives meanwhile goes in the next.

Concurrent callers each ``await batcher.submit(item)``; the batcher calls
``run(items)`` with whatever has queued, at most ``max_batch`` at a time and
one call at a time. Under no load an item goes out at once (no timer, no added
latency); under load, the round trip of one call is the window in which the
next batch fills. ``run`` returns one result per item (an exception instance
for an item that failed on its own); if it raises, every item of the batch
gets that exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self, run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], max_batch: int = 256
    ) -> None:
        self._run = run
        self._max = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.calls = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                self.calls += 1
                self.items += len(batch)
                try:
                    results = await self._run([item for item, _ in batch])
                except BaseException as exc:  # handed to every waiter of the batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._worker = None
