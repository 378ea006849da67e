"""Group commit: a call in flight, everything that arrives meanwhile goes in the next.

Concurrent callers each ``await batcher.submit(item)``; the batcher calls
``run(items)`` with whatever has queued, at most ``max_batch`` at a time and
``in_flight`` calls at a time (one by default). Under no load an item goes out at
once (no timer, no added latency); under load, the round trip of the calls in
flight is the window in which the next batch fills. ``run`` returns one result per
item (an exception instance for an item that failed on its own); if it raises,
every item of the batch gets that exception.

More than one call in flight is for a call whose round trip is long and varies
(the dispatch waits for every RTMS node hosting the batch's videos: one slow or far
node would otherwise hold up every later comment); items then leave in batches only
once every call is busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = 256,
        in_flight: int = 1,
    ) -> None:
        self._run = run
        self._max = max_batch
        self._in_flight = max(1, in_flight)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0  # workers that have not ended (counted down as they end)
        self._tasks: set[asyncio.Future[None]] = set()  # their references
        self.calls = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        # A worker takes the queue when it first runs, so what is submitted in the
        # same turn of the loop still goes together; one that finds it empty ends.
        if self._running < self._in_flight:
            self._running += 1
            worker = asyncio.ensure_future(self._drain())
            self._tasks.add(worker)
            worker.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._call()
        finally:
            # In the same step as finding the queue empty: an item submitted from
            # here on starts a worker of its own.
            self._running -= 1

    async def _call(self) -> None:
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
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
