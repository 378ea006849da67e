"""Chat replay: when a video went live, and its comments by offset from then."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from msgspec import Meta

from livecomments.comment_service.api.body import JsonBody
from livecomments.comment_service.api.comments import _cacheable, history_limit
from livecomments.comment_service.api.context import REPLAY, json_response, staff_caller
from livecomments.comment_service.api.moderation import MODERATOR_RATES
from livecomments.comment_service.api.params import MAX_CURSOR, VIDEO, PageSize, QueryInt
from livecomments.comment_service.api.route import BACKEND_ERRORS, Ok, Route, install
from livecomments.comment_service.api.schema import (
    Comment,
    Model,
    Setting,
    Timestamp,
    VideoId,
    one_of,
)
from livecomments.comment_service.replay import FIRST_COMMENT, MARGIN_MS, STAFF, Start
from livecomments.kernel.errors import NotFound, ValidationError

LIVE_PATH = "/api/videos/{video_id}/live"
REPLAY_PATH = "/api/videos/{video_id}/replay"
MAX_OFFSET_MS = 1 << 42  # ~139 years: any offset a video can have
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # no start before this: a mistake
FUTURE = dt.timedelta(days=1)  # a start this far ahead is a mistake (a time zone, say)
TINY_BODY = 1024

if TYPE_CHECKING:
    StartSource = str
else:
    StartSource = one_of((STAFF, FIRST_COMMENT))

Offset = Annotated[int, Meta(ge=0, le=MAX_OFFSET_MS)]


class LiveStart(Model):
    started_at: Annotated[
        dt.datetime,
        Meta(
            tz=True,
            description=(
                "When the video went live: an RFC 3339 date-time with a time zone"
                " (`2026-05-01T18:00:00Z`), from 2000 on and at most a day ahead."
            ),
            extra={"code": "invalid_field", "message": "must be an RFC 3339 date-time with a zone"},
        ),
    ]


class VideoStart(Model):
    """When a video went live (``Replay.start``)."""

    video_id: VideoId
    started_at: Timestamp
    started_at_ms: Annotated[int, Meta(description="The same instant, in ms since 1970.")]
    source: Annotated[
        StartSource,
        Meta(
            description=(
                "`staff`: set through `PUT /api/videos/{video_id}/live`; `first_comment`:"
                " the time of the video's first comment (kept until staff set one)."
            )
        ),
    ]


class ReplayItem(Comment):
    offset_ms: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "When viewers saw it, in ms after the video's start: when it was posted,"
                " or approved for one held for review."
            ),
        ),
    ]


class ReplayPage(VideoStart):
    """A range of a video's comments by offset (``Replay.page``)."""

    from_ms: Offset
    to_ms: Offset | None
    items: list[ReplayItem]
    next_after: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        Meta(
            description=(
                "More of the range is ready: ask again at once with after=next_after and"
                " the same from_ms and to_ms. Null: the range is done, or what follows"
                " is not stored yet (a range reaching the present: ask again later with"
                " after= the last item's seq)."
            )
        ),
    ]


LIVE_START = JsonBody(LiveStart, TINY_BODY)
FROM = QueryInt("from_ms", "The range's first offset (ms after the start).", lo=0,
                hi=MAX_OFFSET_MS, default=0)  # fmt: skip
TO = QueryInt(
    "to_ms",
    "The offset the range stops before (ms after the start); absent: to the end.",
    lo=1,
    hi=MAX_OFFSET_MS,
)
AFTER = QueryInt(
    "after", "The cursor: only comments with a larger seq (a page's next_after).", lo=0,
    hi=MAX_CURSOR,
)  # fmt: skip
LIMIT = PageSize(Setting("history_page_max"))


def _not_started() -> NotFound:
    return NotFound(
        "this video has no start yet: no comments, and staff set no live time",
        code="video_not_started",
    )


async def _start(request: web.Request, video_id: str) -> Start:
    start = await request.app[REPLAY].start(video_id)
    if start is None:
        raise _not_started()
    return start


