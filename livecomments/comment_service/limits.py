"""Limits shared by every comment-service replica, kept in Redis.

Token buckets (all-or-nothing over several buckets, on Redis' clock so replicas
with skewed clocks agree), and the admission check of a post: bans, the
video's slow mode, duplicate suppression and the posting buckets, decided by
one Lua function that livecomments/comment_service/admission.py runs for a whole batch of
posts in one call.
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


# Token buckets: KEYS are the buckets, ARGV[2i-1], ARGV[2i] their capacity and
# refill per ms. Returns {0, 0} when a token was taken from every bucket, else
# {index of the emptiest bucket, ms until it has a token}; nothing is taken then.
_BUCKETS = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local levels = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then tokens, ts = cap, now end
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  if tokens < 1 then
    local w = math.ceil((1 - tokens) / rate)
    if w > wait then worst, wait = i, w end
  end
end
if worst > 0 then return {worst, wait} end
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 1000)
end
return {0, 0}
"""

# Admission of a post, as a Lua function (livecomments/comment_service/admission.py runs it for
# every post of a batch in one call). K: 1 global ban, 2 video ban, 3 bans-loaded
# marker, 4 video settings (a hash, only for videos with settings), 5 user bucket,
# 6 ip bucket, 7 slow-mode mark, 8 duplicate mark, 9 the token's logout mark,
# 10 settings-loaded marker. A: user cap, user rate, ip cap,
# ip rate, duplicate window ms, exempt (1/0). Returns verdict, ms: ok,
# load_bans, load_settings, revoked, banned_global, banned_video, slow_mode,
# duplicate, rate_user, rate_ip. Nothing is written unless the verdict is ok.
ADMIT_LUA = """
local function admit(K, A)
  if redis.call('EXISTS', K[9]) == 1 then return 'revoked', 0 end
  if redis.call('EXISTS', K[3]) == 0 then return 'load_bans', 0 end
  local ban = redis.call('PTTL', K[1])
  if ban ~= -2 then return 'banned_global', ban end
  ban = redis.call('PTTL', K[2])
  if ban ~= -2 then return 'banned_video', ban end
  if redis.call('EXISTS', K[10]) == 0 then return 'load_settings', 0 end
  local exempt = A[6] == '1'
  local slow = tonumber(redis.call('HGET', K[4], 'slow_mode') or '0') or 0
  if not exempt then
    if slow > 0 then
      local left = redis.call('PTTL', K[7])
      if left > 0 then return 'slow_mode', left end
    end
    local dup = redis.call('PTTL', K[8])
    if dup > 0 then return 'duplicate', dup end
  end
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local levels = {}
  for i = 5, 6 do
    local cap, rate = tonumber(A[(i - 5) * 2 + 1]), tonumber(A[(i - 5) * 2 + 2])
    local v = redis.call('HMGET', K[i], 'tokens', 'ts')
    local tokens, ts = tonumber(v[1]), tonumber(v[2])
    if tokens == nil or ts == nil then tokens, ts = cap, now end
    tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
    if tokens < 1 then
      return (i == 5 and 'rate_user' or 'rate_ip'), math.ceil((1 - tokens) / rate)
    end
    levels[i] = tokens
  end
  for i = 5, 6 do
    local cap, rate = tonumber(A[(i - 5) * 2 + 1]), tonumber(A[(i - 5) * 2 + 2])
    redis.call('HSET', K[i], 'tokens', tostring(levels[i] - 1), 'ts', tostring(now))
    redis.call('PEXPIRE', K[i], math.ceil(cap / rate) + 1000)
  end
  if not exempt then
    if slow > 0 then redis.call('SET', K[7], '1', 'PX', slow * 1000) end
    if tonumber(A[5]) > 0 then redis.call('SET', K[8], '1', 'PX', A[5]) end
  end
  return 'ok', 0
end
"""
ADMIT_KEYS = 10
ADMIT_ARGS = 6

# Login attempts. K: 1 the address's attempt bucket, 2 the (account, address)
# failure bucket, 3 the account's failure bucket (every address), 4 the
# account's back-off gate, 5 its back-off level, 6 the "this address logged in
# to this account before" mark. A: the three buckets' cap and rate, then the
# back-off's first and longest delay (ms). Every admitted attempt is counted as a
# failure at once (a success gives it back), so concurrent guesses cannot slip
# past the lock while the password hash is being checked. Returns verdict, ms:
# ok, locked (this pair), backoff (the account, from an address never used for
# it), rate_ip.
_LOGIN = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function level(key, cap, rate)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then tokens, ts = cap, now end
  return math.min(cap, tokens + math.max(0, now - ts) * rate)
