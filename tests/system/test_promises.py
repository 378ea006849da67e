"""Promises of docs/architecture.md and the README that no other test holds the system to.

Each test switches on one mechanism alone where another would hide it: the
module's nodes never reconcile their heads with Redis (the once-a-second safety
net that fills any video left behind), and the seqs a test takes itself have no
outbox entry, so what arrives arrives by the mechanism under test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.errors import Conflict
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.store import Store, utcnow
from tests.support import Api, Viewer, cli, staff, unique

GAP_DEADLINE = 1.5
CLUSTER_ENV = {
    "LIVECOMMENTS_RECONCILE_INTERVAL": "3600",
    "LIVECOMMENTS_GAP_DEADLINE": str(GAP_DEADLINE),
    "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.5",
    # A node stopped for a few seconds keeps its session (and its znode).
    "LIVECOMMENTS_ZK_SESSION_TIMEOUT": "20",
}


@pytest.fixture
async def writer(cluster: Cluster) -> AsyncIterator[tuple[Sequencer, Store, Redis]]:
    """The module's Redis and store, to do what a writer does by hand."""
    redis = Redis.from_url(cluster.backends.redis_url)
    store = Store(cluster.backends.mongo_uri, cluster.namespace)
    await store.start(create_indexes=False)
    try:
        yield Sequencer(redis, f"{cluster.namespace}:", store), store, redis
    finally:
        await store.stop()
        await redis.aclose()


def stream(cluster: Cluster, node: str, video: str) -> str:
    return f"{cluster.services[node].url}/stream/{video}"


async def node_health(session: aiohttp.ClientSession, cluster: Cluster, node: str) -> Any:
    async with session.get(f"{cluster.services[node].url}/healthz") as response:
        return await response.json()


def comment_doc(like: dict[str, Any], video: str, seq: int, epoch: int, text: str) -> Any:
    """A comment as the writer stores it, for the author of ``like``."""
    return {
        "_id": int(like["id"]) + seq, "video_id": video, "seq": seq, "epoch": epoch,
        "user_id": int(like["user_id"]), "author": like["author"], "text": text,
        "parent_id": None, "status": "visible", "created_at": utcnow(), "created_at_ms": 0,
        "edited_at": None, "rev": 0, "reactions": {},
    }  # fmt: skip


# -- delivery ---------------------------------------------------------------------


async def test_a_new_epoch_resets_the_viewers(
    cluster: Cluster,
    api: Api,
    session: aiohttp.ClientSession,
    writer: tuple[Sequencer, Store, Redis],
) -> None:
    """Redis loses a video's counter: the next writer re-seeds it from the store under
    a new epoch, and every viewer is told to reload (``reset``) before it goes on;
    one resuming with an id of the old epoch gets ``reset`` at once."""
    sequencer, _, redis = writer
    video = unique("epoch")
    token = await api.register(unique("poster"))
    viewer = await Viewer(stream(cluster, "rtms-1", video), session).connect()
    resumer: Viewer | None = None
    try:
        before = [await api.post(video, f"old {n}", token) for n in range(2)]
        old = await viewer.wait_for(2)
        old_epoch = int(str(old[-1].id).split("-")[0])
        await redis.delete(*sequencer.keys(video))  # the counter is gone
        after = await api.post(video, "new epoch", token)
        (reset,) = await viewer.wait_for(1, "reset")
        new_epoch = int(reset.json()["epoch"])
        assert new_epoch != old_epoch
        got = await viewer.wait_for(3)
        assert [e.json()["id"] for e in got] == [c["id"] for c in (*before, after)]
        assert got[-1].id == f"{new_epoch}-3"  # re-seeded from the store's highest seq
        assert viewer.events.index(reset) < viewer.events.index(got[-1])
        resumer = await Viewer(
            stream(cluster, "rtms-1", video), session, headers={"Last-Event-ID": str(old[-1].id)}
        ).connect()
        (told,) = await resumer.wait_for(1, "reset")
        assert told.json()["epoch"] == new_epoch and resumer.of("comment") == []
    finally:
        await viewer.close()
        if resumer is not None:
            await resumer.close()


