"""HTTP routes and middlewares of the comment service."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web

from comment_service.auth import Principal, check_credentials, public_user
from comment_service.validation import comment_text, json_object, optional_id, query_int
from coord import rendezvous
from livecomments import events
from livecomments.errors import (
    LiveCommentsError,
    NotFound,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from livecomments.ids import valid_video_id

if TYPE_CHECKING:
    from comment_service.server import CommentServer

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SERVER_KEY: web.AppKey[CommentServer] = web.AppKey("server")

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(exc: LiveCommentsError) -> web.Response:
    return json_response(exc.to_json(), exc.status, exc.headers or None)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except LiveCommentsError as exc:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_response(
            {"error": {"code": code, "message": exc.reason}},
            exc.status,
            {"Allow": exc.headers.get("Allow", "")} if exc.status == 405 else None,
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": {"code": "internal", "message": "internal error"}}, 500)


@web.middleware
async def headers_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _server(request: web.Request) -> CommentServer:
    return request.app[SERVER_KEY]


def _video_id(request: web.Request) -> str:
    video_id = request.match_info["video_id"]
    if not valid_video_id(video_id):
        raise ValidationError("video ids are 1-64 of [A-Za-z0-9_-]", code="invalid_video_id")
    return video_id


def _principal(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "log in and send 'Authorization: Bearer <token>'",
            code="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _server(request).accounts.verify(token.strip())


# -- accounts -----------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_object(request, 4096, frozenset({"username", "password"}))
    username, password = check_credentials(body)
    user = await server.accounts.register(username, password, server.comments.ids)
    return _session(server, user, 201)


async def login(request: web.Request) -> web.Response:
    server = _server(request)
    body = await json_object(request, 4096, frozenset({"username", "password"}))
    username, password = check_credentials(body)
    user = await server.accounts.login(username, password)
    return _session(server, user, 200)


def _session(server: CommentServer, user: dict[str, Any], status: int) -> web.Response:
    return json_response(
        {
            "user": public_user(user),
            "token": server.accounts.issue(user),
            "token_type": "Bearer",
            "expires_in": server.accounts.ttl,
        },
        status,
    )


# -- comments -----------------------------------------------------------------


async def post_comment(request: web.Request) -> web.Response:
    server = _server(request)
    video_id = _video_id(request)
    principal = _principal(request)
    body = await json_object(
        request, server.settings.max_body_bytes, frozenset({"text", "parent_id"})
    )
    text = comment_text(body.get("text"), server.settings.max_comment_chars)
    parent_id = optional_id(body.get("parent_id"), "parent_id")
    doc = await server.comments.post(principal, video_id, text, parent_id)
    return json_response(events.comment_json(doc), 201)


async def list_comments(request: web.Request) -> web.Response:
    server = _server(request)
    video_id = _video_id(request)
    limit = query_int(request, "limit", lo=1, hi=server.settings.history_page_max, default=50)
    before = query_int(request, "before", lo=1, hi=(1 << 62), default=None)
    after = query_int(request, "after", lo=0, hi=(1 << 62), default=None)
    if before is not None and after is not None:
        raise ValidationError("use either before or after, not both", code="invalid_query")
    assert limit is not None
    page = await server.comments.page(video_id, before=before, after=after, limit=limit)
    return json_response(page)


async def stream(request: web.Request) -> web.Response:
    """307 to the RTMS node placed for the video, carrying the resume point along."""
    server = _server(request)
    video_id = _video_id(request)
    nodes = {
        node_id: info
        for node_id, info in server.rtms_nodes.nodes.items()
        if isinstance(info.get("sse_url"), str) and not info.get("draining")
    }
    if not nodes:
        raise Unavailable("no realtime node is available", code="no_rtms_node")
    (chosen,) = rendezvous(video_id, nodes, 1)
    location = f"{nodes[chosen]['sse_url']}/stream/{video_id}"
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if last_id and events.parse_event_id(last_id) is not None:
        location += f"?last_event_id={quote(last_id, safe='')}"
    headers = {"Location": location, "Cache-Control": "no-store"}
    headers.update(server.cors_headers(request))
    return web.Response(status=307, headers=headers)


# -- misc ----------------------------------------------------------------------


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def health(request: web.Request) -> web.Response:
    return json_response(_server(request).health())


async def not_found(request: web.Request) -> web.Response:
    raise NotFound("no such endpoint")


def build_app(server: CommentServer) -> web.Application:
    app = web.Application(
        middlewares=[headers_middleware, errors_middleware],
        client_max_size=server.settings.max_body_bytes,
    )
    app[SERVER_KEY] = server
    app.router.add_get("/", index)
    app.router.add_get("/healthz", health)
    app.router.add_post("/api/auth/register", register)
    app.router.add_post("/api/auth/login", login)
    app.router.add_post("/api/videos/{video_id}/comments", post_comment)
    app.router.add_get("/api/videos/{video_id}/comments", list_comments)
    app.router.add_get("/api/videos/{video_id}/stream", stream)
    return app
