"""The event model: how a comment becomes JSON and an SSE frame, in one place.

The comment service encodes a frame once; dispatchers and RTMS nodes pass the
same bytes along. An RTMS node that fills a gap from the store encodes with the
same functions, so a replayed frame is byte-for-byte the live one.

A comment has two JSON forms. :func:`comment_json` is its public view, what the
history API answers (every field, nulls included). A frame carries
:func:`stream_json`, the same comment made compact, because a frame is written
to every viewer: it leaves out what the stream already says (the video is in
the URL; a new comment's seq and epoch are the SSE ``id: {epoch}-{seq}``), what
is at its default (:data:`STREAM_DEFAULTS`), ``created_at`` (``created_at_ms``
is the same instant) and ``reactions`` (they travel in ``reactions`` events; a
count frozen into a frame would make the ring's replay differ from the
store's). A client gets the public view back by filling those in
(:func:`from_stream`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.stream import Position

EVENT_NAMES: dict[int, str] = {
    pb.COMMENT: "comment",
    pb.COMMENT_UPDATED: "comment.updated",
    pb.COMMENT_DELETED: "comment.deleted",
    pb.REACTIONS: "reactions",
    pb.COMMENT_PINNED: "pinned",
    pb.COMMENT_UNPINNED: "unpinned",
}

STATUS_VISIBLE = "visible"
STATUS_HELD = "held"
STATUS_DELETED = "deleted"


def event_id(epoch: int, seq: int) -> str:
    """The SSE id of ``seq`` in ``epoch`` (:class:`~livecomments.kernel.stream.Position`)."""
    return str(Position(epoch, seq))


def iso(value: dt.datetime | None, timespec: str = "milliseconds") -> str | None:
    """A stored time as JSON: UTC ISO 8601 with a ``Z`` (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat(timespec=timespec).replace("+00:00", "Z")


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def epoch_ms(value: dt.datetime) -> int:
    """A stored time in whole ms since 1970 (naive means UTC; integer arithmetic: a
    float timestamp can lose the last ms)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - EPOCH) // _MS


def comment_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The public JSON view of a stored comment (ids as decimal strings).

    ``rev`` counts the changes made to the comment: a client holding a newer
    revision ignores an older one (a resumed stream can replay both).
    """
    deleted = doc.get("status") == STATUS_DELETED
    parent = doc.get("parent_id")
    return {
        "id": str(doc["_id"]),
        "video_id": doc["video_id"],
        "seq": doc.get("seq"),
        "epoch": doc.get("epoch"),
        "user_id": str(doc["user_id"]),
        "author": doc["author"],
        "text": None if deleted else doc.get("text"),
        "parent_id": str(parent) if parent is not None else None,
        "status": doc.get("status", STATUS_VISIBLE),
        "created_at": iso(doc.get("created_at")),
        "created_at_ms": doc.get("created_at_ms"),
        "edited_at": iso(doc.get("edited_at")),
        "rev": doc.get("rev", 0),
        "reactions": doc.get("reactions") or {},
    }


# A field a frame leaves out is at this value (the page fills these in again).
STREAM_DEFAULTS: dict[str, Any] = {
    "text": None,  # deleted
    "parent_id": None,  # not a reply
    "status": STATUS_VISIBLE,
    "edited_at": None,
    "rev": 0,
}


def stream_json(view: dict[str, Any], changed: bool = False) -> dict[str, Any]:
    """The compact form of a comment's public view (:func:`comment_json`) for a frame.

    Keys keep their public names: ``id``, ``user_id``, ``author``,
    ``created_at_ms``, then ``text``, ``parent_id``, ``status``, ``edited_at``,
    ``rev`` when not at their :data:`STREAM_DEFAULTS`. Never in a frame:
    ``video_id`` (the stream's URL says it), ``created_at`` (the same instant as
    ``created_at_ms``) and ``reactions`` (``reactions`` events carry them);
    ``seq`` and ``epoch`` only in a ``changed`` frame (``comment.updated``,
    ``comment.deleted``), whose id may be the change's position rather than the
    comment's. Built from the view, not the stored document, so that a change
    marker's snapshot (stored as a view) makes the same bytes as the comment.
    """
    out = {"id": view["id"]}
    if changed:
        out["seq"] = view["seq"]
        out["epoch"] = view["epoch"]
    out["user_id"] = view["user_id"]
    out["author"] = view["author"]
    if view.get("created_at_ms") is not None:
        out["created_at_ms"] = view["created_at_ms"]
    elif view.get("created_at") is not None:  # data stored before created_at_ms existed
        out["created_at"] = view["created_at"]
    for key, default in STREAM_DEFAULTS.items():
        value = view.get(key, default)
        if value != default:
            out[key] = value
    return out


def from_stream(data: dict[str, Any], video_id: str, position: Position) -> dict[str, Any]:
    """The public view of a comment a frame carries, as a client rebuilds it.

    ``video_id`` from the stream's URL, ``position`` from the frame's ``id:``
    (a change frame's own ``seq`` and ``epoch`` win). Reactions are not in
    frames: ``{}`` here, the latest ``reactions`` event's counts on the page.
    """
    view = {
        "video_id": video_id,
        "seq": position.seq,
        "epoch": position.epoch,
        **STREAM_DEFAULTS,
        "created_at": None,
        "created_at_ms": None,
        **data,
        "reactions": {},
    }
    if view["created_at_ms"] is not None:
        view["created_at"] = iso(dt.datetime.fromtimestamp(view["created_at_ms"] / 1000, dt.UTC))
    return view


def sse_frame(event: str, data: bytes, ident: str | None = None) -> bytes:
    """One SSE frame. ``data`` must not contain newlines (orjson output never does)."""
    head = f"id: {ident}\nevent: {event}\n" if ident is not None else f"event: {event}\n"
    return head.encode() + b"data: " + data + b"\n\n"


def comment_frame(doc: dict[str, Any], kind: int = pb.COMMENT) -> bytes:
    body = orjson.dumps(stream_json(comment_json(doc), kind != pb.COMMENT))
    return sse_frame(EVENT_NAMES[kind], body, event_id(doc.get("epoch", 0), doc["seq"]))


def comment_event(doc: dict[str, Any], kind: int = pb.COMMENT) -> pb.Event:
    """The wire event for a stored comment, frame included.

    The id of the request that posted it is stored with it (``request_id``), so the
    outbox's re-dispatch of the stored document carries the same id as the first.
    """
    return pb.Event(
        comment_id=doc["_id"],
        video_id=doc["video_id"],
        seq=doc["seq"],
        epoch=doc.get("epoch", 0),
        kind=kind,  # type: ignore[arg-type]
        frame=comment_frame(doc, kind),
        created_at_ms=doc.get("created_at_ms") or 0,
        request_id=doc.get("request_id") or "",
    )


# -- changes to a comment ---------------------------------------------------------
#
# An edit or a delete takes the video's next seq, like a comment, and is stored
# as a marker document at that seq holding the changed comment's JSON. So a
# change is ordered with the comments around it, reaches a viewer that was
# away when it happened (resume replays it), and a lost one is filled from the
# store like any other gap.
#
# A pin and an unpin are markers the same way (``pinned``, ``unpinned``, holding
# the pinned comment's JSON), but they change no comment: they have no
# ``target_seq``, so no node's ring and no cached page is patched with them.

CHANGE_KINDS: dict[str, int] = {
    "comment.updated": pb.COMMENT_UPDATED,
    "comment.deleted": pb.COMMENT_DELETED,
    "pinned": pb.COMMENT_PINNED,
    "unpinned": pb.COMMENT_UNPINNED,
}
PIN_MARKERS = ("pinned", "unpinned")


def marker_frame(marker: dict[str, Any]) -> bytes:
    ident = event_id(marker.get("epoch", 0), marker["seq"])
    return sse_frame(marker["marker"], orjson.dumps(stream_json(marker["snapshot"], True)), ident)


def change_event(marker: dict[str, Any]) -> pb.Event:
    return pb.Event(
        comment_id=marker["target_id"],
        video_id=marker["video_id"],
        seq=marker["seq"],
        epoch=marker.get("epoch", 0),
        kind=CHANGE_KINDS[marker["marker"]],  # type: ignore[arg-type]
        frame=marker_frame(marker),
        created_at_ms=marker.get("created_at_ms") or 0,
        target_seq=marker.get("target_seq") or 0,
        request_id=marker.get("request_id") or "",
    )


def _replay_kind(doc: dict[str, Any]) -> int | None:
    status = doc.get("status", STATUS_VISIBLE)
    if status == STATUS_VISIBLE:
        return pb.COMMENT_UPDATED if doc.get("edited_at") else pb.COMMENT
    if status == STATUS_DELETED:
        return pb.COMMENT_DELETED
    return None  # held for review (not stored in `comments` any more, but older data may be)


def replay_frame(doc: dict[str, Any]) -> bytes | None:
    """The frame a stored document replays as (resume, gap fill), in its current state.

    None for what viewers never see: a void (a seq fenced as never acknowledged,
    see ``Store.fence``) or a comment held for review.
    """
    if doc.get("void"):
        return None
    if doc.get("marker"):
        return marker_frame(doc)
    kind = _replay_kind(doc)
    return None if kind is None else comment_frame(doc, kind)


def replay_event(doc: dict[str, Any]) -> pb.Event | None:
    """The wire event for a stored document in its current state (outbox re-dispatch)."""
    if doc.get("void"):
        return None
    if doc.get("marker"):
        return change_event(doc)
    kind = _replay_kind(doc)
    return None if kind is None else comment_event(doc, kind)


def retarget(frame: bytes, epoch: int, seq: int) -> bytes | None:
    """``frame`` under another event id (a change frame standing in for the comment it changed)."""
    if not frame.startswith(b"id: "):
        return None
    return f"id: {event_id(epoch, seq)}".encode() + frame[frame.index(b"\n") :]


# -- reactions ----------------------------------------------------------------------


def reactions_event(video_id: str, counts: dict[str, dict[str, int]]) -> pb.Event:
    """Aggregated reaction totals for some comments of a video: unsequenced, not resumable.

    Totals, not deltas: a lost or repeated event leaves no wrong count behind. The
    frame is ``{"comments": {comment id: {name: count}}}``: the video is the stream's.
    """
    body = orjson.dumps({"comments": counts})
    return pb.Event(video_id=video_id, seq=0, kind=pb.REACTIONS, frame=sse_frame("reactions", body))
