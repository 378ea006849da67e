"""Moderation as users see it: live changes, held comments, reports, bans, slow mode, roles."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.redis.keys import Keys
from tests.support import Api, Viewer, on_own_session, staff, unique

CLUSTER_ENV = {"LIVECOMMENTS_FLAG_THRESHOLD": "2"}

HELD_TEXT = "great stream, more at https://example.com/watch"  # one link: held for review
REFUSED_TEXT = "buy followers now at http://spam.example and http://x.example"


async def stored(cluster: Cluster, collection: str, query: dict[str, Any]) -> list[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        return await client[cluster.namespace][collection].find(query).to_list(None)
    finally:
        await client.close()


def stream_url(api: Api, video: str) -> str:
    return f"{api.base}/api/videos/{video}/stream"


@pytest.fixture(scope="module")
async def mod(cluster: Cluster) -> tuple[str, str]:
    """One moderator for the module (no test changes its role, bans or times it out)."""
    return await on_own_session(cluster, lambda api: staff(api, cluster, "moderator"))


async def test_moderator_edit_and_delete_reach_viewers_live_and_history(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, mod: tuple[str, str]
) -> None:
    video = unique("mod")
    author = await api.register(unique("author"))
    viewer = await Viewer(stream_url(api, video), session).connect()
    try:
        first = await api.post(video, "original words", author)
        second = await api.post(video, "second comment", author)
        await viewer.wait_for(2)
        # A viewer cannot edit, not even their own comment.
        status, body, _ = await api.request(
            "PATCH", f"/api/videos/{video}/comments/{first['id']}",
            json={"text": "sneaky"}, token=author,
        )  # fmt: skip
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, edited, _ = await api.request(
            "PATCH", f"/api/videos/{video}/comments/{first['id']}",
            json={"text": "moderated words"}, token=mod[0],
        )  # fmt: skip
        assert status == 200 and edited["text"] == "moderated words" and edited["rev"] == 1
        (update,) = await viewer.wait_for(1, "comment.updated")
        body = update.json()
        assert (body["id"], body["text"], body["rev"]) == (first["id"], "moderated words", 1)
        assert update.id == f"{first['epoch']}-{second['seq'] + 1}"  # a change has its own seq
        # ... and names the comment's own (a comment frame's are in its id)
        assert (body["seq"], body["epoch"]) == (first["seq"], first["epoch"])

        status, deleted, _ = await api.request(
            "DELETE", f"/api/videos/{video}/comments/{second['id']}", token=mod[0]
        )
        assert status == 200 and deleted["status"] == "deleted" and deleted["text"] is None
        (gone,) = await viewer.wait_for(1, "comment.deleted")
        assert gone.json()["id"] == second["id"] and gone.json()["status"] == "deleted"
        assert "text" not in gone.json()  # deleted: a frame leaves out what is null

        page = await api.page(video)
        by_id = {item["id"]: item for item in page["items"]}
        assert by_id[first["id"]]["text"] == "moderated words"
        assert by_id[first["id"]]["edited_at"] is not None
        assert by_id[second["id"]]["status"] == "deleted"
        assert by_id[second["id"]]["text"] is None
        assert len(page["items"]) == 2  # change markers are not history items
        (doc,) = await stored(cluster, "comments", {"_id": int(second["id"])})
        assert "text" not in doc  # a tombstone keeps no text
    finally:
        await viewer.close()


async def test_authors_delete_their_own_and_nobody_elses(
    api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("own")
    alice, bob = await api.register(unique("alice")), await api.register(unique("bob"))
    viewer = await Viewer(stream_url(api, video), session).connect()
    try:
        mine = await api.post(video, "mine", alice)
        status, body, _ = await api.request(
            "DELETE", f"/api/videos/{video}/comments/{mine['id']}", token=bob
        )
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, _, _ = await api.request(
            "DELETE", f"/api/videos/{video}/comments/{mine['id']}", token=alice
        )
        assert status == 200
        await viewer.wait_for(1, "comment.deleted")
        # Deleting again is harmless and announces nothing new.
        status, body, _ = await api.request(
            "DELETE", f"/api/videos/{video}/comments/{mine['id']}", token=alice
        )
        assert status == 200 and body["status"] == "deleted"
        status, body, _ = await api.request(
            "DELETE", f"/api/videos/{video}/comments/{mine['id']}", token=None
        )
        assert status == 401
        await asyncio.sleep(0.5)
        assert len(viewer.of("comment.deleted")) == 1
    finally:
        await viewer.close()


async def test_resume_never_replays_deleted_text(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, mod: tuple[str, str]
) -> None:
    """A viewer away during a deletion gets it on resume, from the ring or from the store."""
    video = unique("resume")
    author = await api.register(unique("author"))
    rtms = cluster.services["rtms-1"].url
    early = await Viewer(f"{rtms}/stream/{video}", session).connect()
    try:
        await api.post(video, "before", author)
        await early.wait_for(1)
        resume_from = early.last_id
        assert resume_from is not None
        secret = await api.post(video, "regrettable words", author)
        await early.wait_for(2)
    finally:
        await early.close()
    status, _, _ = await api.request(
        "DELETE", f"/api/videos/{video}/comments/{secret['id']}", token=mod[0]
    )
    assert status == 200
    after = await api.post(video, "after", author)
    for node in ("rtms-1", "rtms-2"):  # rtms-1 replays from its ring, rtms-2 from the store
        url = f"{cluster.services[node].url}/stream/{video}"
        back = await Viewer(url, session, headers={"Last-Event-ID": resume_from}).connect()
        try:
            got = await back.wait_for(1, "comment.deleted")
            assert got[0].json()["id"] == secret["id"]
            await back.wait_for(1, "comment")
            assert back.of("comment")[-1].json()["id"] == after["id"]
            assert b"regrettable" not in back.raw, node
        finally:
            await back.close()


async def test_held_comment_waits_for_a_moderator(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, mod: tuple[str, str]
) -> None:
    video = unique("held")
    author = await api.register(unique("author"))
    viewer = await Viewer(stream_url(api, video), session).connect()
    try:
        status, held, _ = await api.request(
            "POST", f"/api/videos/{video}/comments", json={"text": HELD_TEXT}, token=author
        )
        assert status == 202 and held["status"] == "held" and held["seq"] is None
        status, denied_one, _ = await api.request(
            "POST", f"/api/videos/{video}/comments",
            json={"text": "also see www.example.org/x"}, token=author,
        )  # fmt: skip
        assert status == 202
        await asyncio.sleep(0.5)
        assert viewer.of("comment") == [] and (await api.page(video))["items"] == []
        # Only moderators see the queue.
        status, _, _ = await api.request(
            "GET", f"/api/moderation/held?video_id={video}", token=author
        )
        assert status == 403
        status, queue, _ = await api.request(
            "GET", f"/api/moderation/held?video_id={video}", token=mod[0]
        )
        assert status == 200
        assert [i["id"] for i in queue["items"]] == [denied_one["id"], held["id"]]
        assert queue["items"][1]["score"] >= 0.5 and "link" in queue["items"][1]["reasons"]

        status, approved, _ = await api.request(
            "POST", f"/api/moderation/held/{held['id']}/approve", token=mod[0]
        )
        assert status == 200 and approved["status"] == "visible" and approved["seq"] == 1
        (event,) = await viewer.wait_for(1)
        assert event.json()["id"] == held["id"] and event.json()["text"] == HELD_TEXT
        status, _, _ = await api.request(
            "POST", f"/api/moderation/held/{denied_one['id']}/deny", token=mod[0]
        )
        assert status == 200
        status, body, _ = await api.request(
            "POST", f"/api/moderation/held/{denied_one['id']}/approve", token=mod[0]
        )
        assert (status, body["error"]["code"]) == (409, "already_settled")
        status, queue, _ = await api.request(
            "GET", f"/api/moderation/held?video_id={video}", token=mod[0]
        )
        assert queue["items"] == []
        await asyncio.sleep(0.5)
        assert [e.json()["id"] for e in viewer.of("comment")] == [held["id"]]
        assert [i["id"] for i in (await api.page(video))["items"]] == [held["id"]]
    finally:
        await viewer.close()


async def test_filter_refuses_spam_and_stores_nothing(cluster: Cluster, api: Api) -> None:
    video = unique("spam")
    author = await api.register(unique("spammer"))
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": REFUSED_TEXT}, token=author
    )
    assert (status, body["error"]["code"]) == (422, "content_refused")
    assert body["error"]["details"]["reasons"]
    assert await stored(cluster, "comments", {"video_id": video}) == []
    assert await stored(cluster, "held", {"video_id": video}) == []


async def test_reports_fill_the_queue_and_flag_the_author(
    api: Api, session: aiohttp.ClientSession, mod: tuple[str, str]
) -> None:
    video = unique("rep")
    author = await api.register(unique("troll"))
    author_id = await api.user_id(author)
    reporters = [await api.register(unique("r")) for _ in range(2)]
    one = await api.post(video, "first take", author)
    two = await api.post(video, "second take", author)
    path = f"/api/comments/{one['id']}/reports"
    status, report, _ = await api.request(
        "POST", path, json={"reason": "harassment", "note": "rude"}, token=reporters[0]
    )
    assert status == 201 and report["status"] == "open" and report["comment"]["id"] == one["id"]
    status, body, _ = await api.request("POST", path, json={"reason": "spam"}, token=reporters[0])
    assert (status, body["error"]["code"]) == (409, "already_reported")
    status, body, _ = await api.request("POST", path, json={"reason": "spam"}, token=author)
    assert (status, body["error"]["code"]) == (400, "own_comment")
    status, body, _ = await api.request("POST", path, json={"reason": "meh"}, token=reporters[1])
    assert (status, body["error"]["code"]) == (400, "invalid_field")
    status, body, _ = await api.request("POST", path, json={"reason": "spam"})
    assert status == 401

    status, flagged, _ = await api.request("GET", "/api/moderation/flagged-users", token=mod[0])
    assert author_id not in [u["id"] for u in flagged["items"]]
    status, _, _ = await api.request(
        "POST", f"/api/comments/{two['id']}/reports", json={"reason": "spam"}, token=reporters[1]
    )
    assert status == 201
    status, flagged, _ = await api.request("GET", "/api/moderation/flagged-users", token=mod[0])
    (user,) = [u for u in flagged["items"] if u["id"] == author_id]
    assert user["flagged"] and user["report_count"] == 2  # CLUSTER_ENV: flagged at 2

    status, queue, _ = await api.request("GET", "/api/moderation/reports", token=mod[0])
    mine = [r for r in queue["items"] if r["video_id"] == video]
    assert {r["comment_id"] for r in mine} == {one["id"], two["id"]}
    viewer = await Viewer(stream_url(api, video), session).connect()
    try:
        report_id = next(r["id"] for r in mine if r["comment_id"] == one["id"])
        status, result, _ = await api.request(
            "POST", f"/api/moderation/reports/{report_id}/resolve",
            json={"action": "delete"}, token=mod[0],
        )  # fmt: skip
        assert status == 200 and result["settled"] == 1 and result["status"] == "actioned"
        (gone,) = await viewer.wait_for(1, "comment.deleted")
        assert gone.json()["id"] == one["id"]
    finally:
        await viewer.close()
    status, queue, _ = await api.request("GET", "/api/moderation/reports", token=mod[0])
    assert [r["comment_id"] for r in queue["items"] if r["video_id"] == video] == [two["id"]]
    status, user, _ = await api.request(
        "DELETE", f"/api/moderation/flagged-users/{author_id}", token=mod[0]
    )
    assert status == 200 and not user["flagged"]


async def test_bans_and_timeouts(cluster: Cluster, api: Api, mod: tuple[str, str]) -> None:
    video, other = unique("ban"), unique("free")
    user = await api.register(unique("banned"))
    user_id = await api.user_id(user)
    await api.post(video, "before the ban", user)

    status, ban, _ = await api.request(
        "PUT", f"/api/videos/{video}/bans/{user_id}", json={"reason": "spam"}, token=mod[0]
    )
    assert status == 200 and ban["video_id"] == video and ban["expires_at"] is None
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "let me in"}, token=user
    )
    assert (status, body["error"]["code"]) == (403, "banned")
    assert body["error"]["details"]["scope"] == "video"
    await api.post(other, "still fine elsewhere", user)

    # Redis loses everything it knew about bans: the store still knows.
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        named = Keys(f"{cluster.namespace}:")
        keys = [k async for k in redis.scan_iter(named.ban("*", "*"))]
        assert keys
        await redis.delete(*keys, named.bans_loaded())
    finally:
        await redis.aclose()
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "now?"}, token=user
    )
    assert (status, body["error"]["code"]) == (403, "banned")

    status, _, _ = await api.request("DELETE", f"/api/videos/{video}/bans/{user_id}", token=mod[0])
    assert status == 204
    await api.post(video, "unbanned", user)

    # A global timeout of 2 s: refused everywhere, then allowed again.
    status, ban, _ = await api.request(
        "PUT", f"/api/bans/{user_id}", json={"duration_seconds": 2}, token=mod[0]
    )
    assert status == 200 and ban["video_id"] is None and ban["expires_at"]
    for target in (video, other):
        status, body, _ = await api.request(
            "POST", f"/api/videos/{target}/comments", json={"text": "x"}, token=user
        )
        assert (status, body["error"]["code"]) == (403, "banned")
        details = body["error"]["details"]
        assert details["scope"] == "global" and 1 <= details["retry_after"] <= 2, details
    status, bans, _ = await api.request("GET", "/api/bans", token=mod[0])
    assert user_id in [b["user_id"] for b in bans["items"]]
    for _ in range(100):  # the timeout ends (2 s; a generous bound for a busy machine)
        status, body, _ = await api.request(
            "POST", f"/api/videos/{other}/comments", json={"text": "served my time"}, token=user
        )
        if status != 403:
            break
        assert body["error"]["code"] == "banned"
        await asyncio.sleep(0.2)
    assert status == 201, body

    # Moderators cannot ban staff; viewers cannot ban at all.
    status, body, _ = await api.request("PUT", f"/api/bans/{mod[1]}", json={}, token=mod[0])
    assert (status, body["error"]["code"]) == (400, "own_account")
    other_mod = await staff(api, cluster, "moderator")
    status, body, _ = await api.request("PUT", f"/api/bans/{other_mod[1]}", json={}, token=mod[0])
    assert status == 403
    status, body, _ = await api.request("PUT", f"/api/bans/{mod[1]}", json={}, token=user)
    assert status == 403
    status, body, _ = await api.request("PUT", "/api/bans/12345", json={}, token=mod[0])
    assert (status, body["error"]["code"]) == (404, "user_not_found")


async def test_a_warned_user_posts_again_only_after_acknowledging(
    cluster: Cluster, api: Api, mod: tuple[str, str]
) -> None:
    """A moderator warns with a reason; the user's next post is refused until they
    acknowledge it, the acknowledgement is recorded, and a Redis that lost the
    warning gets it back from the store."""
    video = unique("warn")
    name = unique("warned")
    user = await api.register(name)
    user_id = await api.user_id(user)
    await api.post(video, "before the warning", user)

    warn = f"/api/users/{user_id}/warnings"
    status, body, _ = await api.request("POST", warn, json={"reason": "no spoilers"}, token=user)
    assert (status, body["error"]["code"]) == (403, "forbidden")  # not a moderator
    status, body, _ = await api.request("POST", warn, json={"reason": ""}, token=mod[0])
    assert (status, body["error"]["code"]) == (400, "invalid_field")
    status, body, _ = await api.request("POST", f"/api/users/{mod[1]}/warnings",
                                        json={"reason": "x"}, token=mod[0])  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "own_account")
    status, warning, _ = await api.request(
        "POST", warn, json={"reason": "no spoilers, please"}, token=mod[0]
    )
    assert status == 201 and warning["reason"] == "no spoilers, please"
    assert warning["user_id"] == user_id and warning["acknowledged_at"] is None

    async def refused() -> None:
        status, body, _ = await api.request(
            "POST", f"/api/videos/{video}/comments", json={"text": "can I?"}, token=user
        )
        assert (status, body["error"]["code"]) == (403, "warning_unacknowledged"), body

    await refused()
    status, mine, _ = await api.request("GET", "/api/auth/me/warning", token=user)
    assert status == 200 and mine["warning"]["id"] == warning["id"]

    # Redis loses the warning (and the mark that its copy is complete): still refused.
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        named = Keys(f"{cluster.namespace}:")
        assert await redis.delete(named.warning(user_id), named.bans_loaded()) == 2
    finally:
        await redis.aclose()
    await refused()

    status, acked, _ = await api.request("POST", "/api/auth/me/warning/ack", token=user)
    assert status == 200 and acked["id"] == warning["id"] and acked["acknowledged_at"]
    (doc,) = await stored(cluster, "warnings", {"user_id": int(user_id)})
    assert doc["reason"] == "no spoilers, please" and doc["acknowledged_at"] is not None
    await api.post(video, "after the warning", user)
    status, mine, _ = await api.request("GET", "/api/auth/me/warning", token=user)
    assert status == 200 and mine["warning"] is None
    status, body, _ = await api.request("POST", "/api/auth/me/warning/ack", token=user)
    assert (status, body["error"]["code"]) == (404, "warning_not_found")


async def test_slow_mode(cluster: Cluster, api: Api, mod: tuple[str, str]) -> None:
    video = unique("slow")
    user = await api.register(unique("chatty"))
    status, body, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 2}, token=user
    )
    assert status == 403
    status, settings, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 2}, token=mod[0]
    )
    assert status == 200 and settings == {
        "video_id": video,
        "slow_mode_seconds": 2,
        "hold_threshold": None,
        "min_account_age_seconds": 0,
        "shield": False,
        "shield_since": None,
    }
    status, settings, _ = await api.request("GET", f"/api/videos/{video}/settings")
    assert settings["slow_mode_seconds"] == 2
    await api.post(video, "one", user)
    status, body, response = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "two"}, token=user
    )
    assert (status, body["error"]["code"]) == (429, "slow_mode")
    assert response.headers["Retry-After"] in ("1", "2")
    # Redis loses the copy of every video's settings (and the marker that it is
    # complete): the next post reloads it from the store, and slow mode holds.
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        named = Keys(f"{cluster.namespace}:")
        keys = [k async for k in redis.scan_iter(named.video_settings("*"))]
        assert named.video_settings(video).encode() in keys
        await redis.delete(*keys, named.video_settings_index(), named.settings_loaded())
    finally:
        await redis.aclose()
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "two"}, token=user
    )
    assert (status, body["error"]["code"]) == (429, "slow_mode")
    # Moderators are exempt; other users have their own clock.
    await api.post(video, "mod one", mod[0])
    await api.post(video, "mod two", mod[0])
    await api.post(video, "hello", await api.register(unique("other")))
    await asyncio.sleep(2.1)
    await api.post(video, "two", user)
    status, _, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 0}, token=mod[0]
    )
    assert status == 200
    await api.post(video, "three", user)
    await api.post(video, "four", user)


async def test_logout_revokes_the_token_and_demotion_is_immediate(
    cluster: Cluster, api: Api
) -> None:
    name = unique("leaver")
    token = await api.register(name)
    status, _, _ = await api.request("POST", "/api/auth/logout", token=token)
    assert status == 204
    status, body, _ = await api.request(
        "POST", "/api/videos/v1/comments", json={"text": "hi"}, token=token
    )
    assert (status, body["error"]["code"]) == (401, "token_revoked")
    fresh = await api.login(name)
    await api.post("v1", "back again", fresh)

    admin_token, _ = await staff(api, cluster, "admin")
    mod_token, mod_id = await staff(api, cluster, "moderator")
    status, body, _ = await api.request(
        "PUT", f"/api/users/{mod_id}/role", json={"role": "viewer"}, token=admin_token
    )
    assert status == 200 and body["role"] == "viewer"
    # The demoted moderator's token still says "moderator"; the store says otherwise.
    status, body, _ = await api.request("GET", "/api/moderation/held", token=mod_token)
    assert status == 403
    status, body, _ = await api.request(
        "PUT", f"/api/users/{mod_id}/role", json={"role": "admin"}, token=mod_token
    )
    assert status == 403
