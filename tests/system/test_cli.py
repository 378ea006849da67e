"""The operator commands, run as an operator runs them, against the real cluster's ZooKeeper.

Every assertion reads what the CLI itself prints (``--json``, or the table), and
every refusal must leave ZooKeeper as it was.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from livecomments.cli.cluster import Cluster
from livecomments.cli.ops import session
from livecomments.coord.intents import KEEP_REBALANCE_REQUESTS, Intents
from livecomments.coord.placement import rendezvous
from livecomments.kernel import settings as cfg
from tests.support import Viewer, unique

# One node per video, so a viewer can sit on a node its video is not placed on;
# load reports twice a second, so connections show up in `nodes` quickly.
CLUSTER_ENV = {"LIVECOMMENTS_MIN_SPREAD": "1", "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.5"}
RTMS = ["rtms-1", "rtms-2"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return orjson.loads(self.out)


async def run(cluster: Cluster, *args: str, env: dict[str, str] | None = None) -> Result:
    """``livecomments ARGS`` in a subprocess, stdin not a terminal (as in a script)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livecomments", *args,
        env={**os.environ, **cluster.base_env(), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def cli(cluster: Cluster, *args: str) -> Any:
    """``livecomments ARGS --json``, which must succeed: its JSON document."""
    return (await run(cluster, *args, "--json")).json()


async def refused(cluster: Cluster, *args: str, says: str) -> None:
    result = await run(cluster, *args, "--json")
    assert result.code != 0, result.out
    assert result.out == ""  # scripts get no half answer
    assert says in result.err, result.err


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Retry ``check`` (which asserts) until it passes; load reports take a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def url(cluster: Cluster, node: str) -> str:
    return cluster.services[node].url


async def watch_on(
    cluster: Cluster, session: aiohttp.ClientSession, node: str, video: str
) -> Viewer:
    """A viewer on ``node`` whatever the placement (``redirected`` stops the 307)."""
    return await Viewer(f"{url(cluster, node)}/stream/{video}?redirected=1", session).connect()


def video_row(doc: dict[str, Any], video: str) -> dict[str, Any] | None:
    return next((row for row in doc["videos"] if row["video"] == video), None)


async def test_nodes_lists_rtms_nodes_with_connections_and_dispatchers(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    video = unique("nodes")
    viewer = await watch_on(cluster, session, "rtms-2", video)
    try:

        async def reported() -> dict[str, Any]:
            doc: dict[str, Any] = await cli(cluster, "nodes")
            rows = {row["node"]: row for row in doc["rtms"]}
            assert rows["rtms-2"]["connections"] >= 1
            # One viewer does not make a video busy: the node's record does not list
            # it (`videos` reads each video's exact count from Redis).
            assert video not in rows["rtms-2"]["viewers_by_video"]
            return doc

        doc = await eventually(reported)
        rows = {row["node"]: row for row in doc["rtms"]}
        assert sorted(rows) == RTMS
        for node, row in rows.items():
            assert row["live"] and not row["draining"] and not row["draining_reported"]
            assert row["sse_url"] == url(cluster, node)
        assert video in rows["rtms-2"]["hosted"] and video not in rows["rtms-1"]["hosted"]
        assert [d["id"] for d in doc["dispatchers"]] == ["dispatcher-1", "dispatcher-2"]
        assert all(d["grpc"] for d in doc["dispatchers"])
        assert len(doc["comment_workers"]) == 1

        table = await run(cluster, "nodes")
        assert table.code == 0, table.err
        for name in (*RTMS, "dispatcher-1", "dispatcher-2", url(cluster, "rtms-1")):
            assert name in table.out
    finally:
        await viewer.close()


async def test_videos_shows_hosts_placement_and_viewers(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    video = unique("videos")
    viewers = [
        await watch_on(cluster, session, node, video) for node in ("rtms-1", "rtms-2", "rtms-2")
    ]
    try:

        async def counted() -> dict[str, Any]:
            row = video_row(await cli(cluster, "videos"), video)
            assert row is not None and row["viewers"] == 3
            return row

        row = await eventually(counted)
        assert row["hosted"] == RTMS
        assert row["viewers_by_node"] == {"rtms-1": 1, "rtms-2": 2}
        assert row["placed"] == rendezvous(video, RTMS)  # what the services compute
        assert row["pinned"] is None

        table = await run(cluster, "videos")
        assert table.code == 0 and video in table.out, table.err
    finally:
        for viewer in viewers:
            await viewer.close()


async def test_pin_and_unpin_write_and_remove_the_pin_and_refuse_the_unknown(
    cluster: Cluster,
) -> None:
    video = unique("pin")
    pinned = await cli(cluster, "pin", video, "rtms-2", "rtms-1", "rtms-2")
    assert pinned["nodes"] == ["rtms-2", "rtms-1"] and pinned["previous"] is None
    assert "@" in pinned["by"] and pinned["at"]
    row = video_row(await cli(cluster, "videos"), video)
    assert row is not None and row["pinned"] == ["rtms-2", "rtms-1"]
    assert row["placed"] == ["rtms-2", "rtms-1"] and row["hosted"] == []

    await refused(cluster, "pin", video, "rtms-1", "rtms-9", says="unknown RTMS node 'rtms-9'")
    await refused(cluster, "pin", "no/such", "rtms-1", says="not a video id")
    await refused(cluster, "pin", unique("other"), "../x", says="unknown RTMS node")
    after = await cli(cluster, "videos")
    row = video_row(after, video)
    assert row is not None and row["pinned"] == ["rtms-2", "rtms-1"]  # unchanged
    assert not any(r["video"].startswith("other_") for r in after["videos"])

    assert (await cli(cluster, "pin", video, "rtms-1"))["previous"] == ["rtms-2", "rtms-1"]
    assert await cli(cluster, "unpin", video) == {"video": video, "unpinned": ["rtms-1"]}
    assert video_row(await cli(cluster, "videos"), video) is None  # nobody hosts it either
    await refused(cluster, "unpin", video, says="is not pinned")
    table = await run(cluster, "pin", video, "rtms-1")
    assert table.code == 0 and f"pinned {video} to rtms-1" in table.out, table.err
    assert "unpinned" in (await run(cluster, "unpin", video)).out


async def test_move_pins_to_the_node_and_its_viewers_are_sent_there(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    video = unique("move")
    viewer = await watch_on(cluster, session, "rtms-1", video)
    try:

        async def hosted() -> None:
            row = video_row(await cli(cluster, "videos"), video)
            assert row is not None and row["viewers_by_node"] == {"rtms-1": 1}

        await eventually(hosted)
        await refused(cluster, "move", video, "--to", "rtms-9", says="unknown RTMS node")
        await refused(cluster, "move", unique("nobody"), "--to", "rtms-2", says="unknown video")
        row = video_row(await cli(cluster, "videos"), video)
        assert row is not None and row["pinned"] is None  # the refusals wrote nothing

        moved = await cli(cluster, "move", video, "--to", "rtms-2")
        assert moved["nodes"] == ["rtms-2"] and moved["moving"] == {"rtms-1": 1}
        (event,) = await viewer.wait_for(1, "moved")
        assert event.json()["url"].startswith(f"{url(cluster, 'rtms-2')}/stream/{video}?")
        row = video_row(await cli(cluster, "videos"), video)
        assert row is not None and row["pinned"] == ["rtms-2"] and row["placed"] == ["rtms-2"]
        # A pinned video counts as known even once nobody watches it.
        assert (await cli(cluster, "move", video, "--to", "rtms-1"))["previous"] == ["rtms-2"]
        await cli(cluster, "unpin", video)
    finally:
        await viewer.close()


async def test_drain_and_undrain(cluster: Cluster, session: aiohttp.ClientSession) -> None:
    video = unique("drain")
    viewer = await watch_on(cluster, session, "rtms-2", video)
    await refused(cluster, "drain", "rtms-9", says="unknown RTMS node 'rtms-9'")
    await refused(cluster, "undrain", "rtms-2", says="is not drained")
    try:
        # Seen by the load report first, so --wait has something to wait for.
        await eventually(lambda: _connections_at_least(cluster, "rtms-2", 1))
        result = await run(cluster, "drain", "rtms-2", "--wait", "10", "--json")
        doc = result.json()
        assert doc["node"] == "rtms-2" and doc["already"] is False and "@" in doc["by"]
        assert doc["connections_left"] == 0
        assert "rtms-2: 0 connection(s) left" in result.err  # progress goes to stderr
        (event,) = await viewer.wait_for(1, "moved")
        assert event.json()["url"].startswith(url(cluster, "rtms-1"))

        again = await cli(cluster, "drain", "rtms-2")
        assert again["already"] is True and again["at"] == doc["at"]

        async def reported() -> None:
            rows = {r["node"]: r for r in (await cli(cluster, "nodes"))["rtms"]}
            assert rows["rtms-2"]["draining"] and rows["rtms-2"]["draining_reported"]
            assert not rows["rtms-1"]["draining"]

        await eventually(reported)
        # A drained node cannot be pinned to: the pin would silently not apply.
        await refused(cluster, "pin", video, "rtms-2", says="is draining")
        undrained = await cli(cluster, "undrain", "rtms-2")
        assert undrained == {"node": "rtms-2", "drained": {"by": doc["by"], "at": doc["at"]}}
    finally:
        await run(cluster, "undrain", "rtms-2")
        await viewer.close()
    rows = {r["node"]: r for r in (await cli(cluster, "nodes"))["rtms"]}
    assert not rows["rtms-2"]["draining"] and "rtms-9" not in rows


async def _connections_at_least(cluster: Cluster, node: str, count: int) -> None:
    rows = {r["node"]: r for r in (await cli(cluster, "nodes"))["rtms"]}
    assert rows[node]["connections"] >= count


async def test_rebalance_shows_the_plan_and_applies_it_only_when_told(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    video = unique("rebalance")
    (home,) = rendezvous(video, RTMS)
    stray = next(n for n in RTMS if n != home)
    viewer = await watch_on(cluster, session, stray, video)
    try:

        async def planned() -> dict[str, Any]:
            doc: dict[str, Any] = await cli(cluster, "rebalance", "--dry-run")
            assert {"video": video, "from": stray, "to": [home], "viewers": 1} in doc["plan"]
            return doc

        doc = await eventually(planned)
        assert doc["applied"] is False and doc["request"] is None
        before = (await cli(cluster, "status"))["rebalance_requests"]

        # Not a terminal, no --yes: the plan is shown, nothing is written.
        asked = await run(cluster, "rebalance")
        assert asked.code != 0 and "--yes" in asked.err
        assert video in asked.out and stray in asked.out  # the plan table
        assert (await cli(cluster, "status"))["rebalance_requests"] == before
        assert viewer.of("moved") == []

        applied = await cli(cluster, "rebalance", "--yes")
        assert applied["applied"] is True and applied["request"]["request"].startswith("req-")
        assert (await cli(cluster, "status"))["rebalance_requests"] == before + 1
        (event,) = await viewer.wait_for(1, "moved")
        assert event.json()["url"].startswith(f"{url(cluster, home)}/stream/{video}?")
        await refused(cluster, "rebalance", "--yes", "--dry-run", says="contradict")
    finally:
        await viewer.close()


async def test_rebalance_keeps_only_the_newest_requests(cluster: Cluster) -> None:
    settings = cfg.load(cfg.BackendSettings, environ=cluster.base_env())

    async def request_many(intents: Intents) -> tuple[list[str], list[str]]:
        made = [
            (await intents.request_rebalance([])).request
            for _ in range(KEEP_REBALANCE_REQUESTS + 3)
        ]
        return made, (await intents.snapshot()).rebalances

    made, kept = await session(settings, request_many)
    assert kept == made[-KEEP_REBALANCE_REQUESTS:]


async def test_status_summarises_the_cluster(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    video = unique("status")
    # On a node the video is placed on (the stream's 307 leads there): a rebalance
    # request of an earlier test that a node acts on late must not move it away.
    viewer = await Viewer(f"{url(cluster, 'rtms-1')}/stream/{video}", session).connect()
    try:
        pinned = unique("pinned")
        await cli(cluster, "pin", pinned, "rtms-1")

        async def summary() -> dict[str, Any]:
            doc: dict[str, Any] = await cli(cluster, "status")
            assert doc["viewers"] >= 1 and doc["hosted_videos"] >= 1
            return doc

        doc = await eventually(summary)
        zk = doc["zookeeper"]
        assert zk["reachable"] is True and zk["error"] is None
        # The tests run on a 3-member ensemble; srvr is allowed there.
        assert zk["mode"] in ("leader", "follower") and zk["version"]
        assert zk["root"] == f"/{cluster.namespace}"
        assert (doc["rtms_nodes"], doc["dispatchers"], doc["comment_workers"]) == (2, 2, 1)
        assert doc["pins"] >= 1 and doc["drains"] == 0
        table = await run(cluster, "status")
        # (each run may talk to another member of the ensemble)
        assert table.code == 0 and ("leader" in table.out or "follower" in table.out), table.err
        await cli(cluster, "unpin", pinned)
    finally:
        await viewer.close()


async def test_every_command_fails_cleanly_without_zookeeper(cluster: Cluster) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    env = {"LIVECOMMENTS_ZK_HOSTS": f"127.0.0.1:{port}", "LIVECOMMENTS_ZK_TIMEOUT": "1"}
    started = time.monotonic()
    results = await asyncio.gather(
        run(cluster, "nodes", env=env),
        run(cluster, "pin", "v", "rtms-1", env=env),
        run(cluster, "rebalance", "--yes", env=env),
        run(cluster, "status", "--json", env=env),
    )
    assert time.monotonic() - started < 10
    for result in results:
        assert result.code == 1 and "cannot reach ZooKeeper" in result.err, result
        assert "Traceback" not in result.err
    status = orjson.loads(results[-1].out)  # status still answers, with reachable: false
    assert status["zookeeper"]["reachable"] is False and status["rtms_nodes"] is None
