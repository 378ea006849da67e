"""Processes die: a kill -9'd RTMS node leaves the routing table and delivery goes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel import settings as cfg
from livecomments.kernel.grpcauth import DISPATCHER
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.redis.keys import Keys, parse_outbox_member
from livecomments.kernel.store import Store
from tests.support import Api, Viewer, unique

SESSION_TIMEOUT = 4.0

pytestmark = [pytest.mark.faults, pytest.mark.slow]
CLUSTER_ENV = {"LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT)}
# Two comment services: one may die while the other's outbox sweep carries on.
CLUSTER_SHAPE = {"comment_services": 2}
COMMENT_SERVICES = ("comment-1", "comment-2")


async def health(session: aiohttp.ClientSession, cluster: Cluster, name: str) -> dict[str, Any]:
    async with session.get(f"{cluster.services[name].url}/healthz") as response:
        assert response.status == 200, name
        body: dict[str, Any] = await response.json()
        return body


async def counted(session: aiohttp.ClientSession, cluster: Cluster, counter: str) -> int:
    """``counter`` of /healthz, summed over the comment services that are up."""
    alive = [n for n in COMMENT_SERVICES if cluster.services[n].proc.alive()]
    return sum([(await health(session, cluster, n))[counter] for n in alive])


async def outbox_of(cluster: Cluster, video: str | None = None) -> list[str]:
    """The outbox entries (of ``video``, or all): sequenced events not settled yet."""
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        members = await redis.zrange(Keys(f"{cluster.namespace}:").outbox(), 0, -1)
    finally:
        await redis.aclose()
    entries = [m.decode() for m in members]
    return [e for e in entries if video is None or (parse_outbox_member(e) or ("",))[0] == video]


async def outbox_drained(cluster: Cluster, timeout: float = 30.0) -> None:
    """Until an earlier test's leftovers are settled (they would move the counters)."""
    deadline = time.monotonic() + timeout
    while await outbox_of(cluster):
        if time.monotonic() > deadline:
            raise AssertionError(f"the outbox never drained: {await outbox_of(cluster)}")
        await asyncio.sleep(0.2)


async def routes(cluster: Cluster, video: str) -> dict[str, tuple[set[str], set[str]]]:
    """Per dispatcher: (nodes it routes ``video`` to, RTMS nodes it knows are live)."""
    answer = {}
    for name, service in cluster.services.items():
        if service.kind == "dispatcher":
            async with cluster.grpc_security().channel(service.url, DISPATCHER) as channel:
                reply = await pb_grpc.DispatcherStub(channel).Routes(
                    pb.RoutesRequest(video_ids=[video]), timeout=2
                )
            nodes = set(reply.videos[video].node_ids) if video in reply.videos else set()
            answer[name] = (nodes, set(reply.live_nodes))
    return answer


async def wait_routes(cluster: Cluster, video: str, want: set[str], timeout: float) -> float:
    start = time.monotonic()
    while True:
        current = await routes(cluster, video)
        if all(nodes == want and want <= live for nodes, live in current.values()):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"routes for {video}: {current}, wanted {want}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_killed_rtms_node_leaves_the_table_and_dispatch_goes_on(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    api = Api(cluster.services["comment-1"].url, session)
    video = unique("kill")
    token = await api.register(unique("poster"))
    doomed = await Viewer(f"{cluster.services['rtms-1'].url}/stream/{video}", session).connect()
    survivor = await Viewer(f"{cluster.services['rtms-2'].url}/stream/{video}", session).connect()
    try:
        await wait_routes(cluster, video, {"rtms-1", "rtms-2"}, timeout=5)
        await api.post(video, "before the crash", token)
        await survivor.wait_for(1)
        await doomed.wait_for(1)

        doomed.expect_end()
        cluster.services["rtms-1"].proc.kill()  # kill -9: no deregistration, no goodbye
        killed_at = time.monotonic()
        # Posting goes on while ZooKeeper still lists the dead node.
        during = [await api.post(video, f"during {n}", token) for n in range(5)]
        # It leaves when its session expires (a generous bound: never, fails).
        await wait_routes(cluster, video, {"rtms-2"}, timeout=3 * SESSION_TIMEOUT + 10)
        print(
            f"\nrtms-1 left every dispatcher's table {time.monotonic() - killed_at:.2f}s "
            f"after kill -9 (session timeout {SESSION_TIMEOUT}s)"
        )
        after = [await api.post(video, f"after {n}", token) for n in range(5)]

        got = await survivor.wait_for(11)
        assert [e.json()["id"] for e in got[1:]] == [c["id"] for c in during + after]
        await asyncio.sleep(0.3)
        assert len(survivor.of("comment")) == 11  # exactly once
    finally:
        await doomed.close()
        await survivor.close()
        # The node comes back under the same id (also when the test failed above).
        cluster.restart("rtms-1")

    # It serves again, resuming a viewer from the store.
    back = await Viewer(
        f"{cluster.services['rtms-1'].url}/stream/{video}?last_event_id={got[0].id}", session
    ).connect()
    try:
        assert back.status == 200, (back.status, back.error)
        replayed = await back.wait_for(10)
        assert [e.json()["id"] for e in replayed] == [c["id"] for c in during + after]
        await wait_routes(cluster, video, {"rtms-1", "rtms-2"}, timeout=10)
    finally:
        await back.close()


