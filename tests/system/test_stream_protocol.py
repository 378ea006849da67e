"""docs/stream-protocol.md is what the servers send.

The document's schemas are read from it; every event type the code can write must
be described there and nothing else; the events of a live stream (a comment, a
reply, an edit, a delete, reactions, a reset, a move) must each match their schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs

from livecomments.cli.cluster import Cluster
from livecomments.kernel import events
from tests.support import Api, SSEEvent, Viewer, cli, staff, unique

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "stream-protocol.md"
SEQUENCED = ("comment", "comment.updated", "comment.deleted", "pinned", "unpinned")
EVENT_ID = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}$")
_SCHEMA = re.compile(r"<!-- schema: ([\w.]+) -->\n```json\n(.*?)\n```", re.DOTALL)


def documented() -> dict[str, Any]:
    """The schema of each event type, as the document gives it."""
    return {name: json.loads(body) for name, body in _SCHEMA.findall(DOC.read_text("utf-8"))}


def emitted_by_the_code() -> set[str]:
    """Every event name the package can write: the event kinds, and each literal
    ``sse_frame("name", ...)`` (control events such as ``moved`` and ``reset``)."""
    names = set(events.EVENT_NAMES.values())
    for path in (ROOT / "livecomments").rglob("*.py"):
        names |= set(re.findall(r"sse_frame\(\s*\"([\w.]+)\"", path.read_text("utf-8")))
    return names


def test_every_event_the_code_writes_is_documented_and_nothing_else() -> None:
    schemas = documented()
    assert set(schemas) == emitted_by_the_code()
    for name, schema in schemas.items():
        jsonschema_rs.validator_for(schema)  # a valid schema, or this raises
        assert schema.get("additionalProperties") is False, f"{name}: undocumented fields pass"


def check(event: SSEEvent, schemas: dict[str, Any]) -> dict[str, Any]:
    """``event`` matches its documented schema and id rule; its data."""
    data = event.json()
    errors = [
        e.message for e in jsonschema_rs.validator_for(schemas[event.event]).iter_errors(data)
    ]
    assert not errors, f"{event.event} {data}: {errors}"
    if event.event in SEQUENCED:
        assert event.id is not None and EVENT_ID.match(event.id), event.id
    else:
        assert event.id is None, f"{event.event} carries an id: {event.id}"
    return data


def stream(api: Api, video: str) -> str:
    """Through the comment service, as a client opens it (the 307 is followed)."""
    return f"{api.base}/api/videos/{video}/stream"


async def test_a_live_stream_matches_the_document(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    schemas = documented()
    video = unique("protocol")
    author = await api.register(unique("author"))
    moderator, _ = await staff(api, cluster)
    viewer = await Viewer(stream(api, video), session).connect()
    resumer: Viewer | None = None
    try:
        top = await api.post(video, "a comment for the protocol", author)
        reply = await api.post(video, "a reply to it", author, parent_id=top["id"])
        path = f"/api/videos/{video}/comments"
        status, _, _ = await api.request(
            "PATCH", f"{path}/{top['id']}", json={"text": "edited"}, token=moderator
        )
        assert status == 200
        status, _, _ = await api.request("DELETE", f"{path}/{reply['id']}", token=author)
        assert status == 200
        status, _, _ = await api.request("PUT", f"{path}/{top['id']}/reactions/like", token=author)
        assert status == 200
        await viewer.wait_for(2)
        await viewer.wait_for(1, "comment.updated")
        await viewer.wait_for(1, "comment.deleted")
        got = [e for e in viewer.events if e.event in SEQUENCED]
        assert [e.event for e in got] == [
            "comment",
            "comment",
            "comment.updated",
            "comment.deleted",
        ]
        first, second, updated, deleted = (check(e, schemas) for e in got)
        assert second["parent_id"] == first["id"] == top["id"]
        assert updated["id"] == top["id"] and updated["text"] == "edited" and updated["rev"] == 1
        assert deleted["id"] == reply["id"] and "text" not in deleted
        # Filled in with the documented defaults, a frame is the history API's view.
        _, one, _ = await api.request("GET", f"{path}/{top['id']}")
        position = events.Position.parse(got[0].id)
        assert position is not None
        rebuilt = events.from_stream(first, video, position)
        assert {k: v for k, v in one.items() if k != "reactions"} == {
            k: v for k, v in rebuilt.items() if k != "reactions"
        } | {"text": "edited", "rev": 1, "edited_at": one["edited_at"]}
        (reactions,) = await viewer.wait_for(1, "reactions")
        assert check(reactions, schemas)["comments"][top["id"]] == {"like": 1}

        # A resume from an epoch the video does not have: reset, at once.
        resumer = await Viewer(
            stream(api, video), session, headers={"Last-Event-ID": "1-1"}
        ).connect()
        (reset,) = await resumer.wait_for(1, "reset")
        assert check(reset, schemas)["reason"] == "epoch_changed"

        # The video moves to another node: its viewers are told where, and the
        # stream there goes on from their last event id.
        await resumer.close()
        resumer = None
        (home,) = [n for n, svc in cluster.services.items()
                   if viewer.final_url.startswith(svc.url + "/")]  # fmt: skip
        target = next(n for n in sorted(cluster.services) if n.startswith("rtms") and n != home)
        await cli(cluster, "move", video, "--to", target)
        (moved,) = await viewer.wait_for(1, "moved")
        body = check(moved, schemas)
        assert body["reason"] == "moved" and body["last_event_id"] == got[-1].id
        assert body["url"].startswith(f"{cluster.services[target].url}/stream/{video}?")
        await cli(cluster, "unpin", video)
    finally:
        await viewer.close()
        if resumer is not None:
            await resumer.close()
