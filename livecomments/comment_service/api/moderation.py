"""Moderation: reports, the held queue, flagged users, bans and timeouts, slow mode, roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from livecomments.comment_service.api.body import JsonBody
from livecomments.comment_service.api.context import (
    ACCOUNTS,
    COMMENTS,
    HELD,
    IDS,
    MODERATION,
    POLICIES,
    SETTINGS,
    USERS,
    caller,
    json_response,
    limit,
    staff_caller,
)
from livecomments.comment_service.api.params import (
    COMMENT,
    USER,
    VIDEO,
    IdPath,
    PageSize,
    QueryChoice,
    QueryId,
    QueryVideo,
)
from livecomments.comment_service.api.route import BACKEND_ERRORS, Ok, Route, install
from livecomments.comment_service.api.schema import (
    WHOLE,
    Comment,
    Count,
    Id,
    Model,
    Role,
    Setting,
    Timestamp,
    VideoId,
    one_of,
    text,
)
from livecomments.comment_service.auth import RANK, Principal
from livecomments.comment_service.moderation import REPORT_REASONS, REPORT_STATES
from livecomments.comment_service.policy import GLOBAL, ShieldPreset
from livecomments.comment_service.validation import plain_text
from livecomments.kernel import events
from livecomments.kernel.errors import Forbidden, NotFound, ValidationError
from livecomments.kernel.events import iso

MAX_BAN_SECONDS = 366 * 24 * 3600
NOTE_CHARS = 500  # a report's note
REASON_CHARS = 200  # a ban's reason
SMALL_BODY = 4096  # bytes: reports, bans
TINY_BODY = 1024  # bytes: report resolutions, video settings, roles

if TYPE_CHECKING:
    ReportReason = str
    ReportStatus = str
    Action = str
    HeldState = str
    ResolutionStatus = str
    Note = str | None
    Reason = str | None
else:
    Note = text(NOTE_CHARS, optional=True)
    Reason = text(REASON_CHARS, optional=True)
    ReportReason = one_of(REPORT_REASONS)
    ReportStatus = one_of(REPORT_STATES)
    Action = one_of(("dismiss", "delete"))
    HeldState = one_of(("pending", "approved", "denied"))
    ResolutionStatus = one_of(("dismissed", "actioned"))


# -- models ---------------------------------------------------------------------


class NewReport(Model):
    reason: ReportReason
    note: Note = None


class ReportResolution(Model):
    action: Action


class BanRequest(Model):
    duration_seconds: Annotated[
        Annotated[int, Meta(ge=1, le=MAX_BAN_SECONDS)] | None,
        Meta(
            description=f"A timeout of this many seconds; absent or null: a ban. {WHOLE}",
            extra={
                "code": "invalid_field",
                "message": f"must be an integer between 1 and {MAX_BAN_SECONDS}",
            },
        ),
    ] = None
    reason: Reason = None


class WarningRequest(Model):
    reason: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=REASON_CHARS,
            description="What the user is warned about; they read it before they post again.",
            extra={"code": "invalid_field", "message": f"1 to {REASON_CHARS} characters"},
        ),
    ]


class VideoSettingsChange(Model):
    slow_mode_seconds: Annotated[
        int,
        Meta(
            ge=0,
            description=f"Seconds a viewer waits between comments; 0 turns it off. {WHOLE}",
            extra_json_schema={"maximum": Setting("max_slow_mode").json()},
            extra={"code": "invalid_field", "message": "must be an integer (seconds)"},
        ),
    ]


class ShieldSwitch(Model):
    on: Annotated[
        bool,
        Meta(
            description=("true: the shield preset at once; false: the settings from before it."),
            extra={"code": "invalid_field", "message": "must be true or false"},
        ),
    ]


class RoleChange(Model):
    role: Role


class Report(Model):
    id: Id
    comment_id: Id
    video_id: VideoId
    reason: ReportReason
    note: Annotated[str, Meta(max_length=NOTE_CHARS)]
    reporter_id: Id
    status: ReportStatus
    created_at: Timestamp
    comment: Comment

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Report:
        return cls(
            id=str(doc["_id"]),
            comment_id=str(doc["comment_id"]),
            video_id=doc["video_id"],
            reason=doc["reason"],
            note=doc.get("note") or "",
            reporter_id=str(doc["reporter_id"]),
            status=doc["status"],
            created_at=iso(doc["created_at"], "seconds") or "",
            comment=doc["comment"],  # the comment's JSON when it was reported
        )


class ReportPage(Model):
    items: list[Report]
    next_before: Id | None


class Resolution(Model):
    """What settling a report did (``Moderation.resolve``)."""

    comment_id: Id
    status: ResolutionStatus
    settled: Count
    comment: Comment | None


class HeldComment(Comment):
    score: Annotated[float, Meta(ge=0, le=1)] | None
    reasons: list[str]
    state: HeldState

    @classmethod
    def of(cls, doc: dict[str, Any]) -> HeldComment:
        return cls(
            **events.comment_json(doc),
            score=doc.get("score"),
            reasons=doc.get("reasons", []),
            state=doc["state"],  # every held document has one
        )


class HeldPage(Model):
    items: list[HeldComment]
    next_before: Id | None


class UserDetails(Model):
    """A user as moderators see them."""

    id: Id
    username: str
    role: Role
    report_count: Count
    flagged: bool
    flagged_at: Timestamp | None
    created_at: Timestamp | None

    @classmethod
    def of(cls, user: dict[str, Any]) -> UserDetails:
        return cls(
            id=str(user["_id"]),
            username=user["username"],
            role=user.get("role", "viewer"),
            report_count=int(user.get("report_count", 0)),
            flagged=bool(user.get("flagged")),
            flagged_at=iso(user.get("flagged_at"), "seconds"),
            created_at=iso(user.get("created_at"), "seconds"),
        )


class UserList(Model):
    items: list[UserDetails]


class UserWarning(Model):
    """A moderator's warning (``Policies.warn``): the user's posts are refused with 403
    ``warning_unacknowledged`` until they acknowledge it."""

    id: Id
    user_id: Id
    reason: str
    warned_by: Id
    created_at: Timestamp
    acknowledged_at: Annotated[Timestamp | None, Meta(description="Null until acknowledged.")]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> UserWarning:
        return cls(
            id=str(doc["_id"]),
            user_id=str(doc["user_id"]),
            reason=doc.get("reason") or "",
            warned_by=str(doc["by"]),
            created_at=iso(doc["created_at"], "seconds") or "",
            acknowledged_at=iso(doc.get("acknowledged_at"), "seconds"),
        )


class PendingWarning(Model):
    warning: Annotated[
        UserWarning | None, Meta(description="The warning to acknowledge; null when none.")
    ]


class Ban(Model):
    user_id: Id
    username: str | None
    video_id: VideoId | None
    reason: Annotated[str, Meta(max_length=REASON_CHARS)]
    banned_by: Id
    banned_by_role: Annotated[
        Role | None,
        Meta(
            description="The role of who set it, then (null for older bans). Only "
            "an admin can change or lift a ban an admin set."
        ),
    ]
    created_at: Timestamp
    expires_at: Annotated[Timestamp | None, Meta(description="Null for a ban, set for a timeout.")]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Ban:
        return cls(
            user_id=str(doc["user_id"]),
            username=doc.get("username"),
            video_id=None if doc["scope"] == GLOBAL else doc["scope"],
            reason=doc.get("reason") or "",
            banned_by=str(doc["by"]),
            banned_by_role=doc.get("by_role"),
            created_at=iso(doc["created_at"], "seconds") or "",
            expires_at=iso(doc.get("expires_at"), "seconds"),
        )


class BanList(Model):
    items: list[Ban]


class VideoSettings(Model):
    """A video's settings (``Policies.video_settings``)."""

    video_id: VideoId
    slow_mode_seconds: Count
    hold_threshold: Annotated[
        Annotated[float, Meta(ge=0, le=1)] | None,
        Meta(
            description=(
                "The content filter's score from which this video's comments are held"
                " for review; null: the service's own (`filter_hold_threshold`)."
            ),
        ),
    ] = None
    min_account_age_seconds: Annotated[
        int, Meta(ge=0, description="Accounts younger than this cannot comment here.")
    ] = 0
    shield: Annotated[bool, Meta(description="Shield mode is on.")] = False
    shield_since: Annotated[
        str | None, Meta(description="When shield mode was turned on (ISO 8601).")
    ] = None
    max_comment_chars: (
        Annotated[int, Meta(ge=1, description="The longest comment accepted, in characters.")]
        | UnsetType
    ) = UNSET


