"""HTTP routes of moderation: reports, queues, bans, slow mode, roles."""

from __future__ import annotations

from aiohttp import web

from livecomments.comment_service.auth import RANK, Principal
from livecomments.comment_service.moderation import (
    REPORT_REASONS,
    REPORT_STATES,
    held_json,
    report_json,
    user_json,
)
from livecomments.comment_service.policy import GLOBAL, ban_json
from livecomments.comment_service.routing import (
    caller,
    json_response,
    limit,
    server_of,
    video_id_of,
)
from livecomments.comment_service.validation import (
    choice,
    json_object,
    optional_int,
    path_id,
    plain_text,
    query_id,
    query_int,
)
from livecomments.kernel import events
from livecomments.kernel.errors import Forbidden, NotFound, ValidationError
from livecomments.kernel.ids import valid_video_id

MAX_BAN_SECONDS = 366 * 24 * 3600


async def _moderator(request: web.Request, role: str = "moderator") -> Principal:
    """The caller, if their current role (read from the store) is at least ``role``."""
    server = server_of(request)
    principal = await caller(request)
    await limit(
        request,
        "moderation actions",
        (f"moderate-user:{principal.user_id}", server.settings.moderate_limit_user),
    )
    await server.accounts.require(principal, role)
    return principal


def _page_args(request: web.Request) -> tuple[int | None, int]:
    limit_ = query_int(request, "limit", lo=1, hi=100, default=50)
    assert limit_ is not None
    return query_id(request, "before"), limit_


# -- reports --------------------------------------------------------------------


async def report_comment(request: web.Request) -> web.Response:
    server = server_of(request)
    comment_id = path_id(request, "comment_id")
    principal = await caller(request)
    await limit(
        request, "reports", (f"report-user:{principal.user_id}", server.settings.report_limit_user)
    )
    body = await json_object(request, 4096, frozenset({"reason", "note"}))
    reason = choice(body.get("reason"), "reason", REPORT_REASONS)
    note = plain_text(body.get("note"), "note", 500)
    doc = await server.moderation.report(principal, comment_id, reason, note)
    return json_response(report_json(doc), 201)


async def list_reports(request: web.Request) -> web.Response:
    await _moderator(request)
    status = choice(request.query.get("status", "open"), "status", REPORT_STATES)
    before, limit_ = _page_args(request)
    docs = await server_of(request).moderation.reports(status, before=before, limit=limit_)
    return json_response(
        {
            "items": [report_json(d) for d in docs],
            "next_before": str(docs[-1]["_id"]) if len(docs) == limit_ else None,
        }
    )


async def resolve_report(request: web.Request) -> web.Response:
    principal = await _moderator(request)
    report_id = path_id(request, "report_id")
    body = await json_object(request, 1024, frozenset({"action"}))
    action = choice(body.get("action"), "action", ("dismiss", "delete"))
    result = await server_of(request).moderation.resolve(principal, report_id, action)
    return json_response(result)


# -- held for review ----------------------------------------------------------------


async def list_held(request: web.Request) -> web.Response:
    await _moderator(request)
    video = request.query.get("video_id") or None
    if video is not None and not valid_video_id(video):
        raise ValidationError("video ids are 1-64 of [A-Za-z0-9_-]", code="invalid_video_id")
    before, limit_ = _page_args(request)
    docs = await server_of(request).store.held(video, before=before, limit=limit_)
    return json_response(
        {
            "items": [held_json(d) for d in docs],
            "next_before": str(docs[-1]["_id"]) if len(docs) == limit_ else None,
        }
    )


async def approve_held(request: web.Request) -> web.Response:
    principal = await _moderator(request)
    doc = await server_of(request).comments.approve(principal, path_id(request, "comment_id"))
    return json_response(events.comment_json(doc))


async def deny_held(request: web.Request) -> web.Response:
    principal = await _moderator(request)
    doc = await server_of(request).comments.deny(principal, path_id(request, "comment_id"))
    return json_response(held_json(doc))


# -- flagged users ------------------------------------------------------------------


async def list_flagged(request: web.Request) -> web.Response:
    await _moderator(request)
    _, limit_ = _page_args(request)
    users = await server_of(request).moderation.flagged(limit_)
    return json_response({"items": [user_json(u) for u in users]})


async def clear_flag(request: web.Request) -> web.Response:
    principal = await _moderator(request)
    user = await server_of(request).moderation.clear_flag(
        path_id(request, "user_id"), principal.user_id
    )
    return json_response(user_json(user))


