"""Per-video settings and bans: durable in the store, enforced from Redis.

The store is the truth; Redis holds what the post admission check reads in
its single round trip. Video settings are cached aside (read through, dropped
on change). Bans are copied into Redis as keys that expire with the ban, and a
marker says the copy is complete: when Redis loses its data the marker goes
with it and the next post reloads every active ban before it is admitted.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from comment_service.limits import Limiter
from livecomments.errors import Unavailable
from livecomments.events import iso
from livecomments.store import Store, utcnow

log = logging.getLogger(__name__)

GLOBAL = "*"  # the scope of a ban on every video (video ids never contain '*')
SETTINGS_TTL = 300  # seconds a video's cached settings live in Redis


def ban_json(doc: dict[str, Any]) -> dict[str, Any]:
    expires = doc.get("expires_at")
    return {
        "user_id": str(doc["user_id"]),
        "username": doc.get("username"),
        "video_id": None if doc["scope"] == GLOBAL else doc["scope"],
        "reason": doc.get("reason") or "",
        "banned_by": str(doc["by"]),
        "created_at": iso(doc["created_at"], "seconds"),
        "expires_at": iso(expires, "seconds"),
    }


class Policies:
    def __init__(self, store: Store, redis: Redis, limiter: Limiter) -> None:
        self._store = store
        self._redis = redis
        self._limiter = limiter

    # -- video settings -------------------------------------------------------

    async def video_settings(self, video_id: str) -> dict[str, Any]:
        doc = await self._store.video_settings(video_id)
        return {"video_id": video_id, "slow_mode_seconds": int(doc.get("slow_mode", 0))}

    async def set_video_settings(self, video_id: str, slow_mode: int, by: int) -> dict[str, Any]:
        await self._store.set_video_settings(
            video_id, {"slow_mode": slow_mode, "updated_by": by, "updated_at": utcnow()}
        )
        await self._redis_call(self._redis.delete(self._limiter.key("vs", video_id)))
        return await self.video_settings(video_id)

    async def cache_video_settings(self, video_id: str) -> None:
        settings = await self.video_settings(video_id)
        key = self._limiter.key("vs", video_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, "slow_mode", settings["slow_mode_seconds"])
        pipe.expire(key, SETTINGS_TTL)
        await self._redis_call(pipe.execute())

    # -- bans ---------------------------------------------------------------------

    async def ban(
        self,
        scope: str,
        user: dict[str, Any],
        seconds: int | None,
        reason: str,
        by: int,
    ) -> dict[str, Any]:
        now = utcnow()
        doc = {
            "_id": f"{scope}:{user['_id']}",
            "scope": scope,
            "user_id": user["_id"],
            "username": user["username"],
            "reason": reason,
            "by": by,
            "created_at": now,
            "expires_at": now + dt.timedelta(seconds=seconds) if seconds else None,
        }
        await self._store.put_ban(doc)
        await self._redis_call(self._set_ban_key(doc))
        return doc

    async def unban(self, scope: str, user_id: int) -> bool:
        found = await self._store.delete_ban(f"{scope}:{user_id}")
        await self._redis_call(self._redis.delete(self._limiter.key("ban", scope, user_id)))
        return found

    async def bans(self, scope: str | None) -> list[dict[str, Any]]:
        return await self._store.active_bans(scope)

    async def load_bans(self) -> None:
        """Copy every active ban into Redis, then mark the copy complete."""
        docs = await self._store.active_bans()
        for doc in docs:
            await self._redis_call(self._set_ban_key(doc))
        await self._redis_call(self._redis.set(self._limiter.key("bans-loaded"), b"1"))
        log.info("loaded %d active bans into Redis", len(docs))

    async def _set_ban_key(self, doc: dict[str, Any]) -> None:
        key = self._limiter.key("ban", doc["scope"], doc["user_id"])
        expires = doc.get("expires_at")
        if expires is None:
            await self._redis.set(key, b"1")
            return
        left_ms = int((expires - utcnow()).total_seconds() * 1000)
        if left_ms > 0:
            await self._redis.set(key, b"1", px=left_ms)

    @staticmethod
    async def _redis_call(awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