NEW_REPORT = JsonBody(NewReport, SMALL_BODY)
REPORT_RESOLUTION = JsonBody(ReportResolution, TINY_BODY)
BAN_REQUEST = JsonBody(BanRequest, SMALL_BODY)
SETTINGS_CHANGE = JsonBody(VideoSettingsChange, TINY_BODY)
WARNING_REQUEST = JsonBody(WarningRequest, SMALL_BODY)
ROLE_CHANGE = JsonBody(RoleChange, TINY_BODY)
SHIELD_SWITCH = JsonBody(ShieldSwitch, TINY_BODY)
REPORT = IdPath("report_id", "The report.")
STATUS = QueryChoice("status", REPORT_STATES, "Which reports.")
BEFORE = QueryId("before", "Only items older than this id (the cursor).")
LIMIT = PageSize(100)
HELD_VIDEO = QueryVideo("Only this video's.")


# -- handlers ---------------------------------------------------------------------


def _page_args(request: web.Request) -> tuple[int | None, int]:
    limit_ = LIMIT(request)
    return BEFORE(request), limit_


def _next_before(docs: list[dict[str, Any]], limit_: int) -> str | None:
    return str(docs[-1]["_id"]) if len(docs) == limit_ else None


async def report_comment(request: web.Request) -> web.Response:
    comment_id = COMMENT(request)
    principal = await caller(request)
    await limit(
        request,
        "reports",
        (f"report-user:{principal.user_id}", request.app[SETTINGS].report_limit_user),
    )
    body = await NEW_REPORT.read(request)
    note = plain_text(body.note, "note", NOTE_CHARS)
    doc = await request.app[MODERATION].report(principal, comment_id, body.reason, note)
    return json_response(Report.of(doc), 201)


