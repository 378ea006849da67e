"""Comments: post, read history and replies, edit and delete."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from livecomments.comment_service.api.body import JsonBody
from livecomments.comment_service.api.context import (
    ACCOUNTS,
    COMMENTS,
    METRICS,
    REACTIONS,
    REQUEST_ID,
    SETTINGS,
    VIEWER_COUNTS,
    caller,
    client_ip,
    json_response,
    limit,
    staff_caller,
)
from livecomments.comment_service.api.params import (
    COMMENT,
    MAX_CURSOR,
    VIDEO,
    Header,
    PageSize,
    QueryInt,
)
from livecomments.comment_service.api.route import BACKEND_ERRORS, Ok, Route, install
from livecomments.comment_service.api.schema import (
    Comment,
    Count,
    Id,
    Model,
    Setting,
    VideoId,
    text,
)
from livecomments.comment_service.idempotency import HEADER as IDEMPOTENCY_HEADER
from livecomments.comment_service.idempotency import KEY_PATTERN as IDEMPOTENCY_KEY
from livecomments.comment_service.idempotency import parse_key
from livecomments.comment_service.recent import REPLY_PREVIEW
from livecomments.comment_service.validation import comment_text, optional_id
from livecomments.kernel import events
from livecomments.kernel.errors import LiveCommentsError, NotFound, ValidationError

COMMENTS_PATH = "/api/videos/{video_id}/comments"
ONE_PATH = COMMENTS_PATH + "/{comment_id}"
PINNED_PATH = "/api/videos/{video_id}/pinned"

if TYPE_CHECKING:
    CommentText = str
else:
    CommentText = text(Setting("max_comment_chars"), component="CommentText")
Seq = Annotated[int, Meta(ge=1)]


class NewComment(Model):
    text: CommentText
    parent_id: Id | None = None


class CommentEdit(Model):
    text: CommentText


class CommentWithReplies(Comment):
    reply_count: Count
    replies: Annotated[
        list[Comment],
        Meta(
            max_length=REPLY_PREVIEW,
            description=f"The first {REPLY_PREVIEW} replies, oldest first.",
        ),
    ]


class Page(Model):
    """A page of history (``Comments.page``)."""

    video_id: VideoId
    items: list[CommentWithReplies]
    head: Annotated[
        int, Meta(ge=0, description="The newest seq taken (some may still be in flight).")
    ]
    resume: Annotated[
        str,
        Meta(
            pattern="^[0-9]+-[0-9]+$",
            description=(
                "The SSE event id to open the stream with (`Last-Event-ID`, or"
                " `last_event_id=` on the stream URL): every seq up to it is in"
                " this page or older ones (or is a change, a reply or a void),"
                " and what was still being written is after it, so the stream"
                " replays it. Resuming from `head` instead can lose comments."
            ),
        ),
    ]
    next_before: Seq | UnsetType | None = UNSET
    next_after: (
        Annotated[
            Seq | None, Meta(description="More is ready: ask again at once with after=next_after.")
        ]
        | UnsetType
    ) = UNSET
    poll_after: (
        Annotated[
            int,
            Meta(
                ge=0,
                description=(
                    "Oldest-first pages: every seq up to this one is settled; a"
                    " short-polling client sends it as after= on its next poll."
                    " Pages stop before a seq that is still being written."
                ),
            ),
        ]
        | UnsetType
    ) = UNSET
    viewers: (
        Annotated[
            int,
            Meta(
                ge=0,
                description=(
                    "The first page only (neither before= nor after=): the video's viewers"
                    " on every realtime node, from their load reports (a few seconds old)."
                    " The stream's `viewers` events keep it current."
                ),
            ),
        ]
        | UnsetType
    ) = UNSET
    pinned: (
        Annotated[
            Comment | None,
            Meta(
                description=(
                    "The first page only: the comment a moderator pinned, or null. The"
                    " stream's `pinned` and `unpinned` events after `resume` keep it current."
                ),
            ),
        ]
        | UnsetType
    ) = UNSET
    # Newest-first pages carry next_before, oldest-first (after=) ones next_after.
    json_schema: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["next_before"]}, {"required": ["next_after"]}]
    }


class Pinned(Model):
    """A video's pinned comment."""

    video_id: VideoId
    pinned: Comment | None


class PinRequest(Model):
    comment_id: Id


class Replies(Model):
    """Replies to a comment, oldest first (``Comments.replies``)."""

    video_id: VideoId
    parent_id: Id
    items: list[Comment]
    next_after: Seq | None


