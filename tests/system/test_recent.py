"""The recent-comments cache: history pages near the head come from Redis, not the store."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.store import Store, utcnow
from tests.support import Api, staff, unique

# History pages only, no viewers: one process of each kind is enough.
CLUSTER_SHAPE = {"dispatchers": 1, "rtms": 1, "comment_services": 1}
CLUSTER_ENV = {"LIVECOMMENTS_RECENT_CACHE_SIZE": "40"}


@contextmanager
def store_frozen(cluster: Cluster) -> Iterator[None]:
    """SIGSTOP the store: whatever still answers does not need it."""
    pid = cluster.backends.procs["store"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def pages(api: Api) -> dict[str, int]:
    status, health, _ = await api.request("GET", "/healthz")
    assert status == 200
    return dict(health["history_pages"])


def shape(page: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (i["seq"], i["text"], i["status"], i["rev"], i["reply_count"],
         tuple((r["seq"], r["text"]) for r in i["replies"]))
        for i in page["items"]
    ]  # fmt: skip


async def test_pages_near_the_head_are_served_without_the_store(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("recent")
    token = await api.register(unique("chatty"))
    mod, _ = await staff(api, cluster, "moderator")
    posted = [await api.post(video, f"line {n}", token) for n in range(6)]
    reply = await api.post(video, "a reply", token, parent_id=posted[1]["id"])
    path = f"/api/videos/{video}/comments"
    status, _, _ = await api.request(
        "PATCH", f"{path}/{posted[2]['id']}", json={"text": "edited"}, token=mod
    )
    assert status == 200
    status, _, _ = await api.request("DELETE", f"{path}/{posted[3]['id']}", token=mod)
    assert status == 200
    # The first first page fills the Redis copy of the pinned comment (none) from the
    # store (pinned.py); from then on first pages need no store either.
    await api.page(video, limit=1)
    before = await pages(api)
    with store_frozen(cluster):
        first = await asyncio.wait_for(api.page(video, limit=10), 5)
        polled = await asyncio.wait_for(api.page(video, after=0, limit=10), 5)
        tail = await asyncio.wait_for(api.page(video, after=posted[4]["seq"], limit=10), 5)
    after = await pages(api)
    assert after.get("cache", 0) - before.get("cache", 0) == 3
    assert after.get("store", 0) == before.get("store", 0)
    expected = [
        (1, "line 0", "visible", 0, 0, ()),
        (2, "line 1", "visible", 0, 1, ((7, "a reply"),)),
        (3, "edited", "visible", 1, 0, ()),
        (4, None, "deleted", 1, 0, ()),
        (5, "line 4", "visible", 0, 0, ()),
        (6, "line 5", "visible", 0, 0, ()),
    ]
    assert reply["seq"] == 7
    assert shape(polled) == expected
    assert shape(first) == expected[::-1]
    assert (polled["head"], polled["next_after"], polled["poll_after"]) == (9, None, 9)
    assert first["next_before"] is None
    assert shape(tail) == expected[5:]


async def test_a_trimmed_cache_sends_older_pages_to_the_store(api: Api) -> None:
    video = unique("trim")
    tokens = [await api.register(unique("many")) for _ in range(3)]
    for n in range(50):  # the cache keeps 40
        await api.post(video, f"message {n}", tokens[n % 3])
    before = await pages(api)
    old = await api.page(video, after=0, limit=20)
    new = await api.page(video, after=30, limit=20)
    newest = await api.page(video, limit=20)
    after = await pages(api)
    assert (after["store"] - before.get("store", 0), after["cache"] - before["cache"]) == (1, 2)
    assert [i["seq"] for i in old["items"]] == list(range(1, 21))
    assert old["next_after"] == 20
    assert [i["seq"] for i in new["items"]] == list(range(31, 51))
    assert [i["seq"] for i in newest["items"]] == list(range(50, 30, -1))


async def test_a_poll_stops_before_a_seq_still_being_written(cluster: Cluster, api: Api) -> None:
    """A taken seq that is not stored yet is never stepped over; once its writer is
    known dead (the outbox sweep found nothing to send) the poll moves past it."""
    video = unique("inflight")
    token = await api.register(unique("poster"))
    first = await api.post(video, "one", token)
    redis = Redis.from_url(cluster.backends.redis_url)
    store = Store(cluster.backends.mongo_uri, cluster.namespace)
    await store.start(create_indexes=False)
    try:
        sequencer = Sequencer(redis, f"{cluster.namespace}:", store, outbox=True)
        taken = await sequencer.next(video)  # a writer that then goes quiet
        third = await api.post(video, "three", token)
        assert (taken.seq, third["seq"]) == (2, 3)
        page = await api.page(video, after=first["seq"], limit=10)
        assert (page["items"], page["next_after"], page["poll_after"]) == ([], None, 1)
        # The writer stores it late: the poll now gets both, in order.
        doc = {
            "_id": int(third["id"]) + 1, "video_id": video, "seq": taken.seq, "epoch": taken.epoch,
            "user_id": int(first["user_id"]), "author": first["author"], "text": "two",
            "parent_id": None, "status": "visible", "created_at": utcnow(),
            "created_at_ms": 0, "edited_at": None, "rev": 0, "reactions": {},
        }  # fmt: skip
        await store.insert_comment(doc)
        for _ in range(100):  # the outbox sweep sends it (and clears its entry) within ~3 s
            page = await api.page(video, after=first["seq"], limit=10)
            if page["items"]:
                break
            await asyncio.sleep(0.1)
        assert [i["text"] for i in page["items"]] == ["two", "three"]
        assert page["poll_after"] == 3
    finally:
        await redis.aclose()
        await store.stop()