async def list_reports(request: web.Request) -> web.Response:
    await staff_caller(request)
    status = STATUS(request)
    before, limit_ = _page_args(request)
    docs = await request.app[MODERATION].reports(status, before=before, limit=limit_)
    page = ReportPage(items=[Report.of(d) for d in docs], next_before=_next_before(docs, limit_))
    return json_response(page)


async def resolve_report(request: web.Request) -> web.Response:
    principal = await staff_caller(request)
    report_id = REPORT(request)
    body = await REPORT_RESOLUTION.read(request)
    result = await request.app[MODERATION].resolve(principal, report_id, body.action)
    return json_response(result)


async def list_held(request: web.Request) -> web.Response:
    await staff_caller(request)
    video = HELD_VIDEO(request)
    before, limit_ = _page_args(request)
    docs = await request.app[HELD].held(video, before=before, limit=limit_)
    page = HeldPage(items=[HeldComment.of(d) for d in docs], next_before=_next_before(docs, limit_))
    return json_response(page)


async def approve_held(request: web.Request) -> web.Response:
    principal = await staff_caller(request)
    doc = await request.app[COMMENTS].approve(principal, COMMENT(request))
    return json_response(events.comment_json(doc))


async def deny_held(request: web.Request) -> web.Response:
    principal = await staff_caller(request)
    doc = await request.app[COMMENTS].deny(principal, COMMENT(request))
    return json_response(HeldComment.of(doc))


async def list_flagged(request: web.Request) -> web.Response:
    await staff_caller(request)
    _, limit_ = _page_args(request)
    users = await request.app[MODERATION].flagged(limit_)
    return json_response(UserList(items=[UserDetails.of(u) for u in users]))


async def clear_flag(request: web.Request) -> web.Response:
    principal = await staff_caller(request)
    user = await request.app[MODERATION].clear_flag(USER(request), principal.user_id)
    return json_response(UserDetails.of(user))


def _scope(request: web.Request) -> str:
    return VIDEO(request) if "video_id" in request.match_info else GLOBAL


async def _role_of(request: web.Request, user_id: int) -> str:
    """A user's role as the store has it now."""
    user = await request.app[USERS].get_user(user_id)
    return str((user or {}).get("role", "viewer"))