NEW_COMMENT = JsonBody(NewComment, Setting("max_body_bytes"))
COMMENT_EDIT = JsonBody(CommentEdit, Setting("max_body_bytes"))
PIN_REQUEST = JsonBody(PinRequest, 1024)
LIMIT = PageSize(Setting("history_page_max"))
BEFORE = QueryInt("before", "Only comments with a smaller seq (newest first).", lo=1, hi=MAX_CURSOR)
AFTER = QueryInt("after", "Only comments with a larger seq (oldest first).", lo=0, hi=MAX_CURSOR)
REPLIES_AFTER = QueryInt(
    "after", "Only replies with a larger seq (the cursor).", lo=0, hi=MAX_CURSOR, default=0
)
IDEMPOTENCY = Header(
    IDEMPOTENCY_HEADER,
    Annotated[str, Meta(pattern="^" + IDEMPOTENCY_KEY.pattern + "$")],
    "A key the client makes for this comment (a UUID, say) and sends again with every retry of it.",
)


async def post_comment(request: web.Request) -> web.Response:
    """A post, counted by outcome (its error code when refused) for /metrics."""
    metrics = request.app.get(METRICS)
    started = time.perf_counter()
    try:
        response = await _post_comment(request)
    except LiveCommentsError as exc:
        if metrics is not None:
            metrics.refused(exc.status, exc.code)
        raise
    except web.HTTPException as exc:  # aiohttp's own (a body over the size limit)
        if metrics is not None:
            metrics.refused(exc.status, f"http_{exc.status}")
        raise
    except Exception:
        if metrics is not None:
            metrics.refused(500, "internal")
        raise
    if metrics is not None:
        metrics.posted(response.status == 202, time.perf_counter() - started)
    return response


