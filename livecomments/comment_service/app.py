"""HTTP routes of accounts, comments, reactions and streams; the app and its middlewares."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from aiohttp import web

from livecomments.comment_service import browser, moderation_routes
from livecomments.comment_service.auth import check_credentials, public_user
from livecomments.comment_service.idempotency import HEADER as IDEMPOTENCY_HEADER
from livecomments.comment_service.idempotency import parse_key
from livecomments.comment_service.openapi import openapi_document
from livecomments.comment_service.passwords import check_new_password
from livecomments.comment_service.reactions import EMOJI
from livecomments.comment_service.routing import (
    SERVER_KEY,
    caller,
    client_ip,
    error_response,
    json_response,
    limit,
    server_of,
    video_id_of,
)
from livecomments.comment_service.validation import (
    comment_text,
    json_object,
    optional_id,
    path_id,
    query_int,
)
from livecomments.kernel import events
from livecomments.kernel.errors import (
    Forbidden,
    LiveCommentsError,
    NotFound,
    Unavailable,
    ValidationError,
)
from livecomments.kernel.stream import Position, stream_url

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


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
    """CORS (preflights too) and the security headers, on every answer, errors included."""
    api = request.path.startswith("/api/")
    if api and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        refused = request.match_info.http_exception
        if isinstance(refused, web.HTTPMethodNotAllowed):  # a route, without OPTIONS itself
            cors = server_of(request).cors_headers(request)
            headers = browser.preflight_headers(cors, refused.allowed_methods)
            return _secured(request, web.Response(status=204, headers=headers), api)
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:  # not an error (errors_middleware answered those)
        _secured(request, exc, api)
        raise
    return _secured(request, response, api)


def _secured(request: web.Request, response: web.StreamResponse, api: bool) -> web.StreamResponse:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", browser.API_CSP)
    settings = server_of(request).settings
    if request.secure and settings.hsts_max_age > 0:
        headers.setdefault("Strict-Transport-Security", f"max-age={settings.hsts_max_age}")
    if api:
        headers.setdefault("Cache-Control", "no-store")
        for name, value in server_of(request).cors_headers(request).items():
            if name == "Vary":
                vary = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
                if value not in vary:
                    headers["Vary"] = ", ".join([*vary, value])
            else:
                headers[name] = value
        if "Access-Control-Allow-Origin" in headers:
            headers["Access-Control-Expose-Headers"] = browser.EXPOSE_HEADERS
    return response


# -- accounts -----------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    server = server_of(request)
    await limit(request, "sign-ups", (f"register-ip:{client_ip(request)}",
                                      server.settings.register_limit_ip))  # fmt: skip
    body = await json_object(request, 4096, frozenset({"username", "password"}))
    username, password = check_credentials(body)
    check_new_password(username, password)  # 400 weak_password, saying why
    user = await server.accounts.register(username, password, server.comments.ids)
    return _session(request, user, 201)


async def login(request: web.Request) -> web.Response:
    """Log in; failures lock the (account, address) pair, not the account.

    An unknown username and a wrong password get the same answer, byte for
    byte, after the same password-hash work (see ``Accounts.login``), and the
    locks below treat both alike.
    """
    server = server_of(request)
    body = await json_object(request, 4096, frozenset({"username", "password"}))
    username, password = check_credentials(body)
    attempt = await server.limiter.login_attempt(
        username.lower(), client_ip(request), server.login_limits
    )
    user = await server.accounts.login(username, password)
    await server.limiter.login_succeeded(attempt)
    return _session(request, user, 200)


def _session(request: web.Request, user: dict[str, Any], status: int) -> web.Response:
    accounts = server_of(request).accounts
    return json_response(
        {
            "user": public_user(user),
            "token": accounts.issue(user),
            "token_type": "Bearer",
            "expires_in": accounts.ttl,
        },
        status,
    )


async def logout(request: web.Request) -> web.Response:
    principal = await caller(request)
    await server_of(request).accounts.logout(principal)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    principal = await caller(request)
    user = await server_of(request).store.get_user(principal.user_id)
    if user is None:
        raise NotFound("the account no longer exists", code="user_not_found")
    return json_response(public_user(user))


# -- comments -----------------------------------------------------------------


async def post_comment(request: web.Request) -> web.Response:
    server = server_of(request)
    video_id = video_id_of(request)
    # A logged-out token is refused by the admission step (one Redis call for both).
    principal = await caller(request, revocation_checked_later=True)
    body = await json_object(
        request, server.settings.max_body_bytes, frozenset({"text", "parent_id"})
    )
    text = comment_text(body.get("text"), server.settings.max_comment_chars)
    parent_id = optional_id(body.get("parent_id"), "parent_id")
    key = parse_key(request.headers.get(IDEMPOTENCY_HEADER))  # a retry gets the first answer
    posted = await server.comments.post(
        principal, video_id, text, parent_id, client_ip(request), idempotency_key=key
    )
    if posted.held:
        return json_response(events.comment_json(posted.doc), 202)
    return json_response(events.comment_json(posted.doc), 201)


async def history_limit(request: web.Request) -> None:
    """One token of the reader's history bucket: per user if logged in, else per address.

    A token that does not verify counts as no token (the read is public).
    """
    s = server_of(request).settings
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        try:
            user = server_of(request).accounts.verify(token.strip()).user_id
        except LiveCommentsError:
            pass
        else:
            await limit(request, "history reads", (f"history-user:{user}", s.history_limit_user))
            return
    await limit(request, "history reads", (f"history-ip:{client_ip(request)}", s.history_limit_ip))


def _cacheable(request: web.Request, response: web.Response, closed: bool) -> web.Response:
    """Let browsers and shared caches keep a page that can no longer gain comments.

    Such a page (older than the head, or a full page with a next cursor) changes
    only when one of its comments is edited, deleted, replied to or reacted to,
    so it may be served stale for ``history_cache_seconds``; the live stream
    carries those changes at once. A page at the head is never cached.
    """
    seconds = server_of(request).settings.history_cache_seconds
    if closed and seconds > 0:
        response.headers["Cache-Control"] = f"public, max-age={seconds}"
    return response


async def list_comments(request: web.Request) -> web.Response:
    server = server_of(request)
    video_id = video_id_of(request)
    await history_limit(request)
    limit_ = query_int(request, "limit", lo=1, hi=server.settings.history_page_max, default=50)
    before = query_int(request, "before", lo=1, hi=(1 << 62), default=None)
    after = query_int(request, "after", lo=0, hi=(1 << 62), default=None)
    if before is not None and after is not None:
        raise ValidationError("use either before or after, not both", code="invalid_query")
    assert limit_ is not None
    page = await server.comments.page(video_id, before=before, after=after, limit=limit_)
    await _fresh_reactions(request, page["items"])
    head = page.get("head") or 0
    if after is not None:
        closed = page.get("next_after") is not None
    else:
        closed = before is not None and before <= head
    return _cacheable(request, json_response(page), closed)


async def _fresh_reactions(request: web.Request, items: list[dict[str, Any]]) -> None:
    """Reaction totals from Redis, newer than the store's until the next flush."""
    every = [*items, *(reply for item in items for reply in item.get("replies", ()))]
    live = await server_of(request).reactions.live_counts([int(i["id"]) for i in every])
    for item in every:
        counts = live.get(int(item["id"]))
        if counts is not None:
            item["reactions"] = counts