# -- bans and timeouts -------------------------------------------------------------


def _scope(request: web.Request) -> str:
    return video_id_of(request) if "video_id" in request.match_info else GLOBAL


async def put_ban(request: web.Request) -> web.Response:
    """Ban (no duration) or time out (``duration_seconds``) a user, on one video or all."""
    server = server_of(request)
    principal = await _moderator(request)
    scope, user_id = _scope(request), path_id(request, "user_id")
    body = await json_object(request, 4096, frozenset({"duration_seconds", "reason"}))
    seconds = optional_int(body.get("duration_seconds"), "duration_seconds", lo=1,
                           hi=MAX_BAN_SECONDS)  # fmt: skip
    reason = plain_text(body.get("reason"), "reason", 200)
    if user_id == principal.user_id:
        raise ValidationError("you cannot ban yourself", code="own_account")
    target = await server.store.get_user(user_id)
    if target is None:
        raise NotFound("no such user", code="user_not_found")
    actor = await server.store.get_user(principal.user_id)
    actor_role = (actor or {}).get("role", "viewer")
    if RANK[target.get("role", "viewer")] >= min(RANK[actor_role], RANK["admin"]):
        raise Forbidden("you cannot ban a user with this role", code="forbidden")
    doc = await server.policies.ban(
        scope, target, seconds, reason, principal.user_id, by_role=actor_role
    )
    return json_response(ban_json(doc))


async def delete_ban(request: web.Request) -> web.Response:
    """Lift a ban; a moderator cannot lift one an admin set (403 ``ban_set_by_admin``)."""
    server = server_of(request)
    principal = await _moderator(request)
    actor = await server.store.get_user(principal.user_id)
    actor_role = (actor or {}).get("role", "viewer")
    found = await server.policies.unban(
        _scope(request), path_id(request, "user_id"), by_role=actor_role
    )
    if not found:
        raise NotFound("that user is not banned here", code="ban_not_found")
    return web.Response(status=204)


async def list_bans(request: web.Request) -> web.Response:
    await _moderator(request)
    docs = await server_of(request).policies.bans(_scope(request))
    return json_response({"items": [ban_json(d) for d in docs]})


# -- video settings and roles ---------------------------------------------------------


async def get_settings(request: web.Request) -> web.Response:
    return json_response(await server_of(request).policies.video_settings(video_id_of(request)))


async def patch_settings(request: web.Request) -> web.Response:
    server = server_of(request)
    video_id = video_id_of(request)
    principal = await _moderator(request)
    body = await json_object(request, 1024, frozenset({"slow_mode_seconds"}))
    seconds = optional_int(
        body.get("slow_mode_seconds"), "slow_mode_seconds", lo=0, hi=server.settings.max_slow_mode
    )
    if seconds is None:
        raise ValidationError("slow_mode_seconds is required", code="invalid_field")
    settings = await server.policies.set_video_settings(video_id, seconds, principal.user_id)
    return json_response(settings)


async def put_role(request: web.Request) -> web.Response:
    """Admins make moderators (and admins), or take the role back."""
    server = server_of(request)
    principal = await _moderator(request, "admin")
    user_id = path_id(request, "user_id")
    body = await json_object(request, 1024, frozenset({"role"}))
    role = choice(body.get("role"), "role", tuple(RANK))
    if user_id == principal.user_id:
        raise ValidationError("you cannot change your own role", code="own_account")
    user = await server.accounts.set_role(user_id, role)
    return json_response(user_json(user))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/comments/{comment_id}/reports", report_comment)
    r.add_get("/api/moderation/reports", list_reports)
    r.add_post("/api/moderation/reports/{report_id}/resolve", resolve_report)
    r.add_get("/api/moderation/held", list_held)
    r.add_post("/api/moderation/held/{comment_id}/approve", approve_held)
    r.add_post("/api/moderation/held/{comment_id}/deny", deny_held)
    r.add_get("/api/moderation/flagged-users", list_flagged)
    r.add_delete("/api/moderation/flagged-users/{user_id}", clear_flag)
    for prefix in ("/api", "/api/videos/{video_id}"):
        r.add_get(prefix + "/bans", list_bans)
        r.add_put(prefix + "/bans/{user_id}", put_ban)
        r.add_delete(prefix + "/bans/{user_id}", delete_ban)
    r.add_get("/api/videos/{video_id}/settings", get_settings)
    r.add_patch("/api/videos/{video_id}/settings", patch_settings)
    r.add_put("/api/users/{user_id}/role", put_role)
