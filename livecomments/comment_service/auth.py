"""Accounts: argon2 password hashes and short-lived JWT access tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel import events
from livecomments.kernel.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from livecomments.kernel.ids import Snowflake, parse_id
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.store import Store, utcnow

log = logging.getLogger(__name__)

ROLES = ("viewer", "moderator", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
VERIFIED_CACHE = 50_000  # verified tokens remembered per process
ISSUER = "livecomments"
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# argon2id costs by name (settings.password_hashing): (time_cost, memory_cost KiB, lanes).
HASHING = {
    "rfc9106": (3, 65536, 4),
    "owasp": (2, 19456, 1),
    "test-only": (1, 8, 1),
}


def password_hasher(name: str) -> PasswordHasher:
    """The hasher for a cost named in :data:`HASHING` (ValueError for another name)."""
    if name not in HASHING:
        raise ValueError(f"password_hashing is one of {', '.join(HASHING)}, not {name!r}")
    if name == "test-only":
        log.warning("password hashes use the test-only cost: never run this in production")
    time_cost, memory_cost, lanes = HASHING[name]
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=lanes)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request, from a verified token (the role as it was when it was issued)."""

    user_id: int
    username: str
    role: str
    token_id: str = ""
    expires: int = 0
    joined_ms: int = 0  # when the account was made (ms); 0: the token does not say

    def at_least(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def check_credentials(body: dict[str, Any]) -> tuple[str, str]:
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ValidationError("username and password must be strings", code="invalid_type")
    username = unicodedata.normalize("NFC", username.strip())
    if not 3 <= len(username) <= 32 or not set(username) <= _USERNAME_CHARS:
        raise ValidationError(
            "usernames are 3-32 letters, digits or underscores", code="invalid_username"
        )
    if not 8 <= len(password) <= 128:
        raise ValidationError("passwords are 8-128 characters", code="invalid_password")
    return username, password


class Accounts:
    """Users, their passwords and their tokens.

    Tokens are stateless JWTs, so logging out puts the token's id on a
    denylist in Redis until the token would have expired anyway; every
    replica checks it. Privileged actions re-read the role from the store, so
    a demoted moderator loses their powers at once, not when the token ends.
    """

    def __init__(
        self,
        store: Store,
        redis: Redis,
        prefix: str,
        secret: str,
        ttl: int,
        hashing: str = "rfc9106",
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._hasher = password_hasher(hashing)
        # Verifying against this keeps a login for an unknown user as slow as a real one.
        self._dummy_hash = self._hasher.hash("not-a-real-password")
        self._store = store
        self._redis = redis
        self._keys = Keys(prefix)
        self._secret = secret
        self._ttl = ttl
        self._verified: dict[str, Principal] = {}

    async def register(
        self, username: str, password: str, ids: Snowflake, role: str = "viewer"
    ) -> dict[str, Any]:
        digest = await asyncio.to_thread(self._hasher.hash, password)
        user = {
            "_id": ids.next_id(),
            "username": username,
            "username_key": username.lower(),
            "password_hash": digest,
            "role": role,
            "created_at": utcnow(),
        }
        await self._store.create_user(user)
        return user

    async def login(self, username: str, password: str) -> dict[str, Any]:
        user = await self._store.find_user(username.lower())
        digest = user["password_hash"] if user else self._dummy_hash
        try:
            await asyncio.to_thread(self._hasher.verify, digest, password)
        except (VerificationError, InvalidHashError):
            user = None
        if user is None:
            raise Unauthorized("wrong username or password", code="invalid_credentials")
        return user

    def issue(self, user: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": str(user["_id"]),
            "name": user["username"],
            "role": user.get("role", "viewer"),
            "iat": now,
            "exp": now + self._ttl,
            "jti": secrets.token_urlsafe(12),
        }
        created = user.get("created_at")
        if isinstance(created, dt.datetime):  # for shield mode's account age, without a read
            claims["joined"] = events.epoch_ms(created)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    @property
    def ttl(self) -> int:
        return self._ttl

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; verified tokens are remembered until they expire.

        Checking the HMAC is most of a post's authentication cost, and a chatty
        user sends the same token many times a minute. A remembered token is
        still refused once it expires (and logout is checked in Redis, always).
        """
        known = self._verified.get(token)
        if known is not None:
            if known.expires > time.time():
                return known
            del self._verified[token]
        principal = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.pop(next(iter(self._verified)))  # the oldest
        self._verified[token] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],  # never "none", never whatever the header says
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("the token is not valid", code="invalid_token") from exc
        role, name, jti = claims.get("role"), claims.get("name"), claims.get("jti")
        # Even a correctly signed token is checked like input: these reach the store.
        user_id = parse_id(claims["sub"])
        if (
            user_id is None
            or role not in ROLES
            or not isinstance(name, str)
            or not 3 <= len(name) <= 32
            or not set(name) <= _USERNAME_CHARS
            or not isinstance(jti, str)
        ):
            raise Unauthorized("the token is not valid", code="invalid_token")
        joined = claims.get("joined")
        joined_ms = joined if isinstance(joined, int) and joined > 0 else 0
        return Principal(user_id, name, role, jti, int(claims["exp"]), joined_ms)

    def revoked_key(self, token_id: str) -> str:
        return self._keys.revoked(token_id)

    async def authenticate(self, token: str) -> Principal:
        """A verified token that has not been logged out."""
        principal = self.verify(token)
        try:
            revoked = await self._redis.exists(self.revoked_key(principal.token_id))
        except RedisError as exc:
            raise Unavailable(f"session store: {exc}") from exc
        if revoked:
            raise Unauthorized("the token was logged out", code="token_revoked")
        return principal

    async def logout(self, principal: Principal) -> None:
        left = max(1, principal.expires - int(time.time()) + 1)
        try:
            await self._redis.set(self.revoked_key(principal.token_id), b"1", ex=left)
        except RedisError as exc:
            raise Unavailable(f"session store: {exc}") from exc

    async def require(self, principal: Principal, role: str) -> dict[str, Any]:
        """The caller's user document, if their current role is at least ``role``."""
        user = await self._store.get_user(principal.user_id)
        current = user.get("role", "viewer") if user else None
        if current is None or current not in RANK or RANK[current] < RANK[role]:
            raise Forbidden(f"this needs the {role} role", code="forbidden")
        return user  # type: ignore[return-value]

    async def set_role(self, user_id: int, role: str) -> dict[str, Any]:
        return await change_role(self._store, user_id, role)


ROLE_LOCK = "roles"  # the store lease every role change holds (API and CLI alike)
ROLE_LOCK_SECONDS = 10.0  # a crashed holder frees it after this long
ROLE_LOCK_WAIT = 5.0  # a change waits this long for the lease, then answers 503


async def change_role(store: Store, user_id: int, role: str) -> dict[str, Any]:
    """Give ``user_id`` the ``role``, but never demote the last admin (409 ``last_admin``).

    Counting the admins and changing the role are two store operations, so every
    role change holds one lease in the store while it does both: two admins
    demoting each other at the same moment are serialized, and the second sees
    one admin left. The lease lives in the store, not Redis, because the CLI
    (``livecomments users set-role``) changes roles with only the store at hand.
    """
    if role not in RANK:
        raise ValidationError(f"roles are {', '.join(ROLES)}", code="invalid_role")
    holder = secrets.token_hex(8)
    deadline = time.monotonic() + ROLE_LOCK_WAIT
    while not await store.try_lock(ROLE_LOCK, holder, ROLE_LOCK_SECONDS):
        if time.monotonic() > deadline:
            raise Unavailable("another role change is in progress; try again")
        await asyncio.sleep(0.02 + secrets.randbelow(30) / 1000)
    try:
        user = await store.get_user(user_id)
        if user is None:
            raise NotFound("no such user", code="user_not_found")
        if user.get("role") == "admin" and role != "admin":
            if await store.count_users({"role": "admin"}) <= 1:
                raise Conflict(
                    "this is the last admin: make another admin first", code="last_admin"
                )
        updated = await store.update_user(user_id, {"$set": {"role": role}})
        if updated is None:
            raise NotFound("no such user", code="user_not_found")
        return updated
    finally:
        await store.unlock(ROLE_LOCK, holder)
