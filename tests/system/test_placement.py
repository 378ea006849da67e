"""Where videos live, and what viewers see when operators move them: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from livecomments.cli.cluster import Cluster
from livecomments.coord.placement import rendezvous
from tests.support import Api, Follower, cli, unique, wait_until

CLUSTER_SHAPE = {"rtms": 3}
CLUSTER_ENV = {
    "LIVECOMMENTS_MIN_SPREAD": "1",
    "LIVECOMMENTS_SPREAD_VIEWERS": "3",  # a 4th viewer spreads a video to a 2nd node
    "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.3",
}
NODES = ("rtms-1", "rtms-2", "rtms-3")


def node_of(cluster: Cluster, url: str) -> str:
    for name, service in cluster.services.items():
        if service.kind == "rtms" and url.startswith(service.url + "/"):
            return name
    raise AssertionError(f"{url} is no RTMS node")


def landed(cluster: Cluster, follower: Follower) -> list[str]:
    """The RTMS nodes each of the follower's connections landed on, in order."""
    by_port = {
        s.url.rsplit(":", 1)[1]: name for name, s in cluster.services.items() if s.kind == "rtms"
    }
    return [by_port[hostport.rsplit(":", 1)[1]] for hostport in follower.nodes]


async def location(api: Api, path: str, headers: dict[str, str] | None = None) -> str:
    status, _, response = await api.request("GET", path, headers=headers, allow_redirects=False)
    assert status == 307, status
    return response.headers["Location"]


