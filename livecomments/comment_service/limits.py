"""Limits shared by every comment-service replica, kept in Redis.

Token buckets (all-or-nothing over several buckets, on Redis' clock so replicas
with skewed clocks agree), and the admission check of a post: bans, the
video's slow mode, duplicate suppression and the posting buckets, decided by
one Lua function (``lib_admit.lua``, in livecomments/kernel/redis/scripts) that
livecomments/comment_service/admission.py runs for a whole batch of posts in one call.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel.errors import Forbidden, LiveCommentsError, Unauthorized, Unavailable
from livecomments.kernel.rates import Rate
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys

if TYPE_CHECKING:
    from livecomments.kernel.settings import CommentServiceSettings


class TooManyRequests(LiveCommentsError):
    code = "rate_limited"
    status = 429
    temporary = True

    def __init__(self, message: str, retry_after_ms: int, *, code: str | None = None) -> None:
        seconds = max(1, math.ceil(retry_after_ms / 1000))
        super().__init__(
            message,
            code=code,
            details={"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )


# How many keys and arguments the admission check of one post takes (``admit`` in
# livecomments/kernel/redis/scripts/lib_admit.lua, which says the same and names
# each): ``Limiter.admission_keys`` and ``Limiter.admission_args`` build them.
ADMIT_KEYS = 11
ADMIT_ARGS = 8

_LOGIN_REFUSALS: dict[str, tuple[str, str]] = {
    "locked": (
        "login_locked",
        "too many failed logins to this account from your address; try again later",
    ),
    "backoff": (
        "login_backoff",
        "too many failed logins to this account; wait before trying again",
    ),
    "rate_ip": ("rate_limited", "too many login attempts from your address; try again later"),
}


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Failed logins per (account, address) lock that pair; per account they slow
    down addresses the account never logged in from; attempts per address."""

    pair: Rate
    ip: Rate
    account: Rate
    backoff_first: float  # seconds
    backoff_max: float  # seconds
    known_address: float  # seconds an address stays the owner's after a login

    @classmethod
    def from_settings(cls, settings: CommentServiceSettings) -> LoginLimits:
        """From a ``CommentServiceSettings``' ``login_*`` fields."""
        return cls(
            pair=Rate.parse(settings.login_limit_account),
            ip=Rate.parse(settings.login_limit_ip),
            account=Rate.parse(settings.login_backoff_account),
            backoff_first=settings.login_backoff_first,
            backoff_max=settings.login_backoff_max,
            known_address=settings.login_known_address_days * 86400.0,
        )


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """An admitted attempt; ``Limiter.login_succeeded`` gives it back on success."""

    keys: tuple[str, str, str]
    account_cap: int
    known_ms: int


_REFUSALS: dict[str, tuple[str, str]] = {
    "slow_mode": ("slow_mode", "slow mode is on: wait before commenting again"),
    "duplicate": ("duplicate_message", "you sent the same message a moment ago"),
    "rate_user": ("rate_limited", "you are commenting too fast"),
    "rate_ip": ("rate_limited", "too many comments from your network"),
}


@dataclass(frozen=True, slots=True)
class PostLimits:
    user: Rate
    ip: Rate
    duplicate_window: float


