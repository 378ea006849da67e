"""What a handler may ask for: one typed key per service, the caller, the client, JSON answers.

The server sets every key once, when it builds the app (``CommentServer.provide``);
a handler reads only the services it uses, never the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from livecomments.comment_service.api.schema import SETTINGS as SETTINGS  # every key in one place
from livecomments.comment_service.auth import Accounts, Principal
from livecomments.comment_service.browser import Cors
from livecomments.comment_service.comments import Comments
from livecomments.comment_service.limits import Limiter, LoginLimits
from livecomments.comment_service.metrics import ServiceMetrics
from livecomments.comment_service.moderation import Moderation
from livecomments.comment_service.policy import Policies
from livecomments.comment_service.reactions import Reactions
from livecomments.comment_service.replay import Replay
from livecomments.coord import Placement
from livecomments.kernel.errors import LiveCommentsError, Unauthorized
from livecomments.kernel.ids import Snowflake
from livecomments.kernel.netaddr import TrustedProxies
from livecomments.kernel.rates import Rate
from livecomments.kernel.viewers import ViewerCounts


class Users(Protocol):
    """Reads accounts as they are now (roles change; a token's claims may be stale)."""

    async def get_user(self, user_id: int) -> dict[str, Any] | None: ...


class HeldQueue(Protocol):
    """The comments the content filter held for a moderator, newest first."""

    async def held(
        self, video_id: str | None, *, before: int | None, limit: int
    ) -> list[dict[str, Any]]: ...


ACCOUNTS = web.AppKey("accounts", Accounts)
USERS: web.AppKey[Users] = web.AppKey("users")
IDS = web.AppKey("ids", Snowflake)  # this process's Snowflake generator (new accounts)
COMMENTS = web.AppKey("comments", Comments)
REACTIONS = web.AppKey("reactions", Reactions)
MODERATION = web.AppKey("moderation", Moderation)
HELD: web.AppKey[HeldQueue] = web.AppKey("held")
POLICIES = web.AppKey("policies", Policies)
LIMITER = web.AppKey("limiter", Limiter)
LOGIN_LIMITS = web.AppKey("login_limits", LoginLimits)
PLACEMENT = web.AppKey("placement", Placement)
VIEWER_COUNTS = web.AppKey("viewer_counts", ViewerCounts)
REPLAY = web.AppKey("replay", Replay)
CORS = web.AppKey("cors", Cors)
# The viewer page and its Content-Security-Policy, for the RTMS nodes up now.
PAGE: web.AppKey[Callable[[], tuple[bytes, str]]] = web.AppKey("page")
HEALTH: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("health")
# (ready, reasons): the process's Readiness, never waiting on a backend.
READINESS: web.AppKey[Callable[[], tuple[bool, tuple[str, ...]]]] = web.AppKey("readiness")
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")  # set by build_app
# Per request: its id (the client's X-Request-ID when sane, else a new one; app.py).
REQUEST_ID = web.RequestKey("request_id", str)
METRICS = web.AppKey("metrics", ServiceMetrics)  # counted by the middleware and handlers


def _plain(value: Any) -> Any:
    """A subclass of a JSON type (the store's ``Int64``, say) as the type itself."""
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_plain)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``body`` (a model, or plain dicts and lists) as a JSON answer."""
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


def error_response(exc: LiveCommentsError) -> web.Response:
    return json_response(exc.to_json(), exc.status, exc.headers or None)


async def caller(request: web.Request, *, revocation_checked_later: bool = False) -> Principal:
    """The logged-in user sending the request (401 for anyone else).

    ``revocation_checked_later``: the caller folds the logout check into a Redis
    call it makes anyway (posting does, in its admission script).
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "log in and send 'Authorization: Bearer <token>'",
            code="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    accounts = request.app[ACCOUNTS]
    if revocation_checked_later:
        return accounts.verify(token.strip())
    return await accounts.authenticate(token.strip())


def client_ip(request: web.Request) -> str:
    """The client's address; X-Forwarded-For counts only when a trusted proxy sent it.

    ``trusted_proxies`` takes addresses and CIDR ranges (``livecomments.kernel.netaddr``,
    shared with the RTMS listener so both count the same client).
    """
    trusted = TrustedProxies.of(request.app[SETTINGS].trusted_proxies)
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    return trusted.client(request.remote, forwarded)


async def limit(request: web.Request, what: str, *buckets: tuple[str, str]) -> None:
    """Take a token from each ``(bucket name, "N/S" rate)``, or answer 429."""
    limiter = request.app[LIMITER]
    await limiter.take(what, *((name, Rate.parse(spec)) for name, spec in buckets))


async def staff_caller(request: web.Request, role: str = "moderator") -> Principal:
    """The caller, if their current role (read from the store) is at least ``role``;
    every call counts against their ``moderate_limit_user`` bucket."""
    principal = await caller(request)
    await limit(
        request,
        "moderation actions",
        (f"moderate-user:{principal.user_id}", request.app[SETTINGS].moderate_limit_user),
    )
    await request.app[ACCOUNTS].require(principal, role)
    return principal
