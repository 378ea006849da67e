"""The event model: what a comment's frame holds, its size, and that it agrees with the API."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from livecomments.kernel import events
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.stream import Position
from livecomments.rtms.wire import refusal

NOW = dt.datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=dt.UTC)
TEXT = "Did anyone else catch that goal in the 89th minute? Unreal!!"  # 60 characters


def stored(**changes: Any) -> dict[str, Any]:
    """A comment as the comment service stores it: Snowflake ids, a ms-clock epoch."""
    doc = {
        "_id": 7306421915662131200,
        "video_id": "worldcup-final-2026",
        "seq": 48213,
        "epoch": 1773500000000,
        "user_id": 7306398126045241344,
        "author": "goal_fan_27",
        "text": TEXT,
        "parent_id": None,
        "status": events.STATUS_VISIBLE,
        "created_at": NOW,
        "created_at_ms": int(NOW.timestamp() * 1000),
        "edited_at": None,
        "rev": 0,
        "reactions": {},
        "request_id": "r-1",
    }
    return {**doc, **changes}


def data(frame: bytes) -> dict[str, Any]:
    line = frame.split(b"\n")[2]
    assert line.startswith(b"data: ")
    parsed: dict[str, Any] = orjson.loads(line[6:])
    return parsed


def test_a_typical_comment_frame_is_at_most_250_bytes() -> None:
    assert len(TEXT) == 60
    frame = events.comment_frame(stored())
    assert frame == (
        b"id: 1773500000000-48213\nevent: comment\n"
        b'data: {"id":"7306421915662131200","user_id":"7306398126045241344",'
        b'"author":"goal_fan_27","created_at_ms":1773500966535,'
        b'"text":"Did anyone else catch that goal in the 89th minute? Unreal!!"}\n\n'
    )
    assert len(frame) <= 250, len(frame)  # 230; the API's view in a frame would be 413


def test_a_frame_leaves_out_what_the_stream_says_and_what_is_at_its_default() -> None:
    body = data(events.comment_frame(stored(reactions={"like": 3})))
    assert list(body) == ["id", "user_id", "author", "created_at_ms", "text"]
    reply = data(events.comment_frame(stored(parent_id=7306421915662131000)))
    assert reply["parent_id"] == "7306421915662131000"
    # created_at_ms is what the bench's load generators time with: always an integer.
    assert body["created_at_ms"] == 1773500966535


def test_change_frames_name_the_comment_they_change() -> None:
    """A change's id is its own position, so its frame names the comment's seq and epoch."""
    edited = stored(text="fixed", edited_at=NOW, rev=1)
    body = data(events.comment_frame(edited, pb.COMMENT_UPDATED))
    assert body["seq"] == 48213 and body["epoch"] == 1773500000000
    assert body["text"] == "fixed" and body["rev"] == 1
    assert body["edited_at"] == "2026-03-14T15:09:26.535Z"
    gone = data(events.comment_frame(stored(status="deleted", rev=2), pb.COMMENT_DELETED))
    assert "text" not in gone and gone["status"] == "deleted"


def test_the_stream_and_the_api_agree_on_what_a_comment_is() -> None:
    """A client filling in what the stream says gets the history API's view (bar reactions)."""
    cases = [
        (stored(), pb.COMMENT),
        (stored(parent_id=7306421915662131000), pb.COMMENT),
        (stored(text="fixed", edited_at=NOW, rev=1), pb.COMMENT_UPDATED),
        (stored(status="deleted", rev=2, reactions={"like": 1}), pb.COMMENT_DELETED),
    ]
    for doc, kind in cases:
        frame = events.comment_frame(doc, kind)
        position = Position.parse(frame.split(b"\n")[0][4:].decode())
        assert position == Position(doc["epoch"], doc["seq"])
        view = events.from_stream(data(frame), doc["video_id"], position)
        assert view == {**events.comment_json(doc), "reactions": {}}


def test_a_change_marker_replays_the_same_bytes_as_the_comment_it_changed() -> None:
    """The ring patches a changed comment with the change's frame (retarget); the store
    replays the comment itself: a resuming viewer gets the same bytes either way."""
    edited = stored(text="fixed", edited_at=NOW, rev=1, reactions={"wow": 2})
    marker = {
        "_id": 1,
        "video_id": edited["video_id"],
        "seq": 48300,
        "epoch": edited["epoch"],
        "marker": "comment.updated",
        "target_id": edited["_id"],
        "target_seq": edited["seq"],
        "snapshot": events.comment_json({**edited, "reactions": {}}),
    }
    live = events.change_event(marker).frame
    assert live.startswith(b"id: 1773500000000-48300\nevent: comment.updated\n")
    patched = events.retarget(live, edited["epoch"], edited["seq"])
    assert patched == events.replay_frame(edited)
    assert events.replay_frame(marker) == live


def test_compact_frames_pass_the_rtms_wire_check() -> None:
    for event in (
        events.comment_event(stored()),
        events.comment_event(stored(status="deleted", rev=1), pb.COMMENT_DELETED),
        events.reactions_event("v", {"7": {"like": 2}}),
    ):
        assert refusal(event, 16384) is None


def test_a_reactions_frame_does_not_repeat_the_video() -> None:
    frame = events.reactions_event("worldcup-final-2026", {"7": {"like": 2}}).frame
    assert frame == b'event: reactions\ndata: {"comments":{"7":{"like":2}}}\n\n'
