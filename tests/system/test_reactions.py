"""Reactions (counted once per user, pushed as aggregates, flushed to the store) and replies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.redis.keys import Keys
from tests.support import Api, Viewer, unique

CLUSTER_ENV = {"LIVECOMMENTS_REACTION_FLUSH_INTERVAL": "0.5"}


async def react(api: Api, comment: dict[str, Any], name: str, token: str | None,
                method: str = "PUT") -> tuple[int, Any]:  # fmt: skip
    path = f"/api/videos/{comment['video_id']}/comments/{comment['id']}/reactions/{name}"
    status, body, _ = await api.request(method, path, token=token)
    return status, body


async def stored_reactions(cluster: Cluster, comment_id: str) -> dict[str, int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        doc = await client[cluster.namespace]["comments"].find_one({"_id": int(comment_id)})
    finally:
        await client.close()
    assert doc is not None
    return dict(doc.get("reactions") or {})


async def test_one_reaction_per_user_per_comment_per_emoji(api: Api) -> None:
    video = unique("rx")
    alice, bob = await api.register(unique("alice")), await api.register(unique("bob"))
    comment = await api.post(video, "react to me", alice)
    status, body = await react(api, comment, "like", bob)
    assert status == 200 and body["changed"] and body["reactions"] == {"like": 1}
    status, body = await react(api, comment, "like", bob)  # again: no change
    assert status == 200 and not body["changed"] and body["reactions"] == {"like": 1}
    _, body = await react(api, comment, "like", alice)
    _, body = await react(api, comment, "fire", alice)
    assert body["reactions"] == {"like": 2, "fire": 1}
    _, body = await react(api, comment, "like", bob, "DELETE")
    assert body["changed"] and body["reactions"] == {"like": 1, "fire": 1}
    _, body = await react(api, comment, "like", bob, "DELETE")  # taking back twice
    assert not body["changed"] and body["reactions"] == {"like": 1, "fire": 1}

    status, body = await react(api, comment, "thumbsup", bob)
    assert (status, body["error"]["code"]) == (400, "invalid_reaction")
    status, body = await react(api, comment, "like", None)
    assert status == 401
    status, body = await react(api, {**comment, "id": "123"}, "like", bob)
    assert (status, body["error"]["code"]) == (404, "comment_not_found")
    status, sets, _ = await api.request("GET", "/api/reactions")
    assert "like" in [r["name"] for r in sets["reactions"]]


async def test_viewers_get_aggregates_not_one_event_per_click(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("agg")
    author = await api.register(unique("author"))
    fans = [await api.register(unique("fan")) for _ in range(12)]
    first = await api.post(video, "first", author)
    second = await api.post(video, "second", author)
    viewers = [
        await Viewer(f"{cluster.services[f'rtms-{i}'].url}/stream/{video}", session).connect()
        for i in (1, 2)
    ]
    try:
        clicks = [react(api, first, "heart", fan) for fan in fans]
        clicks += [react(api, second, "laugh", fan) for fan in fans[:5]]
        clicked_at = time.time()  # the clock SSEEvent.received_at is on
        results = await asyncio.gather(*clicks)
        assert all(status == 200 for status, _ in results)
        for viewer in viewers:

            def totals(v: Viewer = viewer) -> dict[str, Any]:
                merged: dict[str, Any] = {}
                for event in v.of("reactions"):
                    merged.update(event.json()["comments"])
                return merged

            for _ in range(50):
                if totals() == {first["id"]: {"heart": 12}, second["id"]: {"laugh": 5}}:
                    break
                await asyncio.sleep(0.1)
            assert totals() == {first["id"]: {"heart": 12}, second["id"]: {"laugh": 5}}
            got = viewer.of("reactions")
            assert 1 <= len(got) <= 3, [e.data for e in got]  # 17 clicks, a few events
            assert all(e.id is None for e in got)  # aggregates do not move the resume point
            # At most one a second per video: the n-th event cannot have been sent
            # (so received) before n-1 seconds after the first click. A bound that
            # contention can only help (a late event is later still), unlike the
            # gaps between arrivals.
            span = got[-1].received_at - clicked_at
            assert span >= 0.9 * (len(got) - 1), (span, [e.received_at for e in got])
    finally:
        for viewer in viewers:
            await viewer.close()


async def test_counts_are_flushed_to_the_store_and_shown_in_history(
    cluster: Cluster, api: Api
) -> None:
    video = unique("flush")
    author, fan = await api.register(unique("author")), await api.register(unique("fan"))
    comment = await api.post(video, "persist my hearts", author)
    await react(api, comment, "heart", fan)
    await react(api, comment, "wow", author)
    for _ in range(40):
        if await stored_reactions(cluster, comment["id"]) == {"heart": 1, "wow": 1}:
            break
        await asyncio.sleep(0.1)
    assert await stored_reactions(cluster, comment["id"]) == {"heart": 1, "wow": 1}
    (item,) = (await api.page(video))["items"]
    assert item["reactions"] == {"heart": 1, "wow": 1}

    # Redis loses the counter: the next click starts from the store's totals.
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        await redis.delete(Keys(f"{cluster.namespace}:").reaction_counts(comment["id"]))
    finally:
        await redis.aclose()
    other = await api.register(unique("late"))
    _, body = await react(api, comment, "heart", other)
    assert body["reactions"] == {"heart": 2, "wow": 1}


async def test_replies_are_listed_under_their_parent(
    api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("thread")
    token = await api.register(unique("talker"))
    parent = await api.post(video, "question?", token)
    other = await api.post(video, "unrelated", token)
    viewer = await Viewer(f"{api.base}/api/videos/{video}/stream", session).connect()
    try:
        replies = [
            await api.post(video, f"answer {n}", token, parent_id=parent["id"]) for n in range(5)
        ]
        got = await viewer.wait_for(5)
        assert [e.json()["parent_id"] for e in got] == [parent["id"]] * 5
    finally:
        await viewer.close()
    page = await api.page(video)
    assert [i["id"] for i in page["items"]] == [other["id"], parent["id"]]
    top = page["items"][1]
    assert top["reply_count"] == 5
    assert [r["id"] for r in top["replies"]] == [r["id"] for r in replies[:3]]
    assert page["items"][0]["reply_count"] == 0 and page["items"][0]["replies"] == []
    path = f"/api/videos/{video}/comments/{parent['id']}/replies"
    status, more, _ = await api.request("GET", f"{path}?after={replies[2]['seq']}&limit=1")
    assert status == 200 and [r["id"] for r in more["items"]] == [replies[3]["id"]]
    status, rest, _ = await api.request("GET", f"{path}?after={more['next_after']}")
    assert [r["id"] for r in rest["items"]] == [replies[4]["id"]] and rest["next_after"] is None
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments",
        json={"text": "deeper", "parent_id": replies[0]["id"]}, token=token,
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "nested_reply")
