"""The fault suite: a steady stream of comments while every kind of process is killed.

The real cluster (three RTMS nodes, two dispatchers, two comment services, a
three-member ZooKeeper ensemble, Redis, the store) serves followers that act
like the viewer page: they follow ``moved``, reconnect with backoff through
the stream endpoint with their last event id, and reload history after a
``reset``. While comments are posted, the harness kill -9s and restarts one
RTMS node, one dispatcher, one comment service, the ZooKeeper leader and
Redis, and moves and drains videos with the operator CLI. Then, for every
viewer: every comment whose POST was acknowledged arrived, exactly once, in
seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from livecomments.cli.cluster import Backends, Cluster
from tests.conftest import NO_LIMITS, make_cluster
from tests.support import Api, Follower, cli, client_session, unique

pytestmark = [pytest.mark.faults, pytest.mark.slow]

VIDEOS = 3
FOLLOWERS_PER_VIDEO = 3
SESSION_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def ensemble(run_root: Path) -> Iterator[Backends]:
    """Backends of its own: a 3-member ZooKeeper ensemble, and a Redis we may kill."""
    started = Backends.start(run_root / "fault-suite", zk_members=3, memory_store=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def chaos_cluster(run_root: Path, ensemble: Backends) -> Iterator[Cluster]:
    env = {
        **NO_LIMITS,
        "LIVECOMMENTS_MIN_SPREAD": "1",
        "LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
        "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.5",
    }
    cluster = make_cluster(run_root, ensemble, "chaos", extra_env=env)
    cluster.start(dispatchers=2, rtms=3, comment_services=2)
    yield cluster
    cluster.stop()


class Poster:
    """Posts round-robin over the videos and both comment services; keeps what was acked."""

    def __init__(self, apis: list[Api], videos: list[str], tokens: list[str]) -> None:
        self.apis, self.videos, self.tokens = apis, videos, tokens
        self.acked: dict[str, list[int]] = {v: [] for v in videos}
        self.failed = 0

    async def run(self, every: float) -> None:
        n = 0
        while True:
            video = self.videos[n % len(self.videos)]
            api = self.apis[n % len(self.apis)]
            try:
                status, body, _ = await api.request(
                    "POST", f"/api/videos/{video}/comments",
                    json={"text": f"c{n}"}, token=self.tokens[n % len(self.tokens)],
                )  # fmt: skip
            except (aiohttp.ClientError, TimeoutError):
                status, body = 0, None
            if status == 201:
                self.acked[video].append(int(body["seq"]))
            else:
                self.failed += 1  # not acknowledged: nobody is owed this one
            n += 1
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def background(coro: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def delivered(
    followers: list[Follower], acked: dict[str, list[int]], timeout: float = 20.0
) -> None:
    """Give stragglers time: until every follower has every acknowledged comment."""
    for _ in range(int(timeout / 0.25)):
        if all(set(acked[f.video]) <= set(f.seqs) for f in followers):
            break
        await asyncio.sleep(0.25)


def report(name: str, acked: list[int], follower: Follower) -> dict[str, Any]:
    got = follower.seqs
    return {
        "viewer": name,
        "acked": len(acked),
        "delivered": len(set(got) & set(acked)),
        "duplicates": len(got) - len(set(got)),
        "missing": sorted(set(acked) - set(got)),
        "reorderings": sum(1 for a, b in itertools.pairwise(got) if b < a),
        "moves": follower.moves,
        "resets": follower.resets,
        "reconnects": follower.reconnects,
        "worst_catch_up_s": round(max(follower.catch_up, default=0.0), 2),
    }


@pytest.mark.timeout(300)
async def test_no_acknowledged_comment_is_lost_while_processes_die(
    chaos_cluster: Cluster, ensemble: Backends
) -> None:
    cluster = chaos_cluster
    async with client_session(cluster.ca_file) as http:
        apis = [Api(cluster.services[f"comment-{i}"].url, http) for i in (1, 2)]
        tokens = [await apis[0].register(unique("poster")) for _ in range(3)]
        videos = [unique(f"live{i}") for i in range(VIDEOS)]
        followers = {
            f"{video}#{k}": Follower(apis[k % 2], video, [apis[(k + 1) % 2]]).start()
            for video in videos
            for k in range(FOLLOWERS_PER_VIDEO)
        }
        poster = Poster(apis, videos, tokens)
        steps: list[tuple[str, float]] = []
        began = time.monotonic()

        async def step(what: str, action: Callable[[], Any], pause: float = 2.5) -> None:
            if asyncio.iscoroutinefunction(action):
                await action()
            else:  # process control blocks: keep the followers and the poster running
                result = await asyncio.to_thread(action)
                if asyncio.iscoroutine(result):
                    await result
            steps.append((what, round(time.monotonic() - began, 1)))
            await asyncio.sleep(pause)

        async def rtms_of(video: str) -> str:
            _, table, _ = await cli(cluster, "videos")
            entry = next(v for v in table["videos"] if v["video"] == video)
            return str((entry["hosted"] or entry["placed"])[0])

        try:
            await Follower.all_connected(list(followers.values()))
            async with background(poster.run(every=0.04)):
                await asyncio.sleep(2.0)
                victim = await rtms_of(videos[2])  # a node with viewers on it
                await step(f"kill -9 {victim}", cluster.services[victim].proc.kill, 1.5)
                await step(f"restart {victim}", lambda: cluster.restart(victim))
                await step("kill -9 dispatcher-1", cluster.services["dispatcher-1"].proc.kill)
                await step("restart dispatcher-1", lambda: cluster.restart("dispatcher-1"))
                await step("kill -9 comment-1", cluster.services["comment-1"].proc.kill)
                await step("restart comment-1", lambda: cluster.restart("comment-1"))
                leader = ensemble.zookeeper_leader()
                assert leader is not None
                await step(f"kill -9 {leader} (leader)", ensemble.procs[leader].kill, 4.0)
                await step(f"restart {leader}", lambda: ensemble.restart(leader))
                await step("kill -9 redis", ensemble.procs["redis"].kill, 1.0)
                await step("restart redis", lambda: ensemble.restart("redis"), 3.0)
                target = "rtms-2" if await rtms_of(videos[0]) != "rtms-2" else "rtms-3"
                await step(f"move {videos[0]} --to {target}",
                           lambda: cli(cluster, "move", videos[0], "--to", target))  # fmt: skip
                drained = await rtms_of(videos[1])
                await step(f"drain {drained}", lambda: cli(cluster, "drain", drained))
                await step(f"undrain {drained}", lambda: cli(cluster, "undrain", drained))
                await step(f"unpin {videos[0]}", lambda: cli(cluster, "unpin", videos[0]), 1.0)
            await delivered(list(followers.values()), poster.acked)
            await asyncio.sleep(1.0)
        finally:
            for follower in followers.values():
                await follower.stop()
        rows = [report(name, poster.acked[f.video], f) for name, f in followers.items()]
        print("\nfault suite steps:", steps)
        print(f"posts acknowledged {sum(len(a) for a in poster.acked.values())}, "
              f"refused or failed {poster.failed}")  # fmt: skip
        for row in rows:
            print(row)
        assert all(row["acked"] > 50 for row in rows)
        assert [r for r in rows if r["missing"] or r["duplicates"] or r["reorderings"]] == []


@pytest.mark.timeout(180)
async def test_without_quorum_delivery_goes_on_and_everything_heals(
    chaos_cluster: Cluster, ensemble: Backends
) -> None:
    """Two of three ZooKeeper members die: no membership changes, but comments still flow."""
    cluster = chaos_cluster
    async with client_session(cluster.ca_file) as http:
        apis = [Api(cluster.services[f"comment-{i}"].url, http) for i in (1, 2)]
        token = await apis[0].register(unique("poster"))
        video = unique("noquorum")
        followers = [Follower(apis[k % 2], video, [apis[(k + 1) % 2]]).start() for k in range(3)]
        poster = Poster(apis, [video], [token])
        members = [name for name in ensemble.procs if name.startswith("zookeeper")]
        try:
            await Follower.all_connected(followers)
            async with background(poster.run(every=0.05)):
                await asyncio.sleep(1.0)
                for name in members[:2]:
                    await asyncio.to_thread(ensemble.procs[name].kill)
                during = len(poster.acked[video])
                await asyncio.sleep(SESSION_TIMEOUT + 3.0)  # past any session timeout
                during = len(poster.acked[video]) - during
                status, health, _ = await apis[0].request("GET", "/healthz")
                assert status == 200 and health["zookeeper"] != "CONNECTED"
                for name in members[:2]:
                    await asyncio.to_thread(ensemble.restart, name)
                await asyncio.sleep(2.0)
            await delivered(followers, poster.acked)
            # After it heals, new videos are hosted and served again.
            fresh = Follower(apis[0], unique("healed")).start()
            followers.append(fresh)
            await Follower.all_connected([fresh], timeout=20)
        finally:
            for follower in followers:
                await follower.stop()
        rows = [report(f"{video}#{k}", poster.acked[video], f) for k, f in enumerate(followers[:3])]
        print(f"\nwithout quorum for {SESSION_TIMEOUT + 3.0:.0f} s: {during} posts acknowledged")
        for row in rows:
            print(row)
        assert during > 20  # posting and delivery went on without quorum
        assert [r for r in rows if r["missing"] or r["duplicates"] or r["reorderings"]] == []
