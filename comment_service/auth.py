"""Accounts: argon2 password hashes and short-lived JWT access tokens."""

from __future__ import annotations

import asyncio
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from livecomments.errors import Unauthorized, ValidationError
from livecomments.ids import Snowflake
from livecomments.store import Store, utcnow

ROLES = ("viewer", "moderator", "admin")
ISSUER = "livecomments"
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# Verifying against this keeps a login for an unknown user as slow as a real one.
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not-a-real-password")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    username: str
    role: str


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
    def __init__(self, store: Store, secret: str, ttl: int) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._store = store
        self._secret = secret
        self._ttl = ttl

    async def register(
        self, username: str, password: str, ids: Snowflake, role: str = "viewer"
    ) -> dict[str, Any]:
        digest = await asyncio.to_thread(_hasher.hash, password)
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
        digest = user["password_hash"] if user else _DUMMY_HASH
        try:
            await asyncio.to_thread(_hasher.verify, digest, password)
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
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    @property
    def ttl(self) -> int:
        return self._ttl

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],  # never "none", never whatever the header says
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("the token is not valid", code="invalid_token") from exc
        role = claims.get("role")
        name = claims.get("name")
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError) as exc:
            raise Unauthorized("the token is not valid", code="invalid_token") from exc
        if role not in ROLES or not isinstance(name, str):
            raise Unauthorized("the token is not valid", code="invalid_token")
        return Principal(user_id, name, role)


def public_user(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(user["_id"]),
        "username": user["username"],
        "role": user.get("role", "viewer"),
    }
