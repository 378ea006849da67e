"""Reactions: counted in Redis, pushed as aggregates, flushed to the store.

A click is one Lua call: the user joins the comment's set for that reaction
(so each user counts once per comment per reaction) and, if that changed
anything, the count moves and the comment is marked dirty. Every replica runs
two loops: the pusher claims dirty videos (a video can be claimed once per
push interval, whichever replica gets it) and sends one ``reactions`` event
with the totals of its changed comments; the flusher pops changed comments and
writes their totals to the store. Totals, not deltas, so a lost push or a
flush done twice leaves nothing wrong behind.

Some keys are built from the service prefix inside the claim script
(``reactions_claim.lua``), which is fine on a single Redis (or a primary with
replicas); Redis Cluster would need hash tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.comment_service.dispatch import DispatchClient
from livecomments.kernel import events
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys, parse_unflushed_member
from livecomments.kernel.store import Store

log = logging.getLogger(__name__)

# The fixed set, by name (names travel in URLs and JSON keys; the emoji is for display).
EMOJI: dict[str, str] = {
    "like": "\U0001f44d",
    "heart": "\u2764\ufe0f",
    "laugh": "\U0001f602",
    "wow": "\U0001f62e",
    "sad": "\U0001f622",
    "fire": "\U0001f525",
}
KEY_TTL = 3 * 24 * 3600  # reaction state outlives any live stream; the store keeps the totals


def _pairs(flat: list[Any]) -> dict[str, int]:
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Reactions:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        store: Store,
        dispatcher: DispatchClient,
        *,
        push_interval: float,
        flush_interval: float,
    ) -> None:
        self._redis = redis
        self._store = store
        self._dispatcher = dispatcher
        self._push_interval = push_interval
        self._flush_interval = flush_interval
        self._keys = Keys(prefix)
        self._react = scripts.register(redis, "reactions_react")
        self._claim = scripts.register(redis, "reactions_claim")
        self._tasks: list[asyncio.Task[None]] = []
        self.pushed = 0

    async def react(
        self, user_id: int, comment: dict[str, Any], name: str, add: bool
    ) -> tuple[bool, dict[str, int]]:
        """Add or take back one reaction; (whether it changed anything, the new totals)."""
        cid, video = comment["_id"], comment["video_id"]
        seed: list[Any] = []
        for key, value in (comment.get("reactions") or {}).items():
            seed += [key, int(value)]
        keys = [
            self._keys.reaction_users(cid, name),
            self._keys.reaction_counts(cid),
            self._keys.reaction_dirty(video),
            self._keys.reaction_videos(),
            self._keys.reaction_unflushed(),
        ]
        args = [user_id, name, 1 if add else -1, cid, video, KEY_TTL, *seed]
        try:
            changed, flat = await self._react(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable(f"reactions: {exc}") from exc
        return bool(changed), _pairs(flat)

    async def live_counts(self, comment_ids: list[int]) -> dict[int, dict[str, int]]:
        """Current totals from Redis (fresher than the store between flushes)."""
        try:
            return await self._counts(comment_ids)
        except RedisError as exc:
            log.warning("reading reaction counts failed: %s", exc)
            return {}

    async def _counts(self, comment_ids: list[int]) -> dict[int, dict[str, int]]:
        if not comment_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for cid in comment_ids:
            pipe.hgetall(self._keys.reaction_counts(cid))
        results = await pipe.execute()
        return {
            cid: {_text(k): int(v) for k, v in counts.items()}
            for cid, counts in zip(comment_ids, results, strict=True)
            if counts
        }

    # -- the loops ------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.push, self._push_interval / 4)),
            asyncio.create_task(self._loop(self.flush, self._flush_interval)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush()  # what this replica counted since the last flush

    @staticmethod
    async def _loop(step: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception as exc:  # keep the loop alive; the next tick retries
                log.warning("%s failed: %s", getattr(step, "__name__", step), exc)

    async def push(self) -> int:
        """Claim dirty videos and send each one aggregated event; how many were sent."""
        claimed = await self._claim(
            keys=[self._keys.reaction_videos()],
            args=[self._keys.prefix, int(self._push_interval * 1000), 100],
        )
        batch = []
        for entry in claimed:
            video = _text(entry[0])
            counts = {_text(entry[i]): _pairs(entry[i + 1]) for i in range(1, len(entry), 2)}
            if counts:
                batch.append(events.reactions_event(video, counts))
        if batch:
            await self._dispatcher.dispatch(batch)
            self.pushed += len(batch)
        return len(batch)

    async def flush(self) -> int:
        """Write changed totals to the store; how many comments were written."""
        key = self._keys.reaction_unflushed()
        members = await self._redis.spop(key, 1000)
        if not members:
            return 0
        parsed = (parse_unflushed_member(_text(member)) for member in members)
        pairs = [pair for pair in parsed if pair is not None]
        try:
            counts = await self._counts([cid for _, cid in pairs])
            await self._store.set_reactions(
                {(video, cid): counts.get(cid, {}) for video, cid in pairs}
            )
        except Exception:
            await self._redis.sadd(key, *members)  # try again next time
            raise
        return len(pairs)