async def get_comment(request: web.Request) -> web.Response:
    server = server_of(request)
    await history_limit(request)
    doc = await server.comments.get(video_id_of(request), path_id(request, "comment_id"))
    item = events.comment_json(doc)
    await _fresh_reactions(request, [item])
    return json_response(item)


async def list_replies(request: web.Request) -> web.Response:
    server = server_of(request)
    limit_ = query_int(request, "limit", lo=1, hi=server.settings.history_page_max, default=50)
    after = query_int(request, "after", lo=0, hi=(1 << 62), default=0)
    assert limit_ is not None and after is not None
    video_id, comment_id = video_id_of(request), path_id(request, "comment_id")
    await history_limit(request)
    page = await server.comments.replies(video_id, comment_id, after=after, limit=limit_)
    await _fresh_reactions(request, page["items"])
    return _cacheable(request, json_response(page), page.get("next_after") is not None)


async def edit_comment(request: web.Request) -> web.Response:
    """Moderators and admins edit any comment; the change reaches viewers live."""
    server = server_of(request)
    video_id, comment_id = video_id_of(request), path_id(request, "comment_id")
    principal = await caller(request)
    await server.accounts.require(principal, "moderator")
    body = await json_object(request, server.settings.max_body_bytes, frozenset({"text"}))
    text = comment_text(body.get("text"), server.settings.max_comment_chars)
    doc = await server.comments.edit(principal, video_id, comment_id, text)
    return json_response(events.comment_json(doc))


