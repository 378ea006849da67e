"""The event model: how a comment becomes JSON and an SSE frame, in one place.

The comment service encodes a frame once; dispatchers and RTMS nodes pass the
same bytes along. An RTMS node that fills a gap from the store encodes with the
same functions, so a replayed frame is byte-for-byte the live one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from livecomments.pb import livecomments_pb2 as pb

EVENT_NAMES: dict[int, str] = {
    pb.COMMENT: "comment",
    pb.COMMENT_UPDATED: "comment.updated",
    pb.COMMENT_DELETED: "comment.deleted",
    pb.REACTIONS: "reactions",
}

STATUS_VISIBLE = "visible"
STATUS_HELD = "held"
STATUS_DELETED = "deleted"


def event_id(epoch: int, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_event_id(raw: str | None) -> tuple[int, int] | None:
    """``(epoch, seq)`` from an SSE id, or None for anything malformed."""
    if not raw or len(raw) > 64:
        return None
    epoch_s, sep, seq_s = raw.strip().partition("-")
    if not sep or not epoch_s.isdigit() or not seq_s.isdigit():
        return None
    if not epoch_s.isascii() or not seq_s.isascii():
        return None
    epoch, seq = int(epoch_s), int(seq_s)
    if epoch >= 1 << 63 or seq >= 1 << 63:
        return None
    return epoch, seq


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def comment_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The public JSON view of a stored comment (ids as decimal strings)."""
    deleted = doc.get("status") == STATUS_DELETED
    parent = doc.get("parent_id")
    return {
        "id": str(doc["_id"]),
        "video_id": doc["video_id"],
        "seq": doc["seq"],
        "epoch": doc.get("epoch", 0),
        "user_id": str(doc["user_id"]),
        "author": doc["author"],
        "text": None if deleted else doc["text"],
        "parent_id": str(parent) if parent is not None else None,
        "status": doc.get("status", STATUS_VISIBLE),
        "created_at": _iso(doc.get("created_at")),
        "created_at_ms": doc.get("created_at_ms"),
        "edited_at": _iso(doc.get("edited_at")),
    }


def sse_frame(event: str, data: bytes, ident: str | None = None) -> bytes:
    """One SSE frame. ``data`` must not contain newlines (orjson output never does)."""
    head = f"id: {ident}\nevent: {event}\n" if ident is not None else f"event: {event}\n"
    return head.encode() + b"data: " + data + b"\n\n"


def comment_frame(doc: dict[str, Any], kind: int = pb.COMMENT) -> bytes:
    body = orjson.dumps(comment_json(doc))
    return sse_frame(EVENT_NAMES[kind], body, event_id(doc.get("epoch", 0), doc["seq"]))


def comment_event(doc: dict[str, Any], kind: int = pb.COMMENT) -> pb.Event:
    """The wire event for a stored comment, frame included."""
    return pb.Event(
        comment_id=doc["_id"],
        video_id=doc["video_id"],
        seq=doc["seq"],
        epoch=doc.get("epoch", 0),
        kind=kind,  # type: ignore[arg-type]
        frame=comment_frame(doc, kind),
        created_at_ms=doc.get("created_at_ms") or 0,
    )
