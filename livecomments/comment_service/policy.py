"""Per-video settings and bans: durable in the store, enforced from Redis.

The store is the truth; Redis holds what the post admission check reads in
its single round trip, so posting never reads the store. Both are copies
with a marker that says the copy is complete: when Redis loses its data the
marker goes with it, and the next post reloads the copy before it is admitted.

- Bans: one key per ban, expiring with the ban.
- Video settings: a hash per video whose settings differ from the defaults
  (slow mode on, a hold threshold or a minimum account age of its own, as shield
  mode sets them; every other video has none, and the check reads that as the
  defaults). Written on every change. The copy is also reloaded every
  ``SETTINGS_RESYNC`` seconds (its marker expires), which bounds how long a
  change whose Redis write failed can go unenforced. (Until this copy, settings
  were cached aside per video: the first post of every video, and of every
  video again every 5 minutes, waited for a store read; under the 100-video
  benchmark that was most of the write path's p99.)
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.comment_service.limits import Limiter
from livecomments.kernel.errors import Forbidden, Unavailable
from livecomments.kernel.events import iso
from livecomments.kernel.redis import scripts
from livecomments.kernel.store import Store, utcnow

log = logging.getLogger(__name__)

GLOBAL = "*"  # the scope of a ban on every video (video ids never contain '*')
SETTINGS_RESYNC = 300  # seconds between full reloads of the settings copy


def _settings_json(video_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    shield = doc.get("shield")
    hold = doc.get("hold_threshold")
    return {
        "video_id": video_id,
        "slow_mode_seconds": int(doc.get("slow_mode", 0)),
        "hold_threshold": float(hold) if hold is not None else None,
        "min_account_age_seconds": int(doc.get("min_account_age", 0)),
        "shield": bool(shield),
        "shield_since": iso(shield.get("at")) if shield else None,
    }


def _redis_fields(doc: dict[str, Any]) -> dict[str, int]:
    """What the admission check reads of a video's settings: only what is not at
    its default (an empty result: the video has no hash at all)."""
    fields: dict[str, int] = {}
    if int(doc.get("slow_mode", 0)) > 0:
        fields["slow_mode"] = int(doc["slow_mode"])
    if doc.get("hold_threshold") is not None:
        fields["hold"] = round(float(doc["hold_threshold"]) * 1000)
    if int(doc.get("min_account_age", 0)) > 0:
        fields["min_age"] = int(doc["min_account_age"]) * 1000
    return fields


@dataclass(frozen=True, slots=True)
class ShieldPreset:
    """What shield mode applies at once (settings ``shield_*``)."""

    slow_mode: int  # at least this (seconds)
    hold_threshold: float  # at most this
    min_account_age: int  # at least this (seconds)


def _protected_from(role: str) -> str | None:
    """The role whose bans ``role`` may not replace or lift (admins may touch any)."""
    return None if role == "admin" else "admin"


def _admins_ban() -> Forbidden:
    return Forbidden(
        "an admin set this ban: only an admin can change or lift it", code="ban_set_by_admin"
    )


class Policies:
    def __init__(self, store: Store, redis: Redis, limiter: Limiter) -> None:
        self._store = store
        self._redis = redis
        self._keys = limiter.keys
        self._resync = scripts.register(redis, "policy_resync")

    # -- video settings -------------------------------------------------------

    async def video_settings(self, video_id: str) -> dict[str, Any]:
        return _settings_json(video_id, await self._store.video_settings(video_id))

    async def set_video_settings(self, video_id: str, slow_mode: int, by: int) -> dict[str, Any]:
        doc = await self._store.set_video_settings(
            video_id, {"slow_mode": slow_mode, "updated_by": by, "updated_at": utcnow()}
        )
        await self._copy_settings(video_id, doc)
        return _settings_json(video_id, doc)  # the stored document, as the update returned it

    async def set_shield(
        self, video_id: str, on: bool, by: int, preset: ShieldPreset
    ) -> dict[str, Any]:
        """Shield mode on (the preset, at once) or off (the settings from before it).

        On saves the video's settings as they are, then makes each stricter: slow
        mode at least, the hold threshold at most, the minimum account age at
        least the preset's. Off puts the saved ones back (a change made while the
        shield was up goes with it). Turning it on or off twice changes nothing.
        """
        now = utcnow()
        doc = await self._store.video_settings(video_id)
        if on and not doc.get("shield"):
            slow, age = int(doc.get("slow_mode", 0)), int(doc.get("min_account_age", 0))
            hold = doc.get("hold_threshold")
            saved = {"slow_mode": slow, "hold_threshold": hold, "min_account_age": age}
            changes = {
                "slow_mode": max(slow, preset.slow_mode),
                "hold_threshold": preset.hold_threshold
                if hold is None
                else min(float(hold), preset.hold_threshold),
                "min_account_age": max(age, preset.min_account_age),
                "shield": {"by": by, "at": now, "saved": saved},
                "updated_by": by,
                "updated_at": now,
            }
            doc = await self._store.switch_shield(video_id, True, changes, {})
        elif not on and doc.get("shield"):
            saved = doc["shield"].get("saved") or {}
            changes = {"slow_mode": int(saved.get("slow_mode", 0))}
            changes.update(updated_by=by, updated_at=now)
            removed = {"shield": ""}
            for key in ("hold_threshold", "min_account_age"):
                if saved.get(key):
                    changes[key] = saved[key]
                else:
                    removed[key] = ""
            doc = await self._store.switch_shield(video_id, False, changes, removed)
        await self._copy_settings(video_id, doc)
        return _settings_json(video_id, doc)

    async def _copy_settings(self, video_id: str, doc: dict[str, Any]) -> None:
        """Write a video's settings where the admission check reads them (see the module)."""
        started = time.time_ns() // 1_000_000
        fields = _redis_fields(doc)
        key = self._keys.video_settings(video_id)
        index = self._keys.video_settings_index()
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if fields:
            pipe.hset(
                key, mapping={name: value for name, value in (*fields.items(), ("at", started))}
            )
            pipe.sadd(index, video_id)
        else:
            pipe.srem(index, video_id)
        await self._redis_call(pipe.execute())

    async def load_video_settings(self) -> None:
        """Copy the settings of every video that has some into Redis; mark the copy complete."""
        started = time.time_ns() // 1_000_000
        docs = await self._store.videos_with_settings()
        args: list[Any] = [self._keys.video_settings(""), started, SETTINGS_RESYNC * 1000]
        for doc in docs:
            fields = _redis_fields(doc)
            if fields:
                args += [doc["_id"], *(fields.get(f, "") for f in ("slow_mode", "hold", "min_age"))]
        keys = [self._keys.video_settings_index(), self._keys.settings_loaded()]
        await self._redis_call(self._resync(keys=keys, args=args))
        log.info("loaded the settings of %d videos into Redis", len(docs))

    # -- bans ---------------------------------------------------------------------

    async def ban(
        self,
        scope: str,
        user: dict[str, Any],
        seconds: int | None,
        reason: str,
        by: int,
        by_role: str = "moderator",
    ) -> dict[str, Any]:
        """Ban (or replace the ban of) ``user``; who set it and their role are kept.

        A moderator cannot replace a ban an admin set (403 ``ban_set_by_admin``):
        the check is part of the store write, so it holds against a concurrent admin.
        """
        now = utcnow()
        doc = {
            "_id": f"{scope}:{user['_id']}",
            "scope": scope,
            "user_id": user["_id"],
            "username": user["username"],
            "reason": reason,
            "by": by,
            "by_role": by_role,
            "created_at": now,
            "expires_at": now + dt.timedelta(seconds=seconds) if seconds else None,
        }
        if not await self._store.put_ban(doc, unless_set_by=_protected_from(by_role)):
            raise _admins_ban()
        await self._redis_call(self._set_ban_key(doc))
        return doc

    async def unban(self, scope: str, user_id: int, by_role: str = "moderator") -> bool:
        """Lift a ban; False if there was none. 403 for a moderator lifting an admin's."""
        ban_id = f"{scope}:{user_id}"
        found = await self._store.delete_ban(ban_id, unless_set_by=_protected_from(by_role))
        if not found and _protected_from(by_role) and await self._store.get_ban(ban_id):
            raise _admins_ban()
        await self._redis_call(self._redis.delete(self._keys.ban(scope, user_id)))
        return found

    async def bans(self, scope: str | None) -> list[dict[str, Any]]:
        return await self._store.active_bans(scope)

    async def load_bans(self) -> None:
        """Copy every active ban and unacknowledged warning into Redis, then mark the
        copy complete (the admission script asks for it while the mark is missing)."""
        docs = await self._store.active_bans()
        for doc in docs:
            await self._redis_call(self._set_ban_key(doc))
        warnings = await self._store.pending_warnings()
        for warning in warnings:
            key = self._keys.warning(warning["user_id"])
            await self._redis_call(self._redis.set(key, str(warning["_id"])))
        await self._redis_call(self._redis.set(self._keys.bans_loaded(), b"1"))
        log.info("loaded %d active bans and %d warnings into Redis", len(docs), len(warnings))

    # -- warnings -------------------------------------------------------------------

    async def warn(
        self, user: dict[str, Any], reason: str, by: int, warning_id: int
    ) -> dict[str, Any]:
        """Warn ``user``: their next post is refused until they acknowledge it.

        Stored first (the record, and what a Redis that lost the key reloads), then
        the key the admission script checks.
        """
        doc = {
            "_id": warning_id,
            "user_id": user["_id"],
            "reason": reason,
            "by": by,
            "created_at": utcnow(),
            "acknowledged_at": None,
        }
        await self._store.insert_warning(doc)
        await self._redis_call(self._redis.set(self._keys.warning(user["_id"]), str(warning_id)))
        return doc

    async def pending_warning(self, user_id: int) -> dict[str, Any] | None:
        return await self._store.pending_warning(user_id)

    async def acknowledge(self, user_id: int) -> dict[str, Any] | None:
        """The user read their warning: recorded, and their posts go through again.
        The warning acknowledged, or None if there was none."""
        doc = await self._store.pending_warning(user_id)
        if doc is None:
            return None
        at = utcnow()
        await self._store.acknowledge_warnings(user_id, at)
        await self._redis_call(self._redis.delete(self._keys.warning(user_id)))
        return {**doc, "acknowledged_at": at}

    async def _set_ban_key(self, doc: dict[str, Any]) -> None:
        key = self._keys.ban(doc["scope"], doc["user_id"])
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
