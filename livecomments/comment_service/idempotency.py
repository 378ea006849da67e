"""Idempotent posting: a POST retried with the same ``Idempotency-Key`` gets the first answer.

A client that timed out, or got a 503, cannot know whether its comment was
stored. With a key, it retries safely: the key (per user and video) is
recorded in Redis *before* admission, holding the Snowflake id the comment
will get, so whatever happens next can be told apart by that id:

- the first attempt is still running: 409 ``idempotency_in_flight`` with
  ``Retry-After`` (the retry does not wait, and never makes a second comment);
- it succeeded: the retry gets the same comment and the same status (201, or
  202 when held), read from the store by its id, without admission: rate
  limits, slow mode and duplicate suppression never refuse the retry of an
  accepted post;
- it failed (any other answer): the retry runs again, with the same id. If the
  first attempt did store the comment before it failed (a later step broke), or
  its process died, the retry finds the id in the store and answers with it;
- the same key with another text or parent: 422 ``idempotency_key_reused``.

A record left ``pending`` by a process that died is taken over after
``IN_FLIGHT`` seconds (no post takes that long: the store and dispatch
timeouts are a few seconds), again with the same id, so a comment it stored is
found rather than posted twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel.errors import (
    Conflict,
    LiveCommentsError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")  # UUIDs, ULIDs, base64, hex
IN_FLIGHT = 30.0  # seconds a pending attempt is waited for before a retry takes over


class IdempotencyKeyReused(LiveCommentsError):
    code = "idempotency_key_reused"
    status = 422


def parse_key(value: str | None) -> str | None:
    """The header's key, or None without one; 400 ``invalid_idempotency_key`` if malformed."""
    if value is None:
        return None
    if not KEY_PATTERN.fullmatch(value):
        raise ValidationError(
            f"{HEADER} is 1-128 of A-Z a-z 0-9 . _ : + / = -",
            code="invalid_idempotency_key",
        )
    return value


def fingerprint(text: str, parent_id: int | None) -> str:
    """What must match for a retry to be the same request (the video is in the key)."""
    raw = f"{parent_id or 0}\x00{text}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    key: str  # the Redis key of the record
    state: str  # new, done, resume (see idempotency_claim.lua)
    comment_id: int
    status: int  # for done: the status first answered


class Idempotency:
    """Records of keyed posts in Redis, kept ``window`` seconds."""

    def __init__(self, redis: Redis, prefix: str, window: float) -> None:
        self._keys = Keys(prefix)
        self._window_ms = max(1000, int(window * 1000))
        self._claim = scripts.register(redis, "idempotency_claim")
        self._finish = scripts.register(redis, "idempotency_finish")

    async def claim(
        self,
        *,
        user_id: int,
        video_id: str,
        key: str,
        fingerprint: str,
        new_id: int,
        revoked_key: str,
    ) -> Claim:
        """Record the key for ``new_id``, or say what an earlier attempt left."""
        record = self._keys.idempotency(user_id, video_id, key)
        args: list[Any] = [new_id, fingerprint, self._window_ms, int(IN_FLIGHT * 1000)]
        try:
            state, comment_id, extra = await self._claim(keys=[record, revoked_key], args=args)
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        state = state.decode() if isinstance(state, bytes) else str(state)
        if state == "revoked":
            raise Unauthorized("the token was logged out", code="token_revoked")
        if state == "reused":
            raise IdempotencyKeyReused(
                f"this {HEADER} was used for another comment: use a new key for a new comment"
            )
        if state == "in_flight":
            # Posts take milliseconds: the first attempt is about done, whatever the
            # IN_FLIGHT bound left says, so come back in a second.
            raise Conflict(
                "a request with this key is still in progress; retry in a moment",
                code="idempotency_in_flight",
                details={"retry_after": 1},
                headers={"Retry-After": "1"},
            )
        return Claim(record, state, int(comment_id), int(extra))

    async def finish(self, claim: Claim, *, ok: bool, status: int) -> None:
        """Record the outcome; on failure the key stays, for a retry to try again."""
        try:
            await self._finish(
                keys=[claim.key], args=[claim.comment_id, "done" if ok else "failed", status]
            )
        except RedisError:
            pass  # left pending: a retry after IN_FLIGHT takes it over and finds the comment