class Limiter:
    """Rate limits and post admission; one instance per process, state in Redis."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self.keys = Keys(prefix)
        self._buckets = scripts.register(redis, "limits_buckets")
        self._login = scripts.register(redis, "limits_login")
        self._login_ok = scripts.register(redis, "limits_login_ok")

    async def take(self, what: str, *buckets: tuple[str, Rate]) -> None:
        """One token from every bucket, or none and a 429 naming the wait."""
        keys = [self.keys.bucket(name) for name, _ in buckets]
        args: list[Any] = []
        for _, rate in buckets:
            args += [rate.capacity, repr(rate.per_ms)]
        try:
            worst, wait = await self._buckets(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable(f"rate limiter: {exc}") from exc
        if int(worst):
            raise TooManyRequests(f"too many {what}; try again later", int(wait))

    async def login_attempt(self, account: str, ip: str, limits: LoginLimits) -> LoginAttempt:
        """Admit one login attempt to ``account`` (lower case) from ``ip``, or raise 429.

        The same answer whether or not the account exists, so a lock tells
        nobody which usernames are taken.
        """
        keys = [
            self.keys.bucket("login-ip", ip),
            self.keys.bucket("login-fail", account, ip),
            self.keys.bucket("login-account", account),
            self.keys.login_gate(account),
            self.keys.login_level(account),
            self.keys.login_known(account, ip),
        ]
        args: list[Any] = []
        for rate in (limits.ip, limits.pair, limits.account):
            args += [rate.capacity, repr(rate.per_ms)]
        args += [int(limits.backoff_first * 1000), int(limits.backoff_max * 1000)]
        try:
            verdict, ms = await self._login(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable(f"rate limiter: {exc}") from exc
        verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        if verdict != "ok":
            code, message = _LOGIN_REFUSALS[verdict]
            raise TooManyRequests(message, int(ms), code=code)
        return LoginAttempt(
            (keys[1], keys[2], keys[5]), limits.account.capacity, int(limits.known_address * 1000)
        )

    async def login_succeeded(self, attempt: LoginAttempt) -> None:
        try:
            await self._login_ok(
                keys=list(attempt.keys), args=[attempt.account_cap, attempt.known_ms]
            )
        except RedisError as exc:
            raise Unavailable(f"rate limiter: {exc}") from exc

    def duplicate_key(self, user_id: int, video_id: str, text: str) -> str:
        digest = hashlib.blake2b(text.casefold().encode(), digest_size=12).hexdigest()
        return self.keys.duplicate(user_id, video_id, digest)

    def admission_keys(
        self, *, user_id: int, ip: str, video_id: str, text: str, revoked_key: str
    ) -> list[str]:
        """The ``ADMIT_KEYS`` keys of ``admit`` (``lib_admit.lua``) for one post."""
        return [
            self.keys.ban("*", user_id),
            self.keys.ban(video_id, user_id),
            self.keys.bans_loaded(),
            self.keys.video_settings(video_id),
            self.keys.bucket("post-user", user_id),
            self.keys.bucket("post-ip", ip),
            self.keys.slow(video_id, user_id),
            self.duplicate_key(user_id, video_id, text),
            revoked_key,
            self.keys.settings_loaded(),
            self.keys.warning(user_id),
        ]

    @staticmethod
    def admission_args(limits: PostLimits, exempt: bool) -> list[Any]:
        """The first ``ADMIT_ARGS`` - 2 arguments of ``admit`` (``lib_admit.lua``): those
        fixed for the process; the post's score and the account's age follow."""
        return [
            limits.user.capacity,
            repr(limits.user.per_ms),
            limits.ip.capacity,
            repr(limits.ip.per_ms),
            int(limits.duplicate_window * 1000),
            1 if exempt else 0,
        ]

    @staticmethod
    def refusal(verdict: str, ms: int) -> LiveCommentsError:
        """The error a refused post gets for a verdict of ``admit`` (``lib_admit.lua``)."""
        if verdict == "revoked":
            return Unauthorized("the token was logged out", code="token_revoked")
        if verdict.startswith("banned_"):
            scope = "global" if verdict == "banned_global" else "video"
            details: dict[str, Any] = {"scope": scope}
            if ms > 0:
                details["retry_after"] = max(1, math.ceil(ms / 1000))
            message = "you are banned from commenting" + (
                " on this video" if scope == "video" else ""
            )
            if ms > 0:
                message += f" for another {details['retry_after']} s"
            return Forbidden(message, code="banned", details=details)
        if verdict == "too_new":
            wait = max(1, math.ceil(ms / 1000))
            return Forbidden(
                "shield mode is on: accounts this new cannot comment on this video yet"
                f" (in {wait} s)",
                code="account_too_new",
                details={"retry_after": wait},
            )
        if verdict == "warned":
            return Forbidden(
                "a moderator warned you: read and acknowledge the warning before you post"
                " again (GET /api/auth/me/warning, then POST /api/auth/me/warning/ack)",
                code="warning_unacknowledged",
            )
        code, message = _REFUSALS[verdict]
        return TooManyRequests(message, ms, code=code)

    async def release_post(self, user_id: int, video_id: str, text: str) -> None:
        """Undo the slow-mode and duplicate marks of a post that then failed."""
        try:
            await self._redis.delete(
                self.keys.slow(video_id, user_id), self.duplicate_key(user_id, video_id, text)
            )
        except RedisError:
            pass  # the marks expire on their own
