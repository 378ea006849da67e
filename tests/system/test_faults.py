"""Processes die: a kill -9'd RTMS node leaves the routing table and delivery goes on."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.grpcauth import DISPATCHER
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.store import Store, utcnow
from tests.support import Api, Viewer, unique

SESSION_TIMEOUT = 4.0

pytestmark = [pytest.mark.faults, pytest.mark.slow]
CLUSTER_ENV = {"LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT)}


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
    await wait_routes(cluster, video, {"rtms-1", "rtms-2"}, timeout=5)
    await api.post(video, "before the crash", token)
    await survivor.wait_for(1)
    await doomed.wait_for(1)

    cluster.services["rtms-1"].proc.kill()  # kill -9: no deregistration, no goodbye
    killed_at = time.monotonic()
    # Posting goes on while ZooKeeper still lists the dead node.
    during = [await api.post(video, f"during {n}", token) for n in range(5)]
    await wait_routes(cluster, video, {"rtms-2"}, timeout=SESSION_TIMEOUT + 10)
    vanished = time.monotonic() - killed_at
    print(
        f"\nrtms-1 left every dispatcher's table {vanished:.2f}s after kill -9 "
        f"(session timeout {SESSION_TIMEOUT}s)"
    )
    assert vanished <= SESSION_TIMEOUT + 3, "the dead node outlived its ZooKeeper session"
    after = [await api.post(video, f"after {n}", token) for n in range(5)]

    got = await survivor.wait_for(11)
    assert [e.json()["id"] for e in got[1:]] == [c["id"] for c in during + after]
    await asyncio.sleep(0.3)
    assert len(survivor.of("comment")) == 11  # exactly once
    await doomed.close()
    await survivor.close()

    # The node comes back under the same id and serves again, resuming a viewer from the store.
    cluster.restart("rtms-1")
    back = await Viewer(
        f"{cluster.services['rtms-1'].url}/stream/{video}?last_event_id={got[0].id}", session
    ).connect()
    assert back.status == 200, (back.status, back.error)
    replayed = await back.wait_for(10)
    assert [e.json()["id"] for e in replayed] == [c["id"] for c in during + after]
    await wait_routes(cluster, video, {"rtms-1", "rtms-2"}, timeout=10)
    await back.close()


@pytest.mark.timeout(60)
async def test_a_killed_dispatcher_is_failed_over(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    api = Api(cluster.services["comment-1"].url, session)
    video = unique("disp")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-2'].url}/stream/{video}", session).connect()
    cluster.services["dispatcher-1"].proc.kill()
    try:
        posted = [await api.post(video, f"n{n}", token) for n in range(6)]
        got = await viewer.wait_for(6)
        assert [e.json()["id"] for e in got] == [c["id"] for c in posted]
    finally:
        await viewer.close()
        cluster.restart("dispatcher-1")


async def test_writer_dying_between_persist_and_dispatch_loses_nothing(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    """What a comment service killed right after its insert leaves: seq + outbox entry + doc.

    No later comment shows anyone the gap; the outbox sweep of the surviving
    replica delivers it all the same.
    """
    api = Api(cluster.services["comment-1"].url, session)
    video = unique("orphan")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-1'].url}/stream/{video}", session).connect()
    first = await api.post(video, "one", token)
    await viewer.wait_for(1)
    await asyncio.sleep(2.0)  # past the node's join-time catch-up reads (0.3 s, 1.5 s)
    redis = Redis.from_url(cluster.backends.redis_url)
    store = Store(cluster.backends.mongo_uri, cluster.namespace)
    await store.start(create_indexes=False)
    try:
        sequencer = Sequencer(redis, f"{cluster.namespace}:", store, outbox=True)
        taken = await sequencer.next(video)  # the writer's own code path...
        doc = {
            "_id": int(first["id"]) + 1, "video_id": video,
            "seq": taken.seq, "epoch": taken.epoch,
            "user_id": int(first["user_id"]), "author": first["author"],
            "text": "acknowledged, then the writer died", "parent_id": None,
            "status": "visible", "created_at": utcnow(), "created_at_ms": 0,
            "edited_at": None, "rev": 0, "reactions": {},
        }  # fmt: skip
        await store.insert_comment(doc)  # ... up to the insert, and then nothing
    finally:
        await redis.aclose()
        await store.stop()
    started = time.monotonic()
    (_, orphan) = await viewer.wait_for(2, timeout=10)
    took = time.monotonic() - started
    assert orphan.json()["text"] == "acknowledged, then the writer died"
    assert orphan.id == str(taken)
    print(f"outbox delivered the orphan after {took:.2f} s")
    await asyncio.sleep(0.5)
    assert len(viewer.of("comment")) == 2
    await viewer.close()


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
    await asyncio.sleep(2.0)  # past the node's join-time catch-up reads (0.3 s, 1.5 s)
    url = f"{cluster.services['comment-1'].url}/healthz"
    async with session.get(url) as response:
        resent_before = (await response.json())["outbox_redispatched"]
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
        async with session.get(url) as response:
            if (await response.json())["outbox_redispatched"] >= resent_before + 3:
                break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the outbox never sent the comments again")
    await asyncio.sleep(0.5)
    assert len(viewer.of("comment")) == 3  # the copies were dropped by seq
    await viewer.close()