async def _below(
    request: web.Request, principal: Principal, user_id: int, verb: str
) -> tuple[dict[str, Any], str]:
    """The user ``principal`` may ``verb`` (ban, warn), and the principal's role now.

    Not themselves; moderators act on viewers only, admins on anyone but admins.
    """
    if user_id == principal.user_id:
        raise ValidationError(f"you cannot {verb} yourself", code="own_account")
    target = await request.app[USERS].get_user(user_id)
    if target is None:
        raise NotFound("no such user", code="user_not_found")
    actor_role = await _role_of(request, principal.user_id)
    if RANK[target.get("role", "viewer")] >= min(RANK[actor_role], RANK["admin"]):
        raise Forbidden(f"you cannot {verb} a user with this role", code="forbidden")
    return target, actor_role


async def put_ban(request: web.Request) -> web.Response:
    """Ban (no duration) or time out (``duration_seconds``) a user, on one video or all."""
    principal = await staff_caller(request)
    scope, user_id = _scope(request), USER(request)
    body = await BAN_REQUEST.read(request)
    reason = plain_text(body.reason, "reason", REASON_CHARS)
    target, actor_role = await _below(request, principal, user_id, "ban")
    doc = await request.app[POLICIES].ban(
        scope, target, body.duration_seconds, reason, principal.user_id, by_role=actor_role
    )
    return json_response(Ban.of(doc))


async def post_warning(request: web.Request) -> web.Response:
    """Warn a user: their next post is refused until they acknowledge the warning."""
    principal = await staff_caller(request)
    user_id = USER(request)
    body = await WARNING_REQUEST.read(request)
    reason = plain_text(body.reason, "reason", REASON_CHARS)
    if not reason:
        raise ValidationError("a warning needs a reason", code="invalid_field")
    target, _ = await _below(request, principal, user_id, "warn")
    doc = await request.app[POLICIES].warn(
        target, reason, principal.user_id, request.app[IDS].next_id()
    )
    return json_response(UserWarning.of(doc), 201)


async def my_warning(request: web.Request) -> web.Response:
    principal = await caller(request)
    doc = await request.app[POLICIES].pending_warning(principal.user_id)
    return json_response({"warning": UserWarning.of(doc) if doc else None})


async def acknowledge_warning(request: web.Request) -> web.Response:
    principal = await caller(request)
    doc = await request.app[POLICIES].acknowledge(principal.user_id)
    if doc is None:
        raise NotFound("there is no warning to acknowledge", code="warning_not_found")
    return json_response(UserWarning.of(doc))


async def delete_ban(request: web.Request) -> web.Response:
    """Lift a ban; a moderator cannot lift one an admin set (403 ``ban_set_by_admin``)."""
    principal = await staff_caller(request)
    actor_role = await _role_of(request, principal.user_id)
    found = await request.app[POLICIES].unban(_scope(request), USER(request), by_role=actor_role)
    if not found:
        raise NotFound("that user is not banned here", code="ban_not_found")
    return web.Response(status=204)


async def list_bans(request: web.Request) -> web.Response:
    await staff_caller(request)
    docs = await request.app[POLICIES].bans(_scope(request))
    return json_response(BanList(items=[Ban.of(d) for d in docs]))


async def get_settings(request: web.Request) -> web.Response:
    settings = await request.app[POLICIES].video_settings(VIDEO(request))
    # What a client needs to write a comment that passes (the viewer page's limits).
    return json_response({**settings, "max_comment_chars": request.app[SETTINGS].max_comment_chars})


async def patch_settings(request: web.Request) -> web.Response:
    video_id = VIDEO(request)
    principal = await staff_caller(request)
    body = await SETTINGS_CHANGE.read(request)
    seconds, most = body.slow_mode_seconds, request.app[SETTINGS].max_slow_mode
    if seconds > most:
        raise ValidationError(
            f"slow_mode_seconds must be an integer between 0 and {most}",
            code="invalid_field",
            details={"field": "slow_mode_seconds"},
        )
    settings = await request.app[POLICIES].set_video_settings(video_id, seconds, principal.user_id)
    return json_response(settings)


async def put_shield(request: web.Request) -> web.Response:
    """Shield mode on (a stricter preset at once) or off (the settings from before)."""
    video_id = VIDEO(request)
    principal = await staff_caller(request)
    body = await SHIELD_SWITCH.read(request)
    s = request.app[SETTINGS]
    preset = ShieldPreset(s.shield_slow_mode, s.shield_hold_threshold, s.shield_min_account_age)
    settings = await request.app[POLICIES].set_shield(video_id, body.on, principal.user_id, preset)
    return json_response(settings)


