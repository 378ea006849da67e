"""Pages of a video's history for resuming viewers, read from the store once and shared.

A resume older than the node's ring reads the store. Pages are aligned on seq
(page ``k`` holds seqs ``k*size+1 .. (k+1)*size``), so viewers resuming from
different points of the same stretch ask for the same pages: concurrent
resumers of a video (a node failed, its viewers all come back at once) share
one read per page and the frames are encoded once, and a page read a moment ago
(``linger``) is used again.

A page is only as complete as the channel was when it was read: it records the
highest seq it vouches for (the channel's last seq then, everything up to it is
in the store), and a resumer needing more reads it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livecomments.kernel import events

Frames = list[tuple[int, bytes]]
Fetch = Callable[[str, int, int], Awaitable[list[dict[str, Any]]]]


class _Page:
    __slots__ = ("complete_to", "done_at", "future")

    def __init__(self, future: asyncio.Future[Frames], complete_to: int) -> None:
        self.future = future
        self.complete_to = complete_to
        self.done_at: float | None = None


class ReplayPages:
    """Single-flight, briefly cached reads of aligned history pages."""

    def __init__(
        self,
        fetch: Fetch,
        spawn: Callable[[Awaitable[Any]], object],
        *,
        page_size: int = 200,
        linger: float = 2.0,
        max_pages: int = 64,
    ) -> None:
        self._fetch = fetch
        self._spawn = spawn
        self.page_size = max(1, page_size)
        self._linger = linger
        self._max_pages = max_pages
        self._pages: dict[tuple[str, int], _Page] = {}
        self.reads = 0  # store reads made
        self.shared = 0  # page requests answered by a read in flight or just made
        self.docs = 0  # documents read

    def span(self, seq: int) -> tuple[int, int]:
        """The page holding ``seq``: (index, last seq of the page)."""
        index = (seq - 1) // self.page_size
        return index, (index + 1) * self.page_size

    async def frames(self, video_id: str, seq: int, need: int, known: int) -> Frames:
        """The frames of the page holding ``seq``, complete at least up to ``need``.

        ``known``: the channel's last seq now (what the store is known to hold).
        The read belongs to the node: a caller that goes away stops waiting, the
        others keep theirs.
        """
        index, last = self.span(seq)
        key = (video_id, index)
        page = self._pages.get(key)
        now = time.monotonic()
        if page is not None and page.complete_to >= need and not self._stale(page, now):
            self.shared += 1
        else:
            self._prune(now)
            future: asyncio.Future[Frames] = asyncio.get_running_loop().create_future()
            page = self._pages[key] = _Page(future, min(last, known))
            self._spawn(self._read(key, page, video_id, index * self.page_size + 1, last))
        return await asyncio.shield(page.future)

    def _stale(self, page: _Page, now: float) -> bool:
        return page.done_at is not None and now - page.done_at > self._linger

    async def _read(
        self, key: tuple[str, int], page: _Page, video_id: str, lo: int, hi: int
    ) -> None:
        self.reads += 1
        try:
            docs = await self._fetch(video_id, lo, hi)
        except BaseException as exc:
            if self._pages.get(key) is page:
                del self._pages[key]
            if isinstance(exc, asyncio.CancelledError):
                page.future.cancel()
                raise
            page.future.set_exception(exc)
            page.future.exception()  # retrieved: the waiters get it through shield
            return
        self.docs += len(docs)
        frames: Frames = []
        for doc in docs:
            frame = events.replay_frame(doc)
            if frame is not None:
                frames.append((doc["seq"], frame))
        page.done_at = time.monotonic()
        page.future.set_result(frames)

    def _prune(self, now: float) -> None:
        """Forget stale pages (done at each read: at most ``max_pages`` of them to look at)."""
        for key, page in list(self._pages.items()):
            if self._stale(page, now):
                del self._pages[key]
        # Still full: forget the oldest finished pages (in-flight ones are bounded
        # by the resumers waiting for them).
        for key, page in list(self._pages.items()):
            if len(self._pages) < self._max_pages:
                break
            if page.done_at is not None:
                del self._pages[key]