async def test_a_seq_nobody_stores_is_fenced_after_the_gap_deadline(
    cluster: Cluster,
    api: Api,
    session: aiohttp.ClientSession,
    writer: tuple[Sequencer, Store, Redis],
) -> None:
    """A writer took a seq and died before its insert: the node waits for it until the
    gap deadline, then fences it (a void in the store) and the stream moves on. A
    writer that comes back late loses to the void and can never acknowledge it."""
    sequencer, store, _ = writer
    video = unique("gap")
    token = await api.register(unique("poster"))
    viewer = await Viewer(stream(cluster, "rtms-1", video), session).connect()
    try:
        first = await api.post(video, "before the hole", token)
        await viewer.wait_for(1)
        fenced_before = (await node_health(session, cluster, "rtms-1"))["gap_fenced"]
        epoch, hole = await sequencer.next(video)  # ... and then nothing
        posted_at = time.time()
        last = await api.post(video, "after the hole", token)
        got = await viewer.wait_for(2, timeout=30)
        assert [e.json()["id"] for e in got] == [first["id"], last["id"]]
        waited = got[-1].received_at - posted_at
        print(f"\nthe comment after the hole arrived {waited:.2f} s after it was posted")
        assert waited >= GAP_DEADLINE * 0.9, waited  # not skipped before the deadline
        (void,) = await store.comments_at(video, [hole])
        assert void.get("void") is True
        assert (await node_health(session, cluster, "rtms-1"))["gap_fenced"] == fenced_before + 1
        with pytest.raises(Conflict) as late:
            await store.insert_comment(comment_doc(first, video, hole, epoch, "too late"))
        assert late.value.code == "seq_conflict"
    finally:
        await viewer.close()


async def test_a_comment_sequenced_in_the_join_window_reaches_the_new_viewer(
    cluster: Cluster,
    api: Api,
    session: aiohttp.ClientSession,
    writer: tuple[Sequencer, Store, Redis],
) -> None:
    """The join window: a node read the video's head and registered ``/hosted``, but
    the dispatchers' watch has not caught up, so a comment sequenced now is sent to
    no node. Such a comment (stored, dispatched nowhere, no later comment to show
    the gap) reaches the new viewer by the node's second look at the head."""
    sequencer, store, _ = writer
    video = unique("join")
    token = await api.register(unique("poster"))
    first = await api.post(video, "before anyone watches", token)
    viewer = await Viewer(stream(cluster, "rtms-2", video), session).connect()
    try:
        epoch, seq = await sequencer.next(video)  # right after the node read the head
        await store.insert_comment(comment_doc(first, video, seq, epoch, "in the window"))
        (got,) = await viewer.wait_for(1, timeout=15)
        assert got.json()["text"] == "in the window" and got.id == f"{epoch}-{seq}"
    finally:
        await viewer.close()