async def put_role(request: web.Request) -> web.Response:
    """Admins make moderators (and admins), or take the role back."""
    principal = await staff_caller(request, "admin")
    user_id = USER(request)
    body = await ROLE_CHANGE.read(request)
    if user_id == principal.user_id:
        raise ValidationError("you cannot change your own role", code="own_account")
    user = await request.app[ACCOUNTS].set_role(user_id, body.role)
    return json_response(UserDetails.of(user))


# -- routes -----------------------------------------------------------------------

MODERATOR_RATES = (("moderate_limit_user", "user"),)
TEXT_ERRORS = ("invalid_type", "empty_text", "text_too_long", "invalid_characters")


def _route(method: str, path: str, handler: Any, summary: str, *answers: Ok, **more: Any) -> Route:
    """A moderator's route (unless ``role`` says otherwise), counted against their bucket."""
    more.setdefault("role", "moderator")
    more.setdefault("rates", MODERATOR_RATES)
    return Route(method, path, handler, summary, "moderation", answers, **more)


def _bans(prefix: str, scope: str) -> tuple[Route, ...]:
    scoped = (VIDEO,) if "{video_id}" in prefix else ()
    return (
        _route(
            "GET",
            prefix + "/bans",
            list_bans,
            f"Active bans and timeouts on {scope}",
            Ok(200, "The bans.", BanList),
            params=scoped,
        ),
        _route(
            "PUT",
            prefix + "/bans/{user_id}",
            put_ban,
            f"Ban or time out a user on {scope}",
            Ok(200, "The ban.", Ban),
            notes=(
                "Without `duration_seconds` a ban, with it a timeout (at most "
                f"{MAX_BAN_SECONDS} s). Moderators cannot ban moderators or admins, nobody "
                "can ban admins or themselves; banning again replaces the ban.",
            ),
            params=(*scoped, USER),
            body=BAN_REQUEST,
            errors={
                400: ("invalid_field", *TEXT_ERRORS, "own_account"),
                403: ("ban_set_by_admin",),
                404: ("user_not_found",),
            },
        ),
        _route(
            "DELETE",
            prefix + "/bans/{user_id}",
            delete_ban,
            f"Lift a ban or timeout on {scope}",
            Ok(204, "Lifted."),
            params=(*scoped, USER),
            errors={403: ("ban_set_by_admin",), 404: ("ban_not_found",)},
        ),
    )