async def delete_comment(request: web.Request) -> web.Response:
    """Authors delete their own comments, moderators and admins any; a tombstone stays."""
    server = server_of(request)
    video_id, comment_id = video_id_of(request), path_id(request, "comment_id")
    principal = await caller(request)
    doc = await server.comments.get(video_id, comment_id)
    if doc["user_id"] != principal.user_id:
        await server.accounts.require(principal, "moderator")
    doc = await server.comments.delete(principal, doc)
    return json_response(events.comment_json(doc))


# -- reactions ------------------------------------------------------------------


async def reaction_set(request: web.Request) -> web.Response:
    return json_response({"reactions": [{"name": k, "emoji": v} for k, v in EMOJI.items()]})


async def react(request: web.Request) -> web.Response:
    server = server_of(request)
    video_id, comment_id = video_id_of(request), path_id(request, "comment_id")
    name = request.match_info["reaction"]
    if name not in EMOJI:
        raise ValidationError(
            f"reactions are: {', '.join(EMOJI)}",
            code="invalid_reaction",
            details={"allowed": list(EMOJI)},
        )
    principal = await caller(request)
    await limit(
        request,
        "reactions",
        (f"react-user:{principal.user_id}", server.settings.react_limit_user),
    )
    doc = await server.comments.get(video_id, comment_id)
    if doc.get("status") == events.STATUS_DELETED:
        raise Forbidden("the comment was deleted", code="comment_deleted", status=409)
    add = request.method == "PUT"
    changed, counts = await server.reactions.react(principal.user_id, doc, name, add)
    return json_response(
        {
            "comment_id": str(comment_id),
            "reaction": name,
            "reacted": add,
            "changed": changed,
            "reactions": counts,
        }
    )


# -- streams ----------------------------------------------------------------------


async def stream(request: web.Request) -> web.Response:
    """307 to an RTMS node placed for the video, carrying the resume point along.

    The node is marked as chosen by a redirect (``redirected=1``) so it serves
    the viewer even if its own view of placement is a moment behind ours.
    """
    server = server_of(request)
    video_id = video_id_of(request)
    placed = server.placement.placed(video_id)
    if not placed:
        raise Unavailable("no realtime node is available", code="no_rtms_node")
    base = server.placement.url(random.choice(placed))
    if base is None:  # the node left between the two reads
        raise Unavailable("no realtime node is available", code="no_rtms_node")
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    location = stream_url(base, video_id, Position.parse(last_id))
    # CORS headers: headers_middleware (as on every /api answer).
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})


# -- misc ----------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    """The viewer page, with the CSP and the stream origins of the moment."""
    server = server_of(request)
    body, csp = server.page.render(server.stream_origins())
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-cache"}
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)


async def health(request: web.Request) -> web.Response:
    return json_response(server_of(request).health())


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(server_of(request).settings))


def build_app(server: Any) -> web.Application:
    app = web.Application(
        middlewares=[headers_middleware, errors_middleware],
        client_max_size=server.settings.max_body_bytes,
    )
    app[SERVER_KEY] = server
    r = app.router
    r.add_get("/", index)
    r.add_get("/healthz", health)
    r.add_get("/api/openapi.json", openapi)
    r.add_post("/api/auth/register", register)
    r.add_post("/api/auth/login", login)
    r.add_post("/api/auth/logout", logout)
    r.add_get("/api/auth/me", me)
    r.add_get("/api/reactions", reaction_set)
    comments = "/api/videos/{video_id}/comments"
    r.add_post(comments, post_comment)
    r.add_get(comments, list_comments)
    r.add_get(comments + "/{comment_id}", get_comment)
    r.add_patch(comments + "/{comment_id}", edit_comment)
    r.add_delete(comments + "/{comment_id}", delete_comment)
    r.add_get(comments + "/{comment_id}/replies", list_replies)
    r.add_put(comments + "/{comment_id}/reactions/{reaction}", react)
    r.add_delete(comments + "/{comment_id}/reactions/{reaction}", react)
    r.add_get("/api/videos/{video_id}/stream", stream)
    moderation_routes.add_routes(app)
    return app