async def test_a_node_shutting_down_sends_its_viewers_elsewhere(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """SIGTERM: the node sends each viewer ``moved`` with another node's URL and the
    last event id it sent; following it, the viewer misses nothing and sees nothing
    twice."""
    video = unique("shutdown")
    token = await api.register(unique("poster"))
    viewer = await Viewer(stream(cluster, "rtms-1", video), session).connect()
    follower: Viewer | None = None
    try:
        first = await api.post(video, "before the shutdown", token)
        (seen,) = await viewer.wait_for(1)
        proc = cluster.services["rtms-1"].proc
        await asyncio.to_thread(proc.stop)  # SIGTERM, and wait for it to exit
        (moved,) = await viewer.wait_for(1, "moved")
        body = moved.json()
        assert body["reason"] == "shutdown" and body["last_event_id"] == seen.id
        assert body["url"].startswith(stream(cluster, "rtms-2", video) + "?")
        follower = await Viewer(body["url"], session).connect()
        assert follower.status == 200, (follower.status, follower.error)
        second = await api.post(video, "after the shutdown", token)
        got = await follower.wait_for(1)
        assert [e.json()["id"] for e in got] == [second["id"]] and first["id"] != second["id"]
        await asyncio.sleep(0.3)
        assert len(follower.of("comment")) == 1
    finally:
        await viewer.close()
        if follower is not None:
            await follower.close()
        await asyncio.to_thread(cluster.restart, "rtms-1")


# -- operators ----------------------------------------------------------------------


async def test_drain_wait_fails_when_the_node_keeps_its_viewers(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    """``drain --wait`` on a node that does not act on the drain (here: stopped)
    exits 1, says how many connections are left, and the node stays drained."""
    video = unique("stuck")
    viewer = await Viewer(f"{stream(cluster, 'rtms-2', video)}?redirected=1", session).connect()
    proc = cluster.services["rtms-2"].proc
    try:
        for _ in range(100):  # until its load report counts the viewer
            _, nodes, _ = await cli(cluster, "nodes")
            if {r["node"]: r for r in nodes["rtms"]}["rtms-2"]["connections"] >= 1:
                break
            await asyncio.sleep(0.2)
        os.kill(proc.pid, signal.SIGSTOP)
        code, doc, err = await cli(cluster, "drain", "rtms-2", "--wait", "1", check=False)
        assert code == 1, (code, doc, err)
        assert "rtms-2 still reports 1 connection(s) after 1s (it stays drained)" in err, err
        assert doc is not None and doc["connections_left"] == 1 and doc["node"] == "rtms-2"
        _, nodes, _ = await cli(cluster, "nodes")
        assert {r["node"]: r for r in nodes["rtms"]}["rtms-2"]["draining"] is True
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await cli(cluster, "undrain", "rtms-2", check=False)
        await viewer.close()


async def test_users_set_role_gives_and_takes_a_role(cluster: Cluster, api: Api) -> None:
    """``livecomments users set-role NAME ROLE``: the role counts at the user's next
    request (roles are read from the store), and an unknown user is an error."""
    name = unique("promoted")
    token = await api.register(name)
    video = unique("roles")

    async def set_slow_mode() -> int:
        status, _, _ = await api.request(
            "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 1}, token=token
        )
        return status

    async def set_role(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "livecomments", "users", "set-role", *args,
            env={**os.environ, **cluster.base_env()},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    assert await set_slow_mode() == 403
    code, out, err = await set_role(name, "moderator")
    assert code == 0 and f"{name} (id " in out and "is now moderator" in out, (out, err)
    assert await set_slow_mode() == 200  # the same token: the role is read at each request
    code, out, err = await set_role(name.upper(), "viewer")  # usernames match case-blind
    assert code == 0 and "is now viewer" in out, (out, err)
    assert await set_slow_mode() == 403
    code, out, err = await set_role(unique("nobody"), "moderator")
    assert code == 1 and "no user named" in err and "(user_not_found)" in err, (out, err)
    code, out, err = await set_role(name, "overlord")
    assert code == 2 and "overlord" in err, (out, err)  # not a role: a usage error


# -- moderation ---------------------------------------------------------------------


async def test_who_may_ban_whom(cluster: Cluster, api: Api) -> None:
    """Moderators ban viewers only; admins ban viewers and moderators, not admins;
    nobody bans themselves; a moderator cannot lift an admin's ban."""
    mod, mod_id = await staff(api, cluster, "moderator")
    _, other_mod_id = await staff(api, cluster, "moderator")
    admin, admin_id = await staff(api, cluster, "admin")
    _, other_admin_id = await staff(api, cluster, "admin")
    viewer = await api.register(unique("viewer"))
    viewer_id = await api.user_id(viewer)
    target = await api.register(unique("target"))
    target_id = await api.user_id(target)

    async def ban(who: str, user_id: str, method: str = "PUT") -> tuple[int, str | None]:
        status, body, _ = await api.request(
            method, f"/api/bans/{user_id}", json={} if method == "PUT" else None, token=who
        )
        return status, body["error"]["code"] if status >= 400 else None

    assert await ban(viewer, target_id) == (403, "forbidden")  # viewers do not ban
    assert await ban(mod, mod_id) == (400, "own_account")
    assert await ban(mod, other_mod_id) == (403, "forbidden")
    assert await ban(mod, admin_id) == (403, "forbidden")
    assert await ban(admin, admin_id) == (400, "own_account")
    assert await ban(admin, other_admin_id) == (403, "forbidden")
    assert await ban(mod, viewer_id) == (200, None)
    assert await ban(admin, other_mod_id) == (200, None)
    # An admin's ban is the admin's: a moderator can neither lift nor replace it.
    assert await ban(admin, target_id) == (200, None)
    assert await ban(mod, target_id, "DELETE") == (403, "ban_set_by_admin")
    assert await ban(mod, target_id) == (403, "ban_set_by_admin")
    assert await ban(admin, target_id, "DELETE") == (204, None)
    assert await ban(mod, viewer_id, "DELETE") == (204, None)
    assert await ban(admin, other_mod_id, "DELETE") == (204, None)