ROUTES = (
    _route(
        "POST",
        "/api/users/{user_id}/warnings",
        post_warning,
        "Warn a user",
        Ok(201, "The warning.", UserWarning),
        notes=(
            "The user's next post is refused (403 `warning_unacknowledged`) until they "
            "acknowledge the warning (`POST /api/auth/me/warning/ack`). Moderators cannot "
            "warn moderators or admins, nobody can warn admins or themselves.",
        ),
        params=(USER,),
        body=WARNING_REQUEST,
        errors={400: ("invalid_field", *TEXT_ERRORS, "own_account"), 404: ("user_not_found",)},
    ),
    _route(
        "GET",
        "/api/auth/me/warning",
        my_warning,
        "The caller's warning to acknowledge",
        Ok(200, "The warning, or null.", PendingWarning),
        role="viewer",
        rates=(),
    ),
    _route(
        "POST",
        "/api/auth/me/warning/ack",
        acknowledge_warning,
        "Acknowledge a warning",
        Ok(200, "The warning, with the time it was acknowledged.", UserWarning),
        notes=("Recorded with the warning; the caller's posts go through again.",),
        role="viewer",
        rates=(),
        errors={404: ("warning_not_found",)},
    ),
    _route(
        "POST",
        "/api/comments/{comment_id}/reports",
        report_comment,
        "Report a comment",
        Ok(201, "The report.", Report),
        notes=(
            "Once a user's comments gather {s.flag_threshold} reports the user is flagged "
            "for moderators.",
        ),
        role="viewer",
        rates=(("report_limit_user", "user"),),
        params=(COMMENT,),
        body=NEW_REPORT,
        errors={
            400: ("invalid_field", *TEXT_ERRORS, "own_comment"),
            404: ("comment_not_found",),
            409: ("comment_deleted", "already_reported"),
        },
    ),
    _route(
        "GET",
        "/api/moderation/reports",
        list_reports,
        "Reports, newest first",
        Ok(200, "A page of reports.", ReportPage),
        params=(STATUS, BEFORE, LIMIT),
    ),
    _route(
        "POST",
        "/api/moderation/reports/{report_id}/resolve",
        resolve_report,
        "Settle a report",
        Ok(200, "What was done.", Resolution),
        notes=(
            "Dismiss it, or delete the reported comment; either settles every open "
            "report of that comment.",
        ),
        params=(REPORT,),
        body=REPORT_RESOLUTION,
        errors={400: ("invalid_field",), 404: ("report_not_found",)},
    ),
    _route(
        "GET",
        "/api/moderation/held",
        list_held,
        "Comments held for review, newest first",
        Ok(200, "A page of held comments.", HeldPage),
        params=(HELD_VIDEO, BEFORE, LIMIT),
    ),
    _route(
        "POST",
        "/api/moderation/held/{comment_id}/approve",
        approve_held,
        "Publish a held comment",
        Ok(200, "The published comment.", Comment),
        notes=("It takes the video's next seq; approving twice returns the comment.",),
        params=(COMMENT,),
        errors={404: ("held_not_found",), 409: ("already_settled",)},
    ),
    _route(
        "POST",
        "/api/moderation/held/{comment_id}/deny",
        deny_held,
        "Refuse a held comment",
        Ok(200, "The denied comment.", HeldComment),
        params=(COMMENT,),
        errors={404: ("held_not_found",), 409: ("already_settled",)},
    ),
    _route(
        "GET",
        "/api/moderation/flagged-users",
        list_flagged,
        "Flagged users, most recently flagged first",
        Ok(200, "The flagged users.", UserList),
        params=(LIMIT,),
    ),
    _route(
        "DELETE",
        "/api/moderation/flagged-users/{user_id}",
        clear_flag,
        "Clear a user's flag",
        Ok(200, "The user.", UserDetails),
        notes=("Reviewed: the flag and the user's report count start over.",),
        params=(USER,),
        errors={404: ("user_not_found",)},
    ),
    *_bans("/api", "every video"),
    *_bans("/api/videos/{video_id}", "one video"),
    _route(
        "GET",
        "/api/videos/{video_id}/settings",
        get_settings,
        "A video's settings",
        Ok(200, "The settings (defaults for a video never configured).", VideoSettings),
        role=None,
        rates=(),
        params=(VIDEO,),
        errors={503: BACKEND_ERRORS},
    ),
    _route(
        "PATCH",
        "/api/videos/{video_id}/settings",
        patch_settings,
        "Change a video's settings",
        Ok(200, "The new settings.", VideoSettings),
        notes=("Slow mode is at most `max_slow_mode` = {s.max_slow_mode} s.",),
        params=(VIDEO,),
        body=SETTINGS_CHANGE,
        errors={400: ("invalid_field",)},
    ),
    _route(
        "PUT",
        "/api/videos/{video_id}/shield",
        put_shield,
        "Shield mode on or off",
        Ok(200, "The new settings.", VideoSettings),
        notes=(
            "On: at once slow mode of at least `shield_slow_mode` = {s.shield_slow_mode} s, "
            "comments scoring `shield_hold_threshold` = {s.shield_hold_threshold:g} or more "
            "held for review, and accounts younger than `shield_min_account_age` = "
            "{s.shield_min_account_age} s refused (403 `account_too_new`); settings already "
            "stricter stay. Off: the settings from before it come back. Moderators and "
            "admins are exempt, as from slow mode.",
        ),
        params=(VIDEO,),
        body=SHIELD_SWITCH,
        errors={400: ("invalid_field",)},
    ),
    _route(
        "PUT",
        "/api/users/{user_id}/role",
        put_role,
        "Change a user's role",
        Ok(200, "The user with the new role.", UserDetails),
        notes=(
            "Admins make moderators and admins, or take the role back; not their own, "
            "and never the last admin's (409 `last_admin`).",
        ),
        role="admin",
        params=(USER,),
        body=ROLE_CHANGE,
        errors={
            400: ("invalid_field", "own_account"),
            404: ("user_not_found",),
            409: ("last_admin",),
        },
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
