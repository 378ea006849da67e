"""The two paths, end to end, on the real system: post -> store -> dispatcher -> RTMS -> SSE."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel import events
from livecomments.kernel.grpcauth import DISPATCHER, RTMS
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.stream import Position
from tests.support import Api, Viewer, staff, unique, wait_until


def rtms_url(cluster: Cluster, index: int) -> str:
    return cluster.services[f"rtms-{index}"].url


async def test_comment_reaches_every_viewer_of_its_video_once_and_no_other(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video_a, video_b = unique("a"), unique("b")
    token = await api.register(unique("poster"))
    a1 = await Viewer(f"{rtms_url(cluster, 1)}/stream/{video_a}", session).connect()
    a2 = await Viewer(f"{rtms_url(cluster, 2)}/stream/{video_a}", session).connect()
    b1 = await Viewer(f"{rtms_url(cluster, 1)}/stream/{video_b}", session).connect()
    # A viewer arriving through the comment service's redirect is a viewer too.
    a3 = await Viewer(f"{api.base}/api/videos/{video_a}/stream", session).connect()
    assert a3.status == 200 and "/stream/" in a3.final_url
    try:
        posted = await api.post(video_a, "first!", token)
        for viewer in (a1, a2, a3):
            (event,) = await viewer.wait_for(1)
            body = event.json()
            assert body["id"] == posted["id"] and body["text"] == "first!"
            assert event.id == f"{posted['epoch']}-{posted['seq']}"
        await asyncio.sleep(0.5)  # anything extra would have arrived by now
        for viewer in (a1, a2, a3):
            assert len(viewer.of("comment")) == 1
        assert b1.events == []
        assert b"retry: " in b1.raw  # the stream itself is alive
    finally:
        for viewer in (a1, a2, a3, b1):
            await viewer.close()


async def test_comments_arrive_in_seq_order_under_concurrent_posts(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("burst")
    tokens = [await api.register(unique("u")) for _ in range(4)]
    viewers = [
        await Viewer(f"{rtms_url(cluster, i)}/stream/{video}", session).connect() for i in (1, 2)
    ]
    try:
        await asyncio.gather(*(api.post(video, f"c{n}", tokens[n % 4]) for n in range(40)))
        for viewer in viewers:
            got = await viewer.wait_for(40, timeout=20)
            seqs = [e.seq for e in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == 40
            assert sorted(e.json()["text"] for e in got) == sorted(f"c{n}" for n in range(40))
    finally:
        for viewer in viewers:
            await viewer.close()


async def test_history_pages_cover_everything_once(api: Api) -> None:
    video = unique("hist")
    token = await api.register(unique("writer"))
    posted = [await api.post(video, f"message {n}", token) for n in range(50)]
    seen: list[dict[str, object]] = []
    page = await api.page(video, limit=7)
    assert page["head"] == 50
    while True:
        seen.extend(page["items"])
        if page["next_before"] is None:
            break
        page = await api.page(video, limit=7, before=page["next_before"])
    assert [c["id"] for c in seen] == [c["id"] for c in reversed(posted)]
    # Oldest-first paging with `after` covers the same set.
    forward: list[dict[str, object]] = []
    after = 0
    while after is not None:
        page = await api.page(video, limit=9, after=after)
        forward.extend(page["items"])
        after = page["next_after"]
    assert [c["id"] for c in forward] == [c["id"] for c in posted]


async def test_resume_after_disconnect_gets_exactly_what_was_missed(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("resume")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{rtms_url(cluster, 1)}/stream/{video}", session).connect()
    await api.post(video, "before", token)
    (first,) = await viewer.wait_for(1)
    await viewer.close()
    missed = [await api.post(video, f"missed {n}", token) for n in range(3)]

    # Same node (from its ring), with the Last-Event-ID header a browser sends.
    again = await Viewer(
        f"{rtms_url(cluster, 1)}/stream/{video}", session, headers={"Last-Event-ID": first.id or ""}
    ).connect()
    # The other node has never seen this video: it replays from the store. The
    # resume point travels through the comment service's 307 as a query.
    other = await Viewer(
        f"{rtms_url(cluster, 2)}/stream/{video}?last_event_id={first.id}", session
    ).connect()
    redirected = await Viewer(
        f"{api.base}/api/videos/{video}/stream", session, headers={"Last-Event-ID": first.id or ""}
    ).connect()
    assert f"last_event_id={first.id}" in redirected.final_url
    try:
        for resumed in (again, other, redirected):
            got = await resumed.wait_for(3)
            assert [e.json()["id"] for e in got] == [c["id"] for c in missed]
        await asyncio.sleep(0.3)
        for resumed in (again, other, redirected):
            assert len(resumed.of("comment")) == 3
    finally:
        for resumed in (again, other, redirected):
            await resumed.close()


async def test_seq_gap_is_filled_from_the_store(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """An RTMS node that receives seq n+2 after n fetches n+1 from the store.

    Seq 2 is written the way a comment service that died between persisting and
    dispatching leaves it: in the store and counted in Redis, never dispatched.
    """
    video = unique("gap")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{rtms_url(cluster, 2)}/stream/{video}", session).connect()
    first = await api.post(video, "one", token)
    await viewer.wait_for(1)

    redis = Redis.from_url(cluster.backends.redis_url)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        seq = await redis.incr(Keys(f"{cluster.namespace}:").seq(video))
        assert seq == 2
        orphan = {
            **{k: v for k, v in first.items() if k in ("video_id", "epoch", "author")},
            "_id": int(first["id"]) + 1,
            "seq": 2,
            "text": "never dispatched",
            "user_id": int(first["user_id"]),
            "parent_id": None,
            "status": "visible",
            "created_at": datetime.datetime.now(datetime.UTC),
            "created_at_ms": 0,
            "edited_at": None,
        }
        await mongo[cluster.namespace]["comments"].insert_one(orphan)
    finally:
        await redis.aclose()
        await mongo.close()

    third = await api.post(video, "three", token)
    assert third["seq"] == 3
    got = await viewer.wait_for(3)
    assert [e.json()["text"] for e in got] == ["one", "never dispatched", "three"]
    assert [e.id for e in got] == [f"{third['epoch']}-{n}" for n in (1, 2, 3)]

    # A dispatcher retrying an event the node already has: dropped by seq.
    rtms_grpc = cluster.services["rtms-2"].env["LIVECOMMENTS_GRPC_PORT"]
    security = cluster.grpc_security(DISPATCHER)
    async with security.channel(f"127.0.0.1:{rtms_grpc}", RTMS) as channel:
        reply = await pb_grpc.DeliveryStub(channel).Deliver(
            pb.DeliverRequest(
                events=[
                    pb.Event(
                        video_id=video,
                        seq=3,
                        epoch=third["epoch"],
                        kind=pb.COMMENT,
                        frame=f"id: {third['epoch']}-3\nevent: comment\ndata: {{}}\n\n".encode(),
                    )
                ]
            )
        )
    assert reply.duplicates == 1
    await asyncio.sleep(0.3)
    assert len(viewer.of("comment")) == 3
    await viewer.close()


async def test_counter_behind_or_lost_in_redis_never_reuses_a_stored_seq(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("redis")
    token = await api.register(unique("poster"))
    first = [await api.post(video, f"n{n}", token) for n in range(3)]
    redis = Redis.from_url(cluster.backends.redis_url)
    keys = Keys(f"{cluster.namespace}:")
    try:
        # Redis restored from an older snapshot: the counter went back to 1.
        await redis.set(keys.seq(video), 1)
        fourth = await api.post(video, "after rollback", token)
        assert (fourth["seq"], fourth["epoch"]) == (4, first[0]["epoch"])
        # Redis lost everything: the counter is re-seeded from the store, new epoch.
        await redis.delete(keys.seq(video), keys.epoch(video))
        viewer = await Viewer(
            f"{rtms_url(cluster, 1)}/stream/{video}?last_event_id={first[0]['epoch']}-4", session
        ).connect()
        fifth = await api.post(video, "after loss", token)
    finally:
        await redis.aclose()
    assert fifth["seq"] == 5 and fifth["epoch"] > first[0]["epoch"]
    page = await api.page(video)
    assert [c["seq"] for c in page["items"]] == [5, 4, 3, 2, 1]
    got = await viewer.wait_for(1)
    assert got[0].json()["id"] == fifth["id"]
    await viewer.close()


async def test_replies_are_delivered_and_listed(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("reply")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{rtms_url(cluster, 1)}/stream/{video}", session).connect()
    parent = await api.post(video, "question?", token)
    reply = await api.post(video, "answer!", token, parent_id=parent["id"])
    assert reply["parent_id"] == parent["id"]
    got = await viewer.wait_for(2)
    assert got[1].json()["parent_id"] == parent["id"]
    status, body, _ = await api.request(
        "POST",
        f"/api/videos/{video}/comments",
        json={"text": "deeper", "parent_id": reply["id"]},
        token=token,
    )
    assert (status, body["error"]["code"]) == (400, "nested_reply")
    status, body, _ = await api.request(
        "POST",
        f"/api/videos/{unique('other')}/comments",
        json={"text": "wrong video", "parent_id": parent["id"]},
        token=token,
    )
    assert (status, body["error"]["code"]) == (404, "parent_not_found")
    await viewer.close()


TEXT_60 = "Did anyone else catch that goal in the 89th minute? Unreal!!"


def sequenced_frames(raw: bytes) -> list[bytes]:
    """The frames with an id, exactly as they came over the wire."""
    return [block + b"\n\n" for block in raw.split(b"\n\n") if block.startswith(b"id: ")]


async def test_a_resumed_viewer_gets_the_same_bytes_from_the_ring_and_from_the_store(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """The compact frames of comments, a reply, a reacted comment, an edit and a delete:
    replayed from a node's ring and from the store, byte for byte the same; and a
    client filling in what the stream says gets what the history API says."""
    video = unique("bytes")
    token = await api.register(unique("poster"))
    mod, _ = await staff(api, cluster)
    live = await Viewer(f"{rtms_url(cluster, 1)}/stream/{video}", session).connect()
    try:
        first = await api.post(video, TEXT_60, token)
        await api.post(video, "a reply", token, parent_id=first["id"])
        edited = await api.post(video, "to be edited", token)
        deleted = await api.post(video, "to be deleted", token)
        comments = f"/api/videos/{video}/comments"
        status, _, _ = await api.request(
            "PUT", f"{comments}/{first['id']}/reactions/like", token=token
        )
        assert status == 200
        status, _, _ = await api.request(
            "PATCH", f"{comments}/{edited['id']}", json={"text": "edited"}, token=mod
        )
        assert status == 200
        status, _, _ = await api.request("DELETE", f"{comments}/{deleted['id']}", token=token)
        assert status == 200
        await live.wait_for(1, "comment.deleted")
        (live_first, *_) = live.of("comment")
        live_frames = sequenced_frames(bytes(live.raw))
        assert len(live_frames[0]) <= 250  # a 60-character comment

        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)

        async def reactions_stored() -> bool:
            doc = await mongo[cluster.namespace]["comments"].find_one({"_id": int(first["id"])})
            return bool(doc and doc.get("reactions"))

        try:
            await wait_until(reactions_stored, what="the reaction flushed to the store")
        finally:
            await mongo.close()
    finally:
        await live.close()

    since = f"{first['epoch']}-0"
    from_ring = await Viewer(
        f"{rtms_url(cluster, 1)}/stream/{video}?last_event_id={since}", session
    ).connect()
    # rtms-2 has never hosted the video: it replays from the store.
    from_store = await Viewer(
        f"{rtms_url(cluster, 2)}/stream/{video}?last_event_id={since}", session
    ).connect()
    try:
        for resumed in (from_ring, from_store):
            # seqs 3 and 4 replay in their new state, then the edit (5) and the delete (6)
            await resumed.wait_for(2, "comment.deleted")
        ring = sequenced_frames(bytes(from_ring.raw))
        store = sequenced_frames(bytes(from_store.raw))
        assert [f.split(b"\n")[0] for f in ring] == [
            f"id: {first['epoch']}-{n}".encode() for n in range(1, 7)
        ]
        assert ring == store
        assert ring[:2] == live_frames[:2]  # the reaction changed no byte

        for event in (*from_store.of("comment"), *from_store.of("comment.updated")):
            position = Position.parse(event.id)
            assert position is not None
            view = events.from_stream(event.json(), video, position)
            _, stored, _ = await api.request("GET", f"{comments}/{view['id']}")
            assert view == {**stored, "reactions": {}}
        assert from_store.of("comment")[0].json() == live_first.json()
    finally:
        await from_ring.close()
        await from_store.close()
