"""Shield mode (issue 14): one switch per video applies a stricter preset at once and
restores the video's settings when turned off.

The preset here: slow mode 20 s, hold from a filter score of 0.2, accounts younger
than 4 s refused. "spam spam spam spam spam spam" scores 0.333 with the built-in
filter: published normally (the service holds from 0.5), held under the shield.
(Each post's text differs: the same text twice is refused as a duplicate.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.redis.keys import Keys
from tests.support import Api, staff, unique

MIN_AGE = 4
CLUSTER_ENV = {
    "LIVECOMMENTS_SHIELD_SLOW_MODE": "20",
    "LIVECOMMENTS_SHIELD_HOLD_THRESHOLD": "0.2",
    "LIVECOMMENTS_SHIELD_MIN_ACCOUNT_AGE": str(MIN_AGE),
}
# Repetitive: the built-in filter scores them 0.333 and 0.429 (it holds from 0.5).
REPETITIVE = "spam spam spam spam spam spam"
REPETITIVE_TOO = "go go go go go go go"


async def shield(api: Api, video: str, on: bool, token: str) -> dict[str, Any]:
    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/shield", json={"on": on}, token=token
    )
    assert status == 200, body
    return dict(body)


async def post(api: Api, video: str, text: str, token: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": text}, token=token
    )
    return status, body


async def settings(api: Api, video: str) -> dict[str, Any]:
    status, body, _ = await api.request("GET", f"/api/videos/{video}/settings")
    assert status == 200, body
    return dict(body)


async def test_shield_mode_applies_a_preset_at_once_and_restores_the_settings(
    cluster: Cluster, api: Api
) -> None:
    video = unique("raid")
    moderator, _ = await staff(api, cluster)
    veteran = await api.register(unique("veteran"))
    registered = time.monotonic()
    # Before: a repetitive comment is published; the video has a slow mode of 5 s.
    status, body = await post(api, video, REPETITIVE, veteran)
    assert status == 201, body
    status, body, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 5}, token=moderator
    )
    assert status == 200 and body["shield"] is False, body

    on = await shield(api, video, True, moderator)
    assert on["shield"] is True and on["shield_since"]
    assert on["slow_mode_seconds"] == 20  # the stricter of 5 and the preset's 20
    assert on["hold_threshold"] == 0.2 and on["min_account_age_seconds"] == MIN_AGE
    current = await settings(api, video)  # what everyone reads, with the length limit
    assert {k: v for k, v in current.items() if k != "max_comment_chars"} == on
    # On twice changes nothing (and keeps what it saved).
    assert await shield(api, video, True, moderator) == on

    # A brand-new account is refused, with when it may post.
    newbie = await api.register(unique("newbie"))
    status, body = await post(api, video, "first!", newbie)
    assert status == 403 and body["error"]["code"] == "account_too_new", body
    assert 1 <= body["error"]["details"]["retry_after"] <= MIN_AGE
    # An older account's repetitive comment is held for review, and says why.
    await asyncio.sleep(max(0.0, MIN_AGE + 0.5 - (time.monotonic() - registered)))
    status, held = await post(api, video, REPETITIVE_TOO, veteran)
    assert status == 202 and held["status"] == "held", held
    held_queue = f"/api/moderation/held?video_id={video}"
    status, queue, _ = await api.request("GET", held_queue, token=moderator)
    assert status == 200, queue
    (item,) = [i for i in queue["items"] if i["id"] == held["id"]]
    assert "shield_mode" in item["reasons"], item
    # The held post counted against the 20 s slow mode.
    status, body = await post(api, video, "a clean one", veteran)
    assert status == 429 and body["error"]["code"] == "slow_mode", body
    # Moderators are exempt from all of it.
    status, body = await post(api, video, "la la la la la la la", moderator)
    assert status == 201, body

    # Redis lost its copy: the settings come back from the store, shield included.
    redis = Redis.from_url(cluster.backends.redis_url)
    try:
        named = Keys(f"{cluster.namespace}:")
        await redis.delete(named.video_settings(video), named.settings_loaded())
    finally:
        await redis.aclose()
    late = await api.register(unique("late"))
    status, body = await post(api, video, "me too", late)
    assert status == 403 and body["error"]["code"] == "account_too_new", body

    # Off: the settings from before come back, and the preset stops applying.
    off = await shield(api, video, False, moderator)
    assert off["shield"] is False and off["shield_since"] is None
    assert off["slow_mode_seconds"] == 5
    assert off["hold_threshold"] is None and off["min_account_age_seconds"] == 0
    assert await shield(api, video, False, moderator) == off
    status, body = await post(api, video, REPETITIVE_TOO, late)
    assert status == 201 and body["status"] == "visible", body


async def test_only_moderators_switch_the_shield(cluster: Cluster, api: Api) -> None:
    video = unique("raid")
    viewer = await api.register(unique("viewer"))
    moderator, _ = await staff(api, cluster)
    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/shield", json={"on": True}, token=viewer
    )
    assert status == 403 and body["error"]["code"] == "forbidden", body
    for bad in ({}, {"on": "yes"}, {"on": 1}):
        status, body, _ = await api.request(
            "PUT", f"/api/videos/{video}/shield", json=bad, token=moderator
        )
        assert status == 400, (bad, body)
    assert (await settings(api, video))["shield"] is False
