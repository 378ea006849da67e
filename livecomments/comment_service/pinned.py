"""The pinned comment as first pages show it: a copy in Redis, beside the history cache.

The truth is the video's document in the store (``Comments.pin``). Every first
page says what is pinned, and first pages are most of the reads during a viral
moment (every joining viewer asks for one), so they read this copy instead:
one key per video holding the pinned comment's public JSON, or ``none``.

The copy is written after the store and before the pin's marker takes its seq,
and a first page reads it after the page took its ``resume``: so a page never
shows less than the markers up to its resume did (the stream replays the rest).
A missing copy (new video, expired, Redis restarted) is filled from the store
with SET NX, so a fill that read the store before a pin cannot overwrite the
pin's own write. An edit of the pinned comment replaces the copy only with a
newer revision of that same comment (``pinned_update.lua``), and so does a
delete, before the store's pin is cleared (a tombstone there reads as nothing
pinned, so deleted text never shows). The copy expires ``TTL`` after it was
written, which bounds how long a write that failed halfway (the store changed,
Redis did not) can show an old pin.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel import events
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys

log = logging.getLogger(__name__)

TTL = 3600  # seconds
NONE = b"none"


class PinnedCache:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._keys = Keys(prefix)
        self._update = scripts.register(redis, "pinned_update")
        self.fills = 0  # first pages that read the store for the pin (shown in /healthz)

    async def get(
        self, video_id: str, load: Callable[[], Awaitable[dict[str, Any] | None]]
    ) -> dict[str, Any] | None:
        """The pinned comment's public JSON (or None), from the copy, else from ``load``."""
        key = self._keys.pinned(video_id)
        try:
            cached = await self._redis.get(key)
        except RedisError as exc:
            log.warning("pinned comment of %s read from the store: %s", video_id, exc)
            cached = None
        if cached == NONE:
            return None
        if cached is not None:
            try:
                view = orjson.loads(cached)
            except orjson.JSONDecodeError:
                view = None
            if isinstance(view, dict):
                # A tombstone: its delete had not unpinned it yet (see Comments.delete).
                return None if view.get("status") == events.STATUS_DELETED else view
        self.fills += 1
        doc = await load()
        view = events.comment_json(doc) if doc is not None else None
        try:
            await self._redis.set(key, _value(view), ex=TTL, nx=True)
        except RedisError:
            pass  # the next page fills it
        return view

    async def put(self, video_id: str, doc: dict[str, Any] | None) -> None:
        """The video's pin changed to ``doc`` (None: unpinned). Raises on a Redis error."""
        view = events.comment_json(doc) if doc is not None else None
        await self._redis.set(self._keys.pinned(video_id), _value(view), ex=TTL)

    async def edited(self, doc: dict[str, Any]) -> None:
        """``doc`` was edited or deleted: if it is the pinned comment, the copy shows it
        (a deleted one reads as nothing pinned)."""
        view = events.comment_json(doc)
        try:
            await self._update(
                keys=[self._keys.pinned(doc["video_id"])],
                args=[view["id"], view["rev"], orjson.dumps(view)],
            )
        except RedisError as exc:
            # The copy may show the old text until it expires; the stream has the edit.
            log.warning("pinned copy of %s not updated after an edit: %s", doc["video_id"], exc)


def _value(view: dict[str, Any] | None) -> bytes:
    return NONE if view is None else orjson.dumps(view)
