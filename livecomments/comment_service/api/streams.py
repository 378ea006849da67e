"""Streams: where a viewer watches a video live (a 307 to a placed RTMS node)."""

from __future__ import annotations

import random

from aiohttp import web

from livecomments.comment_service.api.context import PLACEMENT
from livecomments.comment_service.api.params import VIDEO, Header, Param
from livecomments.comment_service.api.route import Ok, Route, install
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.stream import Position, stream_url

LAST_EVENT_ID = Param(
    "last_event_id",
    "query",
    str,
    "Resume after this SSE event id (`<epoch>-<seq>`); others are ignored.",
)
LAST_EVENT_ID_HEADER = Header(
    "Last-Event-ID",
    str,
    "What a browser's EventSource sends on reconnect; wins over the query.",
)


async def stream(request: web.Request) -> web.Response:
    """307 to an RTMS node placed for the video, carrying the resume point along.

    The node is marked as chosen by a redirect (``redirected=1``) so it serves
    the viewer even if its own view of placement is a moment behind ours.
    """
    video_id = VIDEO(request)
    placement = request.app[PLACEMENT]
    placed = placement.placed(video_id)
    if not placed:
        raise Unavailable("no realtime node is available", code="no_rtms_node")
    base = placement.url(random.choice(placed))
    if base is None:  # the node left between the two reads
        raise Unavailable("no realtime node is available", code="no_rtms_node")
    last_id = LAST_EVENT_ID_HEADER(request) or request.query.get(LAST_EVENT_ID.name)
    location = stream_url(base, video_id, Position.parse(last_id))
    # CORS headers: headers_middleware (as on every /api answer).
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})


LOCATION = {
    "description": "The stream's URL on the chosen realtime node.",
    "required": True,
    "schema": {"type": "string", "format": "uri"},
}

ROUTES = (
    Route(
        "GET",
        "/api/videos/{video_id}/stream",
        stream,
        "Where to watch the live stream",
        "streams",
        (Ok(307, "To the realtime node's stream.", headers={"Location": LOCATION}),),
        notes=(
            "Redirects to the Server-Sent Events stream of the realtime node placed "
            "for the video, carrying the resume point along as `last_event_id`.",
            "A `comment` event's data is the `Comment` without what the stream says "
            "(`video_id`; `seq` and `epoch` are its id, `<epoch>-<seq>`), `created_at` "
            "(see `created_at_ms`) and `reactions` (sent as `reactions` events), and "
            "without fields at their default: `text` null, `parent_id` null, `status` "
            "`visible`, `edited_at` null, `rev` 0. `comment.updated` and `comment.deleted` "
            "carry the comment's own `seq` and `epoch`.",
        ),
        params=(VIDEO, LAST_EVENT_ID, LAST_EVENT_ID_HEADER),
        errors={503: ("no_rtms_node",)},
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
