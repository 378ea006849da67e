"""The pinned comment (issue 14): a moderator pins one comment per video.

Viewers get ``pinned`` and ``unpinned`` in order with the comments, a new viewer's
first page says what is pinned, the pin survives restarts, and deleting the pinned
comment unpins it.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.redis.keys import Keys
from tests.support import Api, Viewer, staff, unique, wait_until
from tests.system.test_stream_protocol import SEQUENCED, check, documented, stream


def sequenced(viewer: Viewer) -> list[tuple[str, str]]:
    """(event, comment id) of every sequenced event ``viewer`` got, in order."""
    return [(e.event, e.json()["id"]) for e in viewer.events if e.event in SEQUENCED]


async def first_page(api: Api, video: str) -> dict[str, object]:
    status, page, _ = await api.request("GET", f"/api/videos/{video}/comments")
    assert status == 200, page
    return dict(page)


async def health(api: Api) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/healthz")
    assert status == 200, body
    return dict(body)


async def pin(api: Api, video: str, comment_id: str, token: str) -> tuple[int, dict[str, object]]:
    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/pinned", json={"comment_id": comment_id}, token=token
    )
    return status, body


async def test_a_pin_reaches_viewers_in_order_and_new_viewers_on_load(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    schemas = documented()
    video = unique("pins")
    author = await api.register(unique("author"))
    moderator, _ = await staff(api, cluster)
    viewer = await Viewer(stream(api, video), session).connect()
    try:
        first = await api.post(video, "the question of the day", author)
        second = await api.post(video, "another comment", author)
        status, body = await pin(api, video, first["id"], moderator)
        assert status == 200, body
        assert body["pinned"]["id"] == first["id"]  # type: ignore[index]
        after = await api.post(video, "after the pin", author)
        await viewer.wait_for(3)
        await viewer.wait_for(1, "pinned")
        # In order with the comments around it.
        assert sequenced(viewer) == [
            ("comment", first["id"]),
            ("comment", second["id"]),
            ("pinned", first["id"]),
            ("comment", after["id"]),
        ]
        (pinned,) = viewer.of("pinned")
        data = check(pinned, schemas)
        assert data["text"] == "the question of the day" and data["seq"] == first["seq"]

        # A new viewer's first page says it, and so does GET .../pinned.
        page = await first_page(api, video)
        assert page["pinned"]["id"] == first["id"]  # type: ignore[index]
        status, got, _ = await api.request("GET", f"/api/videos/{video}/pinned")
        assert status == 200 and got["pinned"]["id"] == first["id"], got

        # Pinning another replaces it; an edit of the pinned comment shows in it.
        status, body = await pin(api, video, second["id"], moderator)
        assert status == 200, body
        status, _, _ = await api.request(
            "PATCH",
            f"/api/videos/{video}/comments/{second['id']}",
            json={"text": "edited while pinned"},
            token=moderator,
        )
        assert status == 200
        page = await first_page(api, video)
        assert page["pinned"]["id"] == second["id"]  # type: ignore[index]
        assert page["pinned"]["text"] == "edited while pinned"  # type: ignore[index]

        # Unpin: viewers are told, the page says null, a second unpin is a 404.
        unpin = ("DELETE", f"/api/videos/{video}/pinned")
        status, body, _ = await api.request(*unpin, token=moderator)
        assert status == 204, body
        await viewer.wait_for(1, "unpinned")
        (unpinned,) = viewer.of("unpinned")
        assert check(unpinned, schemas)["id"] == second["id"]
        assert (await first_page(api, video))["pinned"] is None
        status, body, _ = await api.request(*unpin, token=moderator)
        assert status == 404 and body["error"]["code"] == "not_pinned", body
    finally:
        await viewer.close()


async def test_deleting_the_pinned_comment_unpins_it(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("pins")
    author = await api.register(unique("author"))
    moderator, _ = await staff(api, cluster)
    top = await api.post(video, "pinned, then deleted by its author", author)
    status, body = await pin(api, video, top["id"], moderator)
    assert status == 200, body
    viewer = await Viewer(stream(api, video), session).connect()
    try:
        status, _, _ = await api.request(
            "DELETE", f"/api/videos/{video}/comments/{top['id']}", token=author
        )
        assert status == 200
        await viewer.wait_for(1, "unpinned")
        assert sequenced(viewer)[-2:] == [("comment.deleted", top["id"]), ("unpinned", top["id"])]
        (unpinned,) = viewer.of("unpinned")
        data = check(unpinned, documented())
        assert data["status"] == "deleted" and "text" not in data  # the text never comes back
        assert (await first_page(api, video))["pinned"] is None
        # A deleted comment cannot be pinned again.
        status, body = await pin(api, video, top["id"], moderator)
        assert status == 409 and body["error"]["code"] == "comment_deleted", body
    finally:
        await viewer.close()


async def test_who_may_pin_what(cluster: Cluster, api: Api) -> None:
    video = unique("pins")
    author = await api.register(unique("author"))
    moderator, _ = await staff(api, cluster)
    top = await api.post(video, "a comment", author)
    status, body = await pin(api, video, top["id"], author)
    assert status == 403 and body["error"]["code"] == "forbidden", body
    status, body = await pin(api, video, top["id"], "")
    assert status == 401, body
    status, body = await pin(api, video, "123456789", moderator)
    assert status == 404 and body["error"]["code"] == "comment_not_found", body
    status, body = await pin(api, unique("elsewhere"), top["id"], moderator)
    assert status == 404 and body["error"]["code"] == "comment_not_found", body  # another video's
    status, body = await pin(api, video, "not-an-id", moderator)
    assert status == 400, body
    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/pinned", json={}, token=moderator
    )
    assert status == 400, body
    assert (await first_page(api, video))["pinned"] is None


async def test_a_pin_survives_restarts_and_a_resumed_viewer_gets_it(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("pins")
    author = await api.register(unique("author"))
    moderator, _ = await staff(api, cluster)
    top = await api.post(video, "pinned across restarts", author)
    before = await first_page(api, video)  # a viewer loaded the page before the pin
    status, body = await pin(api, video, top["id"], moderator)
    assert status == 200, body

    for name in sorted(cluster.services):
        if name.startswith(("comment", "rtms")):
            cluster.restart(name)

    async def says_pinned() -> bool:
        status, page, _ = await api.request("GET", f"/api/videos/{video}/comments")
        return status == 200 and (page.get("pinned") or {}).get("id") == top["id"]

    await wait_until(says_pinned, what="the first page after the restarts says the pin")
    # Redis lost its copy of the pin: the next first page reads the store, once.
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        assert await redis.delete(Keys(f"{cluster.namespace}:").pinned(video)) == 1
    finally:
        await redis.aclose()
    reads = (await health(api))["pinned_store_reads"]
    assert await says_pinned() and await says_pinned()
    assert (await health(api))["pinned_store_reads"] == reads + 1
    # The viewer from before the pin resumes from its page's cursor: the stream
    # replays the pin (from the store: every node restarted with an empty ring).
    resumed = await Viewer(
        stream(api, video), session, headers={"Last-Event-ID": str(before["resume"])}
    ).connect()
    try:
        await resumed.wait_for(1, "pinned")
        assert sequenced(resumed) == [("pinned", top["id"])]
    finally:
        await resumed.close()