@pytest.mark.timeout(90)
async def test_a_killed_dispatcher_is_failed_over(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    """The comment service retries on the other replica at once: every comment goes
    out on the live path, not later through the outbox sweep or a node's gap fill.

    Both of those would deliver every comment too (the sweep ``outbox_age`` after
    its seq was taken), so the test asserts the path: no dispatch failed, every
    event was settled by its own dispatch (nothing left in the outbox), nothing was
    sent again, and each comment arrived sooner than the sweep could have sent it.
    """
    settings = cfg.load(cfg.CommentServiceSettings, environ=cluster.base_env())
    api = Api(cluster.services["comment-1"].url, session)
    video = unique("disp")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-2'].url}/stream/{video}", session).connect()
    try:
        await wait_routes(cluster, video, {"rtms-2"}, timeout=10)
        await outbox_drained(cluster)
        before = await health(session, cluster, "comment-1")
        cluster.services["dispatcher-1"].proc.kill()
        posted, started = [], []
        for n in range(6):  # round-robin: about every other call meets the dead replica
            started.append(time.time())
            posted.append(await api.post(video, f"n{n}", token))
        # Each event was settled by its own dispatch: the sweep has nothing to send.
        assert await outbox_of(cluster, video) == []
        got = await viewer.wait_for(6)
        assert [e.json()["id"] for e in got] == [c["id"] for c in posted]
        took = [round(e.received_at - t, 3) for e, t in zip(got, started, strict=True)]
        print(f"\nwith dispatcher-1 dead, each comment reached the viewer in {took} s")
        assert all(t < settings.outbox_age for t in took), (took, settings.outbox_age)
        after = await health(session, cluster, "comment-1")
        for counter in ("dispatch_failures", "dispatch_undelivered", "outbox_redispatched"):
            assert after[counter] == before[counter], (counter, before, after)
    finally:
        await viewer.close()
        cluster.restart("dispatcher-1")


def _signal_all(cluster: Cluster, names: tuple[str, ...], sig: signal.Signals) -> None:
    for name in names:
        proc = cluster.services[name].proc
        if proc.alive():
            os.kill(proc.pid, sig)


@pytest.mark.timeout(90)
async def test_writer_dying_between_persist_and_dispatch_loses_nothing(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    """A comment service kill -9'd after its insert, before any dispatcher took the
    event: seq, outbox entry and document are all that is left of the post.

    Both dispatchers are stopped (SIGSTOP), so the writer's dispatch waits for an
    answer; the writer is killed once its comment is in the store, and the
    dispatchers (with the request they never read) after it. No later comment shows
    anyone the gap; the outbox sweep of the surviving replica sends it.
    """
    api = Api(cluster.services["comment-1"].url, session)
    video = unique("orphan")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-1'].url}/stream/{video}", session).connect()
    dispatchers = ("dispatcher-1", "dispatcher-2")
    store = Store(cluster.backends.mongo_uri, cluster.namespace)
    await store.start(create_indexes=False)
    posting: asyncio.Future[Any] | None = None
    try:
        first = await api.post(video, "one", token)
        await viewer.wait_for(1)
        await wait_routes(cluster, video, {"rtms-1"}, timeout=10)
        await outbox_drained(cluster)
        resent_before = (await health(session, cluster, "comment-2"))["outbox_redispatched"]
        text = "stored, then the writer died"
        _signal_all(cluster, dispatchers, signal.SIGSTOP)
        posting = asyncio.ensure_future(
            api.request("POST", f"/api/videos/{video}/comments", json={"text": text}, token=token)
        )
        seq = int(first["seq"]) + 1
        for _ in range(250):  # until the writer's insert is done (it then dispatches)
            stored = await store.comments_at(video, [seq])
            if stored or posting.done():
                break
            await asyncio.sleep(0.02)
        assert stored and stored[0]["text"] == text, (stored, posting.done())
        assert not posting.done(), "the writer answered before it could be killed"
        cluster.services["comment-1"].proc.kill()
        for name in dispatchers:  # the dispatch it sent is never read
            cluster.services[name].proc.kill()
        with contextlib.suppress(aiohttp.ClientError):
            status, _, _ = await posting
            raise AssertionError(f"the killed writer answered {status}")
        for name in dispatchers:
            await asyncio.to_thread(cluster.restart, name)
        killed_at = time.monotonic()
        (_, orphan) = await viewer.wait_for(2, timeout=30)
        assert orphan.json()["text"] == text
        assert orphan.id == f"{stored[0]['epoch']}-{seq}"
        print(f"\nthe orphan arrived {time.monotonic() - killed_at:.2f} s after the kill")
        for _ in range(150):  # the sweep of comment-2 sent it (a node's reconcile may be first)
            if (await health(session, cluster, "comment-2"))["outbox_redispatched"] > resent_before:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the surviving replica's outbox never sent the orphan")
        assert await outbox_of(cluster, video) == []  # settled: out of the outbox
        await asyncio.sleep(0.5)
        assert len(viewer.of("comment")) == 2
    finally:
        if posting is not None:
            posting.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await posting
        await store.stop()
        await viewer.close()
        _signal_all(cluster, dispatchers, signal.SIGCONT)
        for name in ("comment-1", *dispatchers):
            if not cluster.services[name].proc.alive():
                await asyncio.to_thread(cluster.restart, name)


@pytest.mark.timeout(90)
async def test_comments_stored_while_every_dispatcher_is_down_arrive_once(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    """With no dispatcher at all, a node still gets what was stored: it reconciles its
    videos' heads with Redis and fills from the store. When a dispatcher is back,
    the outbox sends the comments again, and the node drops the copies by seq."""
    api = Api(cluster.services["comment-1"].url, session)
    video = unique("nodisp")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-2'].url}/stream/{video}", session).connect()
    try:
        await asyncio.sleep(2.0)  # past the node's join-time catch-up reads (0.3 s, 1.5 s)
        await outbox_drained(cluster)
        resent_before = await counted(session, cluster, "outbox_redispatched")
        for name in ("dispatcher-1", "dispatcher-2"):
            cluster.services[name].proc.kill()
        try:
            # Stored, so acknowledged (201), though no dispatcher can carry them.
            posted = [await api.post(video, f"while down {n}", token) for n in range(3)]
            got = await viewer.wait_for(3, timeout=20)
            assert [e.json()["id"] for e in got] == [c["id"] for c in posted]
        finally:
            for name in ("dispatcher-1", "dispatcher-2"):
                cluster.restart(name)
        # The outbox still holds them (nothing confirmed their dispatch): sent again now.
        for _ in range(200):
            if await counted(session, cluster, "outbox_redispatched") >= resent_before + 3:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the outbox never sent the comments again")
        await asyncio.sleep(0.5)
        assert len(viewer.of("comment")) == 3  # the copies were dropped by seq
    finally:
        await viewer.close()