end
local function store(key, tokens, cap, rate)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(cap / rate) + 1000)
end
local cap, rate = {}, {}
for i = 1, 3 do cap[i], rate[i] = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]) end
local ip = level(KEYS[1], cap[1], rate[1])
local pair = level(KEYS[2], cap[2], rate[2])
local account = level(KEYS[3], cap[3], rate[3])
if pair < 1 then return {'locked', math.ceil((1 - pair) / rate[2])} end
local known = redis.call('EXISTS', KEYS[6]) == 1
if not known then
  local gate = redis.call('PTTL', KEYS[4])
  if gate > 0 then return {'backoff', gate} end
end
if ip < 1 then return {'rate_ip', math.ceil((1 - ip) / rate[1])} end
store(KEYS[1], ip - 1, cap[1], rate[1])
store(KEYS[2], pair - 1, cap[2], rate[2])
if account >= 1 then
  store(KEYS[3], account - 1, cap[3], rate[3])
elseif not known then
  -- Over the account-wide threshold: each attempt from an unknown address
  -- doubles the wait before the next one may start, up to the longest delay.
  local n = redis.call('INCR', KEYS[5])
  redis.call('PEXPIRE', KEYS[5], math.ceil(cap[3] / rate[3]))
  local delay = math.min(tonumber(ARGV[8]), tonumber(ARGV[7]) * 2 ^ math.min(n - 1, 30))
  redis.call('SET', KEYS[4], '1', 'PX', math.max(1, math.floor(delay)))
end
return {'ok', 0}
"""

# A login succeeded: the pair's failures are forgotten, the account bucket gets
# the attempt back, and the address is remembered as the owner's (exempt from
# the account-wide back-off). K: 2, 3 and 6 of _LOGIN. A: account cap, the
# mark's lifetime (ms).
_LOGIN_OK = """
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens') or ARGV[1])
  redis.call('HSET', KEYS[2], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + 1)))
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[2]))
return 1
"""

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
        self._prefix = prefix
        self._buckets = redis.register_script(_BUCKETS)
        self._login = redis.register_script(_LOGIN)
        self._login_ok = redis.register_script(_LOGIN_OK)

    def key(self, *parts: str | int) -> str:
        return self._prefix + ":".join(str(p) for p in parts)

    async def take(self, what: str, *buckets: tuple[str, Rate]) -> None:
        """One token from every bucket, or none and a 429 naming the wait."""
        keys = [self.key("rl", name) for name, _ in buckets]
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
            self.key("rl", "login-ip", ip),
            self.key("rl", "login-fail", account, ip),
            self.key("rl", "login-account", account),
            self.key("login-gate", account),
            self.key("login-level", account),
            self.key("login-known", account, ip),
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
        return self.key("dup", user_id, video_id, digest)

    def admission_keys(
        self, *, user_id: int, ip: str, video_id: str, text: str, revoked_key: str
    ) -> list[str]:
        """The ``ADMIT_KEYS`` keys of ``ADMIT_LUA`` for one post."""
        return [
            self.key("ban", "*", user_id),
            self.key("ban", video_id, user_id),
            self.key("bans-loaded"),
            self.key("vs", video_id),
            self.key("rl", "post-user", user_id),
            self.key("rl", "post-ip", ip),
            self.key("slow", video_id, user_id),
            self.duplicate_key(user_id, video_id, text),
            revoked_key,
            self.key("settings-loaded"),
        ]

    @staticmethod
    def admission_args(limits: PostLimits, exempt: bool) -> list[Any]:
        """The ``ADMIT_ARGS`` arguments of ``ADMIT_LUA``."""
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
        """The error a refused post gets for an ``ADMIT_LUA`` verdict."""
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
        code, message = _REFUSALS[verdict]
        return TooManyRequests(message, ms, code=code)

    async def release_post(self, user_id: int, video_id: str, text: str) -> None:
        """Undo the slow-mode and duplicate marks of a post that then failed."""
        try:
            await self._redis.delete(
                self.key("slow", video_id, user_id), self.duplicate_key(user_id, video_id, text)
            )
        except RedisError:
            pass  # the marks expire on their own