async def _post_comment(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    video_id = VIDEO(request)
    # A logged-out token is refused by the admission step (one Redis call for both).
    principal = await caller(request, revocation_checked_later=True)
    body = await NEW_COMMENT.read(request)
    text = comment_text(body.text, settings.max_comment_chars)
    parent_id = optional_id(body.parent_id, "parent_id")
    key = parse_key(IDEMPOTENCY(request))  # a retry gets the first answer
    posted = await request.app[COMMENTS].post(
        principal,
        video_id,
        text,
        parent_id,
        client_ip(request),
        idempotency_key=key,
        request_id=request[REQUEST_ID],
    )
    return json_response(events.comment_json(posted.doc), 202 if posted.held else 201)


async def history_limit(request: web.Request) -> None:
    """One token of the reader's history bucket: per user if logged in, else per address.

    A token that does not verify counts as no token (the read is public).
    """
    s = request.app[SETTINGS]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        try:
            user = request.app[ACCOUNTS].verify(token.strip()).user_id
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
    seconds = request.app[SETTINGS].history_cache_seconds
    if closed and seconds > 0:
        response.headers["Cache-Control"] = f"public, max-age={seconds}"
    return response


async def list_comments(request: web.Request) -> web.Response:
    video_id = VIDEO(request)
    await history_limit(request)
    limit_, before, after = LIMIT(request), BEFORE(request), AFTER(request)
    if before is not None and after is not None:
        raise ValidationError("use either before or after, not both", code="invalid_query")
    page = await request.app[COMMENTS].page(video_id, before=before, after=after, limit=limit_)
    await _fresh_reactions(request, page["items"])
    if before is None and after is None:  # the first page: how many watch now, the pin
        # Both Redis reads at once; the pin is read after the page took its resume
        # (see ``Comments.pinned``).
        viewers, page["pinned"] = await asyncio.gather(
            request.app[VIEWER_COUNTS].total(video_id), request.app[COMMENTS].pinned(video_id)
        )
        if viewers is not None:
            page["viewers"] = viewers
    head = page.get("head") or 0
    if after is not None:
        closed = page.get("next_after") is not None
    else:
        closed = before is not None and before <= head
    return _cacheable(request, json_response(page), closed)


async def _fresh_reactions(request: web.Request, items: list[dict[str, Any]]) -> None:
    """Reaction totals from Redis, newer than the store's until the next flush."""
    every = [*items, *(reply for item in items for reply in item.get("replies", ()))]
    live = await request.app[REACTIONS].live_counts([int(i["id"]) for i in every])
    for item in every:
        counts = live.get(int(item["id"]))
        if counts is not None:
            item["reactions"] = counts


async def get_comment(request: web.Request) -> web.Response:
    await history_limit(request)
    doc = await request.app[COMMENTS].get(VIDEO(request), COMMENT(request))
    item = events.comment_json(doc)
    await _fresh_reactions(request, [item])
    return json_response(item)


async def list_replies(request: web.Request) -> web.Response:
    limit_, after = LIMIT(request), REPLIES_AFTER(request)
    assert after is not None  # it has a default
    video_id, comment_id = VIDEO(request), COMMENT(request)
    await history_limit(request)
    page = await request.app[COMMENTS].replies(video_id, comment_id, after=after, limit=limit_)
    await _fresh_reactions(request, page["items"])
    return _cacheable(request, json_response(page), page.get("next_after") is not None)


async def edit_comment(request: web.Request) -> web.Response:
    """Moderators and admins edit any comment; the change reaches viewers live."""
    video_id, comment_id = VIDEO(request), COMMENT(request)
    principal = await staff_caller(request)
    body = await COMMENT_EDIT.read(request)
    text = comment_text(body.text, request.app[SETTINGS].max_comment_chars)
    doc = await request.app[COMMENTS].edit(
        principal, video_id, comment_id, text, request_id=request[REQUEST_ID]
    )
    return json_response(events.comment_json(doc))


async def delete_comment(request: web.Request) -> web.Response:
    """Authors delete their own comments, moderators and admins any; a tombstone stays."""
    video_id, comment_id = VIDEO(request), COMMENT(request)
    principal = await caller(request)
    comments = request.app[COMMENTS]
    doc = await comments.get(video_id, comment_id)
    if doc["user_id"] != principal.user_id:
        await request.app[ACCOUNTS].require(principal, "moderator")
    doc = await comments.delete(principal, doc, request_id=request[REQUEST_ID])
    return json_response(events.comment_json(doc))


async def get_pinned(request: web.Request) -> web.Response:
    video_id = VIDEO(request)
    await history_limit(request)
    view = await request.app[COMMENTS].pinned(video_id)
    return json_response({"video_id": video_id, "pinned": view})


async def put_pinned(request: web.Request) -> web.Response:
    """Moderators pin one comment per video (replacing the pin); viewers see it live."""
    video_id = VIDEO(request)
    principal = await staff_caller(request)
    body = await PIN_REQUEST.read(request)
    comment_id = optional_id(body.comment_id, "comment_id")
    assert comment_id is not None  # the model requires it
    doc = await request.app[COMMENTS].pin(
        principal, video_id, comment_id, request_id=request[REQUEST_ID]
    )
    return json_response({"video_id": video_id, "pinned": events.comment_json(doc)})


async def delete_pinned(request: web.Request) -> web.Response:
    video_id = VIDEO(request)
    principal = await staff_caller(request)
    if not await request.app[COMMENTS].unpin(principal, video_id, request_id=request[REQUEST_ID]):
        raise NotFound("no comment is pinned on this video", code="not_pinned")
    return web.Response(status=204)


TEXT_ERRORS = ("invalid_type", "empty_text", "text_too_long", "invalid_characters")
MODERATOR_RATES = (("moderate_limit_user", "user"),)
HISTORY_RATES = (
    ("history_limit_ip", "client IP (anonymous)"),
    ("history_limit_user", "user (logged in)"),
)
CACHED = (
    "A full page that cannot gain items (older than the head, or with a next cursor) "
    "carries `Cache-Control: public, max-age=history_cache_seconds`; the others `no-store`. "
    "A bearer token is optional: with a valid one the read counts against the user's limit."
)

ROUTES = (
    Route(
        "POST",
        COMMENTS_PATH,
        post_comment,
        "Post a comment or a reply",
        "comments",
        (
            Ok(201, "Published: viewers receive it live.", Comment),
            Ok(202, "Held for a moderator's review (status held, no seq yet).", Comment),
        ),
        notes=(
            f"With an `{IDEMPOTENCY_HEADER}`, a retry (same user, video and key, within "
            "`idempotency_window` = {s.idempotency_window:g} s) gets the first attempt's "
            "comment and status instead of a second comment, without meeting the rate "
            "limits again; 409 `idempotency_in_flight` (with Retry-After) while the first "
            "attempt is still running; 422 `idempotency_key_reused` for another text or "
            "parent under the same key. After a failed attempt the key may be retried.",
            "The content filter publishes, holds (202) or refuses (422) it; moderators "
            "and admins skip the filter, slow mode and duplicate suppression "
            "(same text within {s.duplicate_window:g} s).",
        ),
        role="viewer",
        rates=(("post_limit_user", "user"), ("post_limit_ip", "client IP")),
        params=(VIDEO, IDEMPOTENCY),
        body=NEW_COMMENT,
        errors={
            400: (*TEXT_ERRORS, "invalid_id", "nested_reply", "invalid_idempotency_key"),
            403: ("banned", "warning_unacknowledged", "account_too_new"),
            404: ("parent_not_found", "comment_not_found"),
            409: ("parent_deleted", "idempotency_in_flight"),
            422: ("content_refused", "idempotency_key_reused"),
            429: ("slow_mode", "duplicate_message"),
        },
    ),
    Route(
        "GET",
        COMMENTS_PATH,
        list_comments,
        "A page of history",
        "comments",
        (Ok(200, "The page and the cursor to the next one.", Page),),
        notes=(
            CACHED,
            "Top-level comments (deleted ones as tombstones) with their first replies. "
            "Newest first from `before` (a seq; default: the head), or oldest first "
            "after `after`; not both.",
        ),
        rates=HISTORY_RATES,
        params=(VIDEO, LIMIT, BEFORE, AFTER),
        errors={503: BACKEND_ERRORS},
    ),
    Route(
        "GET",
        ONE_PATH,
        get_comment,
        "One comment",
        "comments",
        (Ok(200, "The comment (a tombstone once deleted).", Comment),),
        rates=HISTORY_RATES,
        params=(VIDEO, COMMENT),
        errors={404: ("comment_not_found",), 503: BACKEND_ERRORS},
    ),
    Route(
        "PATCH",
        ONE_PATH,
        edit_comment,
        "Edit a comment",
        "moderation",
        (Ok(200, "The edited comment.", Comment),),
        notes=("The edit reaches viewers live as a comment.updated event.",),
        role="moderator",
        rates=MODERATOR_RATES,
        params=(VIDEO, COMMENT),
        body=COMMENT_EDIT,
        errors={400: TEXT_ERRORS, 404: ("comment_not_found",), 409: ("comment_deleted",)},
    ),
    Route(
        "DELETE",
        ONE_PATH,
        delete_comment,
        "Delete a comment",
        "comments",
        (Ok(200, "The tombstone.", Comment),),
        notes=(
            "Authors delete their own comments, moderators and admins any; a tombstone "
            "stays and viewers receive a comment.deleted event. Deleting twice is a no-op.",
        ),
        role="viewer",
        params=(VIDEO, COMMENT),
        errors={403: ("forbidden",), 404: ("comment_not_found",)},
    ),
    Route(
        "GET",
        PINNED_PATH,
        get_pinned,
        "The pinned comment",
        "comments",
        (Ok(200, "The pinned comment, or null.", Pinned),),
        rates=HISTORY_RATES,
        params=(VIDEO,),
        errors={503: BACKEND_ERRORS},
    ),
    Route(
        "PUT",
        PINNED_PATH,
        put_pinned,
        "Pin a comment",
        "moderation",
        (Ok(200, "The pinned comment.", Pinned),),
        notes=(
            "One pinned comment per video: pinning another replaces it. Viewers receive a "
            "`pinned` event in order with the comments; deleting the pinned comment unpins it "
            "(an `unpinned` event).",
        ),
        role="moderator",
        rates=MODERATOR_RATES,
        params=(VIDEO,),
        body=PIN_REQUEST,
        errors={
            400: ("invalid_field", "invalid_id"),
            404: ("comment_not_found",),
            409: ("comment_deleted",),
        },
    ),
    Route(
        "DELETE",
        PINNED_PATH,
        delete_pinned,
        "Unpin the pinned comment",
        "moderation",
        (Ok(204, "Unpinned: viewers receive an `unpinned` event."),),
        role="moderator",
        rates=MODERATOR_RATES,
        params=(VIDEO,),
        errors={404: ("not_pinned",)},
    ),
    Route(
        "GET",
        ONE_PATH + "/replies",
        list_replies,
        "Replies to a comment",
        "comments",
        (Ok(200, "Replies, oldest first.", Replies),),
        notes=(CACHED,),
        rates=HISTORY_RATES,
        params=(VIDEO, COMMENT, LIMIT, REPLIES_AFTER),
        errors={404: ("comment_not_found",), 503: BACKEND_ERRORS},
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
