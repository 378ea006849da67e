"""The live viewer count (issue 14): every viewer of a video is told how many watch it,
on every node together, and the first history page says it too.

Viewers are spread over two nodes, join and leave, and one node is killed: its
viewers stop counting when its ZooKeeper session ends, and do not count again when
it comes back under the same id. The counts travel through Redis
(``kernel/viewers.py``), not the nodes' ZooKeeper records.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from kazoo.client import KazooClient

from livecomments.cli.cluster import Cluster
from tests.support import Api, Viewer, unique, wait_until
from tests.system.test_stream_protocol import check, documented

SESSION_TIMEOUT = 4.0
CLUSTER_ENV = {
    "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.3",
    "LIVECOMMENTS_VIEWER_COUNT_INTERVAL": "0.3",
    "LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
    "LIVECOMMENTS_HOST_GRACE": "1",  # a video nobody watches leaves its node soon after
}


def told(viewer: Viewer) -> list[int]:
    """The totals ``viewer`` was told, in order (each checked against the document)."""
    schemas = documented()
    return [check(e, schemas)["count"] for e in viewer.of("viewers")]


async def on(cluster: Cluster, session: aiohttp.ClientSession, node: str, video: str) -> Viewer:
    """A viewer on ``node`` whatever the placement (``redirected`` stops the 307)."""
    url = f"{cluster.services[node].url}/stream/{video}?redirected=1"
    return await Viewer(url, session).connect()


async def first_page_says(api: Api, video: str, count: int) -> bool:
    status, page, _ = await api.request("GET", f"/api/videos/{video}/comments")
    assert status == 200, page
    return bool(page.get("viewers") == count)


async def test_viewers_are_counted_over_nodes_as_they_join_leave_and_die(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("audience")
    here = [await on(cluster, session, "rtms-1", video) for _ in range(2)]
    there = await on(cluster, session, "rtms-2", video)
    late: Viewer | None = None
    everyone = [*here, there]
    try:

        def all_told(viewers: list[Viewer], count: int) -> bool:
            return all(told(v)[-1:] == [count] for v in viewers)

        # Three viewers on two nodes: each of them is told 3, and so is a reader.
        await wait_until(lambda: all_told(everyone, 3), what="3 viewers on both nodes")
        await wait_until(lambda: first_page_says(api, video, 3), what="the first page says 3")
        # Told when it changes only.
        assert all(t[i] != t[i + 1] for v in everyone for t in [told(v)] for i in range(len(t) - 1))

        # One leaves: the others are told 2.
        await here.pop().close()
        everyone = [*here, there]
        await wait_until(lambda: all_told(everyone, 2), what="2 after one left")

        # A newcomer is told the last total at once, then the new one.
        late = await on(cluster, session, "rtms-1", video)
        await wait_until(lambda: told(late)[:1] == [2], timeout=2, what="the last total on join")
        await wait_until(lambda: all_told([*here, late, there], 3), what="3 with the newcomer")

        # rtms-2 dies (kill -9, no goodbye): its viewer stops counting when its session
        # ends, and the viewers left on rtms-1 are told so.
        there.expect_end()
        cluster.services["rtms-2"].proc.kill()
        await wait_until(
            lambda: all_told([*here, late], 2),
            timeout=3 * SESSION_TIMEOUT + 10,
            what="2 once the dead node's session ended",
        )
        await wait_until(lambda: first_page_says(api, video, 2), what="the first page says 2")

        # rtms-2 comes back under the same id (a StatefulSet pod does). The count its
        # earlier life wrote to Redis is still there; it must not count again.
        await asyncio.to_thread(cluster.restart, "rtms-2")
        other = unique("audience-other")
        probe = await on(cluster, session, "rtms-2", other)
        try:  # the comment service and rtms-1 see rtms-2's new record once this counts
            await wait_until(lambda: first_page_says(api, other, 1), what="rtms-2 counted again")
            await asyncio.sleep(1.0)  # three intervals of rtms-1's and the service's counting
            assert all(told(v)[-1:] == [2] for v in [*here, late])
            assert await first_page_says(api, video, 2)
        finally:
            await probe.close()
        # An older page (before=) does not carry the count: only the first page does.
        status, page, _ = await api.request("GET", f"/api/videos/{video}/comments?before=1")
        assert status == 200 and "viewers" not in page
    finally:
        for viewer in [*here, there, *([late] if late else [])]:
            await viewer.close()


async def test_a_node_rewrites_its_record_only_when_its_load_moves(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """Every process watches every RTMS node's record: a node must not rewrite it for
    every viewer who comes or goes (load reports every 0.3 s here), only when its load
    moves by more than a step; the exact count reaches viewers through Redis."""
    zk = KazooClient(hosts=cluster.backends.zk_hosts)
    await asyncio.to_thread(zk.start, 10)
    member = f"/{cluster.namespace}/nodes/rtms/rtms-1"

    async def record() -> tuple[int, bytes]:
        data, stat = await asyncio.to_thread(zk.get, member)
        return int(stat.version), data

    async def version() -> int:
        return (await record())[0]

    video = unique("steady")
    viewers = [await on(cluster, session, "rtms-1", video) for _ in range(10)]
    try:
        await wait_until(lambda: first_page_says(api, video, 10), what="10 viewers counted")

        async def only_ours() -> bool:  # earlier tests' videos have left rtms-1
            doc = orjson.loads((await record())[1])
            return bool(doc["videos"] == 1 and doc["connections"] in (9, 10))

        await wait_until(only_ours, what="rtms-1 serving this video alone")
        before, data = await record()
        # The record says 9 or 10 connections (within a step of 10). One viewer
        # leaves: counted at once (through Redis), but 9 is within the step of
        # either, so the record, which every process reads, stays as it is.
        await viewers.pop().close()
        await wait_until(lambda: first_page_says(api, video, 9), what="9 viewers counted")
        await asyncio.sleep(1.5)  # 5 load reports
        assert await version() == before, data
        # Three more: 12 is more than a step from 9 or 10, and the record follows.
        viewers += [await on(cluster, session, "rtms-1", video) for _ in range(3)]

        async def rewritten() -> bool:
            return await version() > before

        await wait_until(rewritten, what="the record rewritten")
    finally:
        for viewer in viewers:
            await viewer.close()
        await asyncio.to_thread(zk.stop)
        await asyncio.to_thread(zk.close)
