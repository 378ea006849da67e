"""Redis Sentinel (issue 15): the services find the Redis primary through sentinels
and follow a failover; under steady posting, nothing acknowledged is lost.

Redis here is a primary, a replica and three sentinels (quorum 2, the primary judged
down after 1 s), started for this module. The primary is killed with SIGKILL while a
poster posts every 20 ms, retrying a failed post with the same Idempotency-Key as a
client would; a viewer follows the video. The sentinels promote the replica; the
services' connections to the dead primary fail, and new ones ask the sentinels again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from livecomments.cli.cluster import Backends, Cluster
from livecomments.cli.launcher import free_port, start_redis, start_sentinel, stop_all
from tests.conftest import NO_LIMITS, make_cluster
from tests.support import Api, Viewer, unique, wait_until

MASTER = "lc-primary"


class Group:
    def __init__(self, root: Path) -> None:
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary = start_redis(root, self.primary_port, name="redis-primary")
        self.replica = start_redis(
            root, self.replica_port, name="redis-replica", replica_of=self.primary_port
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = [
            start_sentinel(root, port, MASTER, self.primary_port, name=f"sentinel-{n}")
            for n, port in enumerate(self.sentinel_ports, 1)
        ]

    async def primary_now(self) -> int:
        """The primary's port, as the first sentinel says."""
        sentinel = Redis(port=self.sentinel_ports[0])
        try:
            _host, port = await sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
            )
            return int(port)
        finally:
            await sentinel.aclose()

    def stop(self) -> None:
        stop_all([*self.sentinels, self.primary, self.replica])


@pytest.fixture(scope="module")
def group(run_root: Path) -> Iterator[Group]:
    started = Group(run_root / "sentinel-group")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cluster(run_root: Path, backends: Backends, group: Group) -> Iterator[Cluster]:
    """One of each process, on the sentinel group's Redis (the URL gives only the db)."""
    started = make_cluster(
        run_root,
        backends,
        "redis_failover",
        extra_env={
            **NO_LIMITS,
            "LIVECOMMENTS_REDIS_URL": "redis://sentinel-named/0",
            "LIVECOMMENTS_REDIS_SENTINELS": ",".join(
                f"127.0.0.1:{p}" for p in group.sentinel_ports
            ),
            "LIVECOMMENTS_REDIS_SENTINEL_MASTER": MASTER,
        },
    )
    started.start(dispatchers=1, rtms=1, comment_services=1)
    yield started
    started.stop()


async def test_a_sentinel_failover_under_steady_posting_loses_nothing_acknowledged(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, group: Group
) -> None:
    video = unique("failover")
    token = await api.register(unique("steady"))
    assert await group.primary_now() == group.primary_port
    await api.post(video, "before the failover", token)
    viewer = await Viewer(f"{api.base}/api/videos/{video}/stream", session).connect()
    acked: list[str] = []
    outcomes: dict[str, int] = {}
    stop = asyncio.Event()

    async def post_until_acknowledged(n: int) -> None:
        key = str(uuid.uuid4())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body, _ = await api.request(
                "POST",
                f"/api/videos/{video}/comments",
                json={"text": f"steady {n}"},
                token=token,
                headers={"Idempotency-Key": key},
            )
            outcomes[str(status)] = outcomes.get(str(status), 0) + 1
            if status == 201:
                acked.append(body["id"])
                return
            assert status in (409, 503), (status, body)  # in flight, or Redis away: retry
            await asyncio.sleep(0.2)
        raise AssertionError(f"post {n} never went through")

    async def poster() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await post_until_acknowledged(n)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(poster())
    try:
        await wait_until(lambda: len(acked) >= 20, what="steady posting before the kill")
        before = len(acked)
        group.primary.kill()  # SIGKILL
        await wait_until(_promoted(group), timeout=30, what="the sentinels promoted the replica")
        # Posting goes on through the new primary.
        await wait_until(lambda: len(acked) >= before + 40, timeout=60, what="posting again")
    finally:
        stop.set()
        await task
    try:
        # Every acknowledged comment is stored once and reached the viewer once.
        history_texts = await all_comments(api, video)
        history = [comment_id for comment_id, _ in history_texts]
        assert sorted(set(acked)) == sorted(acked)
        assert set(acked) <= set(history), set(acked) - set(history)
        # No retry made a second comment (each text once).
        texts = [text for _, text in history_texts]
        assert len(texts) == len(set(texts)), "a retried post was stored twice"
        await wait_until(
            lambda: set(acked) <= {e.json()["id"] for e in viewer.of("comment")},
            timeout=30,
            what="the viewer got every acknowledged comment",
        )
        got = [e.json()["id"] for e in viewer.of("comment")]
        assert len(got) == len(set(got)), "a comment reached the viewer twice"
        status, health, _ = await api.request("GET", "/readyz")
        assert status == 200, health
    finally:
        await viewer.close()
    print(f"failover: {len(acked)} acknowledged, answers {outcomes}")


def _promoted(group: Group) -> Any:
    async def check() -> bool:
        try:
            return await group.primary_now() == group.replica_port
        except OSError:
            return False

    return check


async def all_comments(api: Api, video: str) -> list[tuple[str, str]]:
    """(id, text) of every comment of ``video``, oldest first."""
    ids: list[tuple[str, str]] = []
    after = 0
    while True:
        page = await api.page(video, after=after, limit=100)
        ids += [(item["id"], item["text"]) for item in page["items"]]
        if page.get("next_after") is None:
            return ids
        after = page["next_after"]