class Posting:
    """A steady poster; remembers the seq of every acknowledged comment, and the
    answers to the posts that were not acknowledged."""

    def __init__(self, api: Api, video: str, token: str, every: float = 0.05) -> None:
        self.api, self.video, self.token, self.every = api, video, token, every
        self.acked: list[int] = []
        self.refused: list[tuple[int, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while True:
            status, body, _ = await self.api.request(
                "POST", f"/api/videos/{self.video}/comments",
                json={"text": f"tick {n}"}, token=self.token,
            )  # fmt: skip
            if status == 201:
                self.acked.append(int(body["seq"]))
            else:
                self.refused.append((status, body))
            n += 1
            await asyncio.sleep(self.every)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Posting]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def flowing(posting: Posting, followers: list[Follower], moves: int) -> None:
    """Until a few more comments are acknowledged and every follower, after ``moves``
    moves, has them: the viewers are where the last step sent them, and fed there."""
    mark = len(posting.acked)

    def fed() -> bool:
        fresh = set(posting.acked[mark:])
        return len(fresh) >= 5 and all(f.moves == moves and fresh <= set(f.seqs) for f in followers)

    await wait_until(fed, what=f"followers fed after {moves} move(s)")


async def settle(followers: list[Follower], acked: list[int], timeout: float = 10.0) -> None:
    """Wait until every follower has every acknowledged comment, then check exactly once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(int(timeout * 10)):
        if loop.time() > deadline or not any(set(acked) - set(f.seqs) for f in followers):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    for follower in followers:
        assert sorted(acked) == sorted(set(acked)), "a seq acknowledged twice"
        missing = sorted(set(acked) - set(follower.seqs))
        assert not missing, f"missing {missing}"
        assert len(follower.seqs) == len(set(follower.seqs)), "duplicates"
        assert follower.seqs == sorted(follower.seqs), "out of order"


@pytest.fixture
async def followers_of(
    api: Api,
) -> AsyncIterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        await follower.stop()


async def test_a_node_redirects_viewers_of_videos_placed_elsewhere(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("where")
    placed = node_of(cluster, await location(api, f"/api/videos/{video}/stream"))
    other = next(n for n in NODES if n != placed)
    direct = Api(cluster.services[other].url, session)
    target = await location(direct, f"/stream/{video}", {"Last-Event-ID": "17-4"})
    assert node_of(cluster, target) == placed
    assert target.endswith(f"/stream/{video}?redirected=1&last_event_id=17-4")
    # Sent by a redirect (or a `moved` event): served where it lands, no ping-pong.
    async with session.get(
        f"{cluster.services[other].url}/stream/{video}?redirected=1"
    ) as response:
        assert response.status == 200


async def test_move_and_pin_carry_viewers_over_without_loss(
    cluster: Cluster, api: Api, followers_of: list[Follower]
) -> None:
    video = unique("move")
    await cli(cluster, "pin", video, "rtms-1")
    token = await api.register(unique("poster"))
    await api.post(video, "before anyone watches", token)
    followers_of.extend(Follower(api, video).start() for _ in range(4))
    await Follower.all_connected(followers_of)
    async with Posting(api, video, token).running() as posting:
        await flowing(posting, followers_of, moves=0)
        assert all(landed(cluster, f) == ["rtms-1"] for f in followers_of)
        await cli(cluster, "move", video, "--to", "rtms-2")
        await flowing(posting, followers_of, moves=1)
        await cli(cluster, "pin", video, "rtms-3", "rtms-1")
        await flowing(posting, followers_of, moves=2)
    # Nothing lost only means something if comments were posted throughout
    # (at least five acknowledged in each of the three placements).
    assert posting.refused == [] and len(posting.acked) >= 15, (posting.refused, posting.acked)
    await settle(followers_of, posting.acked)
    for follower in followers_of:
        assert follower.moves == 2
        first, second, third = landed(cluster, follower)
        assert (first, second) == ("rtms-1", "rtms-2") and third in ("rtms-3", "rtms-1")
    print(f"move: {len(posting.acked)} comments, worst catch-up "
          f"{max(max(f.catch_up) for f in followers_of) * 1000:.0f} ms")  # fmt: skip
    await cli(cluster, "unpin", video)


async def test_drain_empties_a_node_and_undrain_reopens_it(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, followers_of: list[Follower]
) -> None:
    video = unique("drain")
    token = await api.register(unique("poster"))
    placed = node_of(cluster, await location(api, f"/api/videos/{video}/stream"))
    followers_of.extend(Follower(api, video).start() for _ in range(3))
    await Follower.all_connected(followers_of)
    async with Posting(api, video, token).running() as posting:
        await flowing(posting, followers_of, moves=0)
        await cli(cluster, "drain", placed)
        await flowing(posting, followers_of, moves=1)
    await settle(followers_of, posting.acked)
    assert all(f.moves == 1 and landed(cluster, f)[-1] != placed for f in followers_of)
    # A drained node takes no new viewers: it sends them to a placed node.
    target = await location(Api(cluster.services[placed].url, session), f"/stream/{video}")
    assert node_of(cluster, target) != placed
    await cli(cluster, "undrain", placed)
    targets: set[str] = set()

    async def placed_again() -> bool:  # the comment service's placement watch fires
        path = f"/api/videos/{video}/stream"
        targets.update([node_of(cluster, await location(api, path)) for _ in range(30)])
        return placed in targets

    await wait_until(placed_again, what=f"{video} placed on {placed} again")
    assert placed in targets  # placed again (with 3 viewers, alongside a second node)


async def test_rebalance_moves_viewers_left_on_unplaced_nodes(
    cluster: Cluster, api: Api, followers_of: list[Follower]
) -> None:
    # A video that hashes to some node other than rtms-3, pinned to rtms-3 for now.
    video = next(v for v in (unique(f"rb{i}") for i in range(50))
                 if rendezvous(v, NODES)[0] != "rtms-3")  # fmt: skip
    home = rendezvous(video, NODES)[0]
    await cli(cluster, "pin", video, "rtms-3")
    token = await api.register(unique("poster"))
    # Two viewers: fewer than SPREAD_VIEWERS, so the video is placed on one node.
    followers_of.extend(Follower(api, video).start() for _ in range(2))
    await Follower.all_connected(followers_of)
    async with Posting(api, video, token).running() as posting:
        await flowing(posting, followers_of, moves=0)
        await cli(cluster, "unpin", video)  # viewers stay where they are ...
        await asyncio.sleep(0.5)
        assert all(f.moves == 0 for f in followers_of)
        _, plan, _ = await cli(cluster, "rebalance", "--dry-run")
        assert plan is not None and video in str(plan)
        await asyncio.sleep(0.5)
        assert all(f.moves == 0 for f in followers_of)  # a dry run changes nothing
        await cli(cluster, "rebalance", "--yes")  # ... until a rebalance
        await flowing(posting, followers_of, moves=1)
    await settle(followers_of, posting.acked)
    assert all(f.moves == 1 and landed(cluster, f) == ["rtms-3", home] for f in followers_of)


async def test_a_busy_video_spreads_over_more_nodes_and_shrinks_back(
    cluster: Cluster, api: Api, followers_of: list[Follower]
) -> None:
    video = unique("busy")

    async def placed_nodes() -> set[str]:
        return {
            node_of(cluster, await location(api, f"/api/videos/{video}/stream")) for _ in range(40)
        }

    async def placed_nodes_are(count: int) -> bool:
        return len(await placed_nodes()) == count

    assert len(await placed_nodes()) == 1
    followers_of.extend(Follower(api, video).start() for _ in range(4))
    # Load reports every 0.3 s: until the comment service sees the 4 viewers.
    await wait_until(lambda: placed_nodes_are(2), what="spread to 2 nodes")
    assert len(await placed_nodes()) == 2  # 4 viewers, one more node per 3
    for follower in followers_of:
        await follower.stop()
    await wait_until(lambda: placed_nodes_are(1), what="back on 1 node")
    assert len(await placed_nodes()) == 1