async def get_live(request: web.Request) -> web.Response:
    video_id = VIDEO(request)
    await history_limit(request)
    return json_response((await _start(request, video_id)).json(video_id))


async def put_live(request: web.Request) -> web.Response:
    """Staff say when the video went live; replays count offsets from then."""
    video_id = VIDEO(request)
    principal = await staff_caller(request)
    body = await LIVE_START.read(request)
    try:
        at = body.started_at.astimezone(dt.UTC)
    except OverflowError:
        at = EARLIEST - FUTURE  # refused just below
    if not EARLIEST <= at <= dt.datetime.now(dt.UTC) + FUTURE:
        raise ValidationError(
            "started_at must be from 2000 on and at most a day ahead",
            code="invalid_field",
            details={"field": "started_at"},
        )
    start = await request.app[REPLAY].set_start(video_id, at, principal.user_id)
    return json_response(start.json(video_id))


async def get_replay(request: web.Request) -> web.Response:
    video_id = VIDEO(request)
    await history_limit(request)
    from_ms, to_ms, after, limit = FROM(request), TO(request), AFTER(request), LIMIT(request)
    assert from_ms is not None  # it has a default
    if to_ms is not None and to_ms <= from_ms:
        raise ValidationError("to_ms must be greater than from_ms", code="invalid_query")
    replay = request.app[REPLAY]
    start = await _start(request, video_id)
    page = await replay.page(
        video_id, start, from_ms=from_ms, to_ms=to_ms, after=after, limit=limit
    )
    body: dict[str, Any] = {
        **start.json(video_id),
        "from_ms": from_ms,
        "to_ms": to_ms,
        "items": page.items,
        "next_after": page.next_after,
    }
    return _cacheable(request, json_response(body), page.closed)


HISTORY_RATES = (
    ("history_limit_ip", "client IP (anonymous)"),
    ("history_limit_user", "user (logged in)"),
)

ROUTES = (
    Route(
        "GET",
        LIVE_PATH,
        get_live,
        "When a video went live",
        "replay",
        (Ok(200, "The start replays count from.", VideoStart),),
        notes=(
            "Set by staff, or else the time of the video's first comment (remembered, "
            "so that offsets stay put).",
        ),
        rates=HISTORY_RATES,
        params=(VIDEO,),
        errors={404: ("video_not_started",), 503: BACKEND_ERRORS},
    ),
    Route(
        "PUT",
        LIVE_PATH,
        put_live,
        "Set when a video went live",
        "replay",
        (Ok(200, "The new start.", VideoStart),),
        notes=(
            "Replaces the start, set or derived: replays count offsets from it. Comments "
            "from before it are in no replay.",
        ),
        role="moderator",
        rates=MODERATOR_RATES,
        params=(VIDEO,),
        body=LIVE_START,
        errors={400: ("invalid_field",)},
    ),
    Route(
        "GET",
        REPLAY_PATH,
        get_replay,
        "Comments by offset from the video's start",
        "replay",
        (Ok(200, "The range's comments in the order viewers saw them.", ReplayPage),),
        notes=(
            "The comments viewers saw from `from_ms` up to (not including) `to_ms` after "
            "the video's start (`GET .../live`), in seq order, each with its `offset_ms`: "
            "deleted comments are left out, edited ones have their latest text, replies "
            "come with their `parent_id`, and a comment held for review is where it was "
            "approved. A page is full at `limit` items, or ends after a bounded read; "
            "`next_after` continues it.",
            "A range that ended more than "
            f"{MARGIN_MS // 1000} s ago carries `Cache-Control: public, "
            "max-age=history_cache_seconds` ({s.history_cache_seconds} s); the others `no-store`.",
        ),
        rates=HISTORY_RATES,
        params=(VIDEO, FROM, TO, AFTER, LIMIT),
        errors={404: ("video_not_started",), 503: BACKEND_ERRORS},
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
