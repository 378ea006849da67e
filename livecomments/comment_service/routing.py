"""What every handler needs: the server, the caller, the client address, JSON answers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from livecomments.comment_service.auth import Principal
from livecomments.kernel.errors import LiveCommentsError, Unauthorized, ValidationError
from livecomments.kernel.ids import valid_video_id
from livecomments.kernel.netaddr import TrustedProxies
from livecomments.kernel.rates import Rate

if TYPE_CHECKING:
    from livecomments.comment_service.server import CommentServer

SERVER_KEY: web.AppKey[CommentServer] = web.AppKey("server")


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(exc: LiveCommentsError) -> web.Response:
    return json_response(exc.to_json(), exc.status, exc.headers or None)


def server_of(request: web.Request) -> CommentServer:
    return request.app[SERVER_KEY]


def video_id_of(request: web.Request) -> str:
    video_id = request.match_info["video_id"]
    if not valid_video_id(video_id):
        raise ValidationError("video ids are 1-64 of [A-Za-z0-9_-]", code="invalid_video_id")
    return video_id


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
    accounts = server_of(request).accounts
    if revocation_checked_later:
        return accounts.verify(token.strip())
    return await accounts.authenticate(token.strip())


def client_ip(request: web.Request) -> str:
    """The client's address; X-Forwarded-For counts only when a trusted proxy sent it.

    ``trusted_proxies`` takes addresses and CIDR ranges (``livecomments.kernel.netaddr``,
    shared with the RTMS listener so both count the same client).
    """
    trusted = TrustedProxies.of(server_of(request).settings.trusted_proxies)
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    return trusted.client(request.remote, forwarded)


async def limit(request: web.Request, what: str, *buckets: tuple[str, str]) -> None:
    """Take a token from each ``(bucket name, "N/S" rate)``, or answer 429."""
    server = server_of(request)
    await server.limiter.take(what, *((name, Rate.parse(spec)) for name, spec in buckets))
