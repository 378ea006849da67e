"""Accounts: sign up, log in and out, who am I."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from livecomments.comment_service.api.body import JsonBody
from livecomments.comment_service.api.context import (
    ACCOUNTS,
    IDS,
    LIMITER,
    LOGIN_LIMITS,
    SETTINGS,
    USERS,
    caller,
    client_ip,
    json_response,
    limit,
)
from livecomments.comment_service.api.route import BACKEND_ERRORS, Ok, Route, install
from livecomments.comment_service.api.schema import Id, Model, Role, Setting
from livecomments.comment_service.auth import check_credentials
from livecomments.comment_service.passwords import MAX_LENGTH, MIN_LENGTH, check_new_password
from livecomments.kernel.errors import NotFound

SMALL_BODY = 4096  # bytes
USERNAME_PATTERN = "^[A-Za-z0-9_]{3,32}$"
# The checks are check_credentials' and check_new_password's, made after the
# username is normalised (NFC, trimmed): the patterns and lengths here are what
# they accept, for the document.
Username = Annotated[
    str,
    Meta(
        extra_json_schema={
            "pattern": USERNAME_PATTERN,
            "description": "3-32 letters, digits or underscores; unique ignoring case.",
        },
        extra={"message": "must be a string"},
    ),
]
Password = Annotated[
    str,
    Meta(
        extra_json_schema={"minLength": 8, "maxLength": 128}, extra={"message": "must be a string"}
    ),
]
NewPassword = Annotated[
    str,
    Meta(
        extra_json_schema={
            "minLength": MIN_LENGTH,
            "maxLength": MAX_LENGTH,
            "description": f"At least {MIN_LENGTH} characters, not containing the username, and "
            "not one of the 10,000 most common passwords (nor one of them with digits or "
            "punctuation added at either end).",
        },
        extra={"message": "must be a string"},
    ),
]


class Credentials(Model):
    username: Username
    password: Password


class NewAccount(Model):
    username: Username
    password: NewPassword


class PublicUser(Model):
    id: Id
    username: str
    role: Role

    @classmethod
    def of(cls, user: dict[str, Any]) -> PublicUser:
        return cls(id=str(user["_id"]), username=user["username"], role=user.get("role", "viewer"))


class Session(Model):
    user: PublicUser
    token: Annotated[str, Meta(description="A JWT for the Authorization header.")]
    token_type: Annotated[str, Meta(extra_json_schema={"const": "Bearer"})]
    expires_in: Annotated[int, Meta(extra_json_schema={"const": Setting("jwt_ttl").json()})]


CREDENTIALS = JsonBody(Credentials, SMALL_BODY)
NEW_ACCOUNT = JsonBody(NewAccount, SMALL_BODY)


def _credentials(body: Credentials | NewAccount) -> tuple[str, str]:
    """The username (normalised) and password, or 400 saying which is wrong."""
    return check_credentials(msgspec.structs.asdict(body))


async def register(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    await limit(request, "sign-ups", (f"register-ip:{client_ip(request)}",
                                      settings.register_limit_ip))  # fmt: skip
    username, password = _credentials(await NEW_ACCOUNT.read(request))
    check_new_password(username, password)  # 400 weak_password, saying why
    user = await request.app[ACCOUNTS].register(username, password, request.app[IDS])
    return _session(request, user, 201)


async def login(request: web.Request) -> web.Response:
    """Log in; failures lock the (account, address) pair, not the account.

    An unknown username and a wrong password get the same answer, byte for
    byte, after the same password-hash work (see ``Accounts.login``), and the
    locks below treat both alike.
    """
    username, password = _credentials(await CREDENTIALS.read(request))
    limiter = request.app[LIMITER]
    attempt = await limiter.login_attempt(
        username.lower(), client_ip(request), request.app[LOGIN_LIMITS]
    )
    user = await request.app[ACCOUNTS].login(username, password)
    await limiter.login_succeeded(attempt)
    return _session(request, user, 200)


def _session(request: web.Request, user: dict[str, Any], status: int) -> web.Response:
    accounts = request.app[ACCOUNTS]
    session = Session(
        user=PublicUser.of(user),
        token=accounts.issue(user),
        token_type="Bearer",
        expires_in=accounts.ttl,
    )
    return json_response(session, status)


async def logout(request: web.Request) -> web.Response:
    principal = await caller(request)
    await request.app[ACCOUNTS].logout(principal)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    principal = await caller(request)
    user = await request.app[USERS].get_user(principal.user_id)
    if user is None:
        raise NotFound("the account no longer exists", code="user_not_found")
    return json_response(PublicUser.of(user))


ROUTES = (
    Route(
        "POST",
        "/api/auth/register",
        register,
        "Create an account and log in",
        "accounts",
        (Ok(201, "The new account and its token.", Session),),
        rates=(("register_limit_ip", "client IP"),),
        body=NEW_ACCOUNT,
        errors={
            400: ("invalid_type", "invalid_username", "invalid_password", "weak_password"),
            409: ("username_taken",),
            503: BACKEND_ERRORS,
        },
    ),
    Route(
        "POST",
        "/api/auth/login",
        login,
        "Log in",
        "accounts",
        (Ok(200, "The account and a new token.", Session),),
        notes=(
            "An unknown username and a wrong password get the same answer. Failed logins "
            "to one account from one address lock that pair (429 `login_locked`); failed "
            "logins to one account from all addresses past `login_backoff_account` = "
            "{s.login_backoff_account} make addresses the account has not logged in "
            "from (in the last {s.login_known_address_days:g} days) wait between "
            "attempts, {s.login_backoff_first:g} s doubling up to "
            "{s.login_backoff_max:g} s (429 `login_backoff`).",
        ),
        rates=(
            ("login_limit_account", "failed login to one username from one client IP"),
            ("login_limit_ip", "client IP"),
        ),
        body=CREDENTIALS,
        errors={
            400: ("invalid_type", "invalid_username", "invalid_password"),
            401: ("invalid_credentials",),
            429: ("login_locked", "login_backoff"),
            503: BACKEND_ERRORS,
        },
    ),
    Route(
        "POST",
        "/api/auth/logout",
        logout,
        "Log out (revoke this token)",
        "accounts",
        (Ok(204, "The token is revoked until it would have expired."),),
        role="viewer",
    ),
    Route(
        "GET",
        "/api/auth/me",
        me,
        "The caller's account",
        "accounts",
        (Ok(200, "The account.", PublicUser),),
        role="viewer",
        errors={404: ("user_not_found",)},
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
