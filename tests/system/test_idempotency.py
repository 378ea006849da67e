"""Idempotent posting (issue 10): a POST retried with its Idempotency-Key makes one comment.

Against the real cluster: the retries are real requests, the comment count is
read from history, and a viewer's SSE stream shows what reached viewers.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from livecomments.cli.cluster import Cluster
from tests.support import Api, Viewer, staff, unique

CLUSTER_ENV = {
    "LIVECOMMENTS_DUPLICATE_WINDOW": "30",  # on, as in production
    "LIVECOMMENTS_POST_LIMIT_USER": "4/60",
}
HELD_TEXT = "great stream, more at https://example.com/watch"  # one link: held for review


async def post(
    api: Api, video: str, token: str, text: str, key: str | None, **extra: Any
) -> tuple[int, Any, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    status, body, response = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": text, **extra}, token=token,
        headers=headers,
    )  # fmt: skip
    return status, body, response.headers


async def comments_in_history(api: Api, video: str) -> list[dict[str, Any]]:
    page = await api.page(video, limit=100)
    return [c for item in page["items"] for c in (item, *item["replies"])]


async def test_a_retry_with_the_same_key_gets_the_same_comment(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """Before: the retry made a second comment (or met duplicate suppression, 429)."""
    video = unique("idem")
    token = await api.register(unique("retry"))
    viewer = await Viewer(f"{api.base}/api/videos/{video}/stream", session).connect()
    try:
        key = str(uuid.uuid4())
        first = await post(api, video, token, "hello once", key)
        again = await post(api, video, token, "hello once", key)
        assert first[0] == again[0] == 201, (first[1], again[1])
        assert again[1] == first[1]  # the same comment: id, seq, text, author, time
        # Viewers got it once, and history holds it once.
        (event,) = await viewer.wait_for(1)
        assert event.json()["id"] == first[1]["id"]
        history = await comments_in_history(api, video)
        assert [c["id"] for c in history] == [first[1]["id"]]
        # A new key is a new comment; no key at all too.
        other = await post(api, video, token, "hello twice", str(uuid.uuid4()))
        plain = await post(api, video, token, "hello thrice", None)
        assert other[0] == plain[0] == 201
        assert len({first[1]["id"], other[1]["id"], plain[1]["id"]}) == 3
        events = await viewer.wait_for(3)
        await asyncio.sleep(0.3)  # anything extra would arrive by now
        assert [e.json()["id"] for e in viewer.of("comment")] == [
            first[1]["id"], other[1]["id"], plain[1]["id"],
        ]  # fmt: skip
        assert len(events) == 3
    finally:
        await viewer.close()


async def test_concurrent_retries_make_exactly_one_comment(api: Api) -> None:
    video = unique("idem")
    token = await api.register(unique("burst"))
    key = str(uuid.uuid4())
    results = await asyncio.gather(*(post(api, video, token, "only one", key) for _ in range(10)))
    created = [body for status, body, _ in results if status == 201]
    busy = [(body, headers) for status, body, headers in results if status == 409]
    assert len(created) + len(busy) == 10, [status for status, _, _ in results]
    assert created and len({body["id"] for body in created}) == 1
    for body, headers in busy:
        assert body["error"]["code"] == "idempotency_in_flight"
        assert int(headers["Retry-After"]) >= 1
    # Once the first is done, every retry gets it.
    status, body, _ = await post(api, video, token, "only one", key)
    assert status == 201 and body["id"] == created[0]["id"]
    history = await comments_in_history(api, video)
    assert [c["id"] for c in history] == [created[0]["id"]]


async def test_keys_belong_to_their_user_and_video(api: Api) -> None:
    video = unique("idem")
    alice, bob = await api.register(unique("alice")), await api.register(unique("bob"))
    key = "shared-key-1"
    a = await post(api, video, alice, "same words", key)
    b = await post(api, video, bob, "same words", key)
    elsewhere = await post(api, unique("idem"), alice, "same words", key)
    assert a[0] == b[0] == elsewhere[0] == 201
    assert a[1]["author"] != b[1]["author"]
    assert len({a[1]["id"], b[1]["id"], elsewhere[1]["id"]}) == 3
    assert len(await comments_in_history(api, video)) == 2


async def test_a_key_reused_for_another_comment_is_refused(api: Api) -> None:
    video = unique("idem")
    token = await api.register(unique("reuse"))
    key = str(uuid.uuid4())
    status, first, _ = await post(api, video, token, "the original", key)
    assert status == 201
    status, body, _ = await post(api, video, token, "something else", key)
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    status, body, _ = await post(api, video, token, "the original", key, parent_id=first["id"])
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    for bad in ("", "has space", "x" * 129, "naïve"):
        try:
            status, body, _ = await post(api, video, token, "the original", bad)
        except ValueError:  # a header aiohttp will not even send
            continue
        assert (status, body["error"]["code"]) == (400, "invalid_idempotency_key"), bad
    assert [c["id"] for c in await comments_in_history(api, video)] == [first["id"]]


async def test_limits_never_refuse_the_retry_of_an_accepted_post(api: Api) -> None:
    """Duplicate suppression (30 s) and the 4/60 user bucket would refuse the same
    text again, and a fifth post: a retry is answered before admission runs."""
    video = unique("idem")
    token = await api.register(unique("limited"))
    keys = [str(uuid.uuid4()) for _ in range(4)]
    firsts = [await post(api, video, token, f"post {n}", keys[n]) for n in range(4)]
    assert [status for status, _, _ in firsts] == [201] * 4
    status, body, _ = await post(api, video, token, "post 0", None)
    assert (status, body["error"]["code"]) == (429, "duplicate_message")
    status, body, _ = await post(api, video, token, "a fifth post", str(uuid.uuid4()))
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    for n in range(4):
        status, body, _ = await post(api, video, token, f"post {n}", keys[n])
        assert status == 201 and body == firsts[n][1]
    assert len(await comments_in_history(api, video)) == 4


async def test_a_held_comment_is_answered_as_held_again(cluster: Cluster, api: Api) -> None:
    video = unique("idem")
    token = await api.register(unique("linker"))
    key = str(uuid.uuid4())
    status, first, _ = await post(api, video, token, HELD_TEXT, key)
    assert status == 202 and first["status"] == "held"
    status, again, _ = await post(api, video, token, HELD_TEXT, key)
    assert status == 202 and again["id"] == first["id"]
    moderator, _ = await staff(api, cluster)
    status, held, _ = await api.request(
        "GET", f"/api/moderation/held?video_id={video}", token=moderator
    )
    assert [h["id"] for h in held["items"]] == [first["id"]]


async def test_after_a_failed_attempt_the_key_may_be_tried_again(
    cluster: Cluster, api: Api
) -> None:
    """A refused post (here: banned) leaves the key usable: once the ban is lifted,
    the same request with the same key goes through, once."""
    video = unique("idem")
    token = await api.register(unique("banned"))
    user_id = await api.user_id(token)
    moderator, _ = await staff(api, cluster)
    ban = f"/api/videos/{video}/bans/{user_id}"
    status, _, _ = await api.request("PUT", ban, json={"reason": "cool off"}, token=moderator)
    assert status == 200
    key = str(uuid.uuid4())
    status, body, _ = await post(api, video, token, "let me speak", key)
    assert (status, body["error"]["code"]) == (403, "banned")
    status, _, _ = await api.request("DELETE", ban, token=moderator)
    assert status == 204
    status, first, _ = await post(api, video, token, "let me speak", key)
    assert status == 201
    status, again, _ = await post(api, video, token, "let me speak", key)
    assert status == 201 and again["id"] == first["id"]
    assert [c["id"] for c in await comments_in_history(api, video)] == [first["id"]]
