"""The limits other than posting and logging in (tests/system/test_limits.py has those).

Each one answers 429 ``rate_limited`` with ``Retry-After`` (and the same number in
the error's details), and counts what the README's API table says it counts: an
address, or a user. Moderators skip the content filter and duplicate suppression,
not the rate limits. The tests say who the client is with X-Forwarded-For, as the
L7 proxy does in production, so every test counts on addresses of its own.
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import pytest

from livecomments.cli.cluster import Cluster
from tests.support import PASSWORD, Api, create_admin, unique

CLUSTER_ENV = {
    "LIVECOMMENTS_REGISTER_LIMIT_IP": "3/3600",
    "LIVECOMMENTS_REACT_LIMIT_USER": "3/60",
    "LIVECOMMENTS_REPORT_LIMIT_USER": "2/60",
    "LIVECOMMENTS_MODERATE_LIMIT_USER": "4/60",
    "LIVECOMMENTS_HISTORY_LIMIT_IP": "5/60",
    "LIVECOMMENTS_HISTORY_LIMIT_USER": "4/60",
    "LIVECOMMENTS_POST_LIMIT_USER": "4/60",
    "LIVECOMMENTS_DUPLICATE_WINDOW": "30",
    "LIVECOMMENTS_TRUSTED_PROXIES": "127.0.0.1",
}
REFUSED_TEXT = "buy followers now at http://spam.example and http://x.example"

_addresses = (f"10.77.{n // 250}.{n % 250 + 1}" for n in itertools.count())


def address() -> dict[str, str]:
    """Headers of a client at an address no other request of the module uses."""
    return {"X-Forwarded-For": f"{next(_addresses)}, 127.0.0.1"}


def assert_limited(status: int, body: Any, response: aiohttp.ClientResponse) -> None:
    assert status == 429, (status, body)
    assert body["error"]["code"] == "rate_limited", body
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1 and body["error"]["details"]["retry_after"] == retry_after


async def register(api: Api, headers: dict[str, str] | None = None) -> str:
    status, body, _ = await api.request(
        "POST", "/api/auth/register", json={"username": unique("u"), "password": PASSWORD},
        headers=headers or address(),
    )  # fmt: skip
    assert status == 201, body
    return str(body["token"])


async def set_role(api: Api, user_id: str, role: str, admin_token: str) -> None:
    status, body, _ = await api.request(
        "PUT", f"/api/users/{user_id}/role", json={"role": role}, token=admin_token
    )
    assert status == 200, body


async def promoted(api: Api, cluster: Cluster) -> tuple[str, str, str]:
    """A fresh moderator made by a fresh admin (each with buckets of its own):
    (the moderator's token, their user id, the admin's token)."""
    admin = unique("admin")
    await create_admin(cluster, admin)
    admin_token = await api.login(admin)
    name = unique("mod")
    status, body, _ = await api.request(
        "POST", "/api/auth/register", json={"username": name, "password": PASSWORD},
        headers=address(),
    )  # fmt: skip
    assert status == 201, body
    user_id = str(body["user"]["id"])
    await set_role(api, user_id, "moderator", admin_token)
    # A token issued after the change: one issued before still says viewer.
    return await api.login(name), user_id, admin_token


async def moderator(api: Api, cluster: Cluster) -> str:
    """A fresh moderator's token."""
    return (await promoted(api, cluster))[0]


async def post(api: Api, video: str, text: str, token: str) -> tuple[int, Any, Any]:
    return await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": text}, token=token
    )


async def test_sign_ups_are_limited_per_address(api: Api) -> None:
    crowd = address()
    for _ in range(3):
        await register(api, crowd)
    status, body, response = await api.request(
        "POST", "/api/auth/register", json={"username": unique("u"), "password": PASSWORD},
        headers=crowd,
    )  # fmt: skip
    assert_limited(status, body, response)
    await register(api)  # another address signs up all the same


async def test_reactions_are_limited_per_user(api: Api) -> None:
    video = unique("rx")
    comment = await api.post(video, "react to me", await register(api))
    fan, other = await register(api), await register(api)
    path = f"/api/videos/{video}/comments/{comment['id']}/reactions"
    for name in ("like", "heart", "laugh"):
        status, body, _ = await api.request("PUT", f"{path}/{name}", token=fan)
        assert status == 200, body
    status, body, response = await api.request("PUT", f"{path}/wow", token=fan)
    assert_limited(status, body, response)
    status, body, _ = await api.request("PUT", f"{path}/wow", token=other)
    assert status == 200, body


async def test_reports_are_limited_per_user(api: Api) -> None:
    video = unique("rep")
    author = await register(api)
    comments = [await api.post(video, f"report me {n}", author) for n in range(3)]
    reporter = await register(api)
    for comment in comments[:2]:
        status, body, _ = await api.request(
            "POST", f"/api/comments/{comment['id']}/reports", json={"reason": "spam"},
            token=reporter,
        )  # fmt: skip
        assert status == 201, body
    status, body, response = await api.request(
        "POST", f"/api/comments/{comments[2]['id']}/reports", json={"reason": "spam"},
        token=reporter,
    )  # fmt: skip
    assert_limited(status, body, response)


async def test_moderation_actions_are_limited_per_moderator(cluster: Cluster, api: Api) -> None:
    mod = await moderator(api, cluster)
    for _ in range(4):
        status, body, _ = await api.request("GET", "/api/moderation/reports", token=mod)
        assert status == 200, body
    status, body, response = await api.request("GET", "/api/moderation/reports", token=mod)
    assert_limited(status, body, response)
    other = await moderator(api, cluster)
    status, body, _ = await api.request("GET", "/api/moderation/reports", token=other)
    assert status == 200, body


async def test_history_reads_are_limited_per_address_and_per_user(api: Api) -> None:
    video = unique("hist")
    path = f"/api/videos/{video}/comments"
    reader = address()
    for _ in range(5):  # anonymous: the address's bucket
        status, body, _ = await api.request("GET", path, headers=reader)
        assert status == 200, body
    status, body, response = await api.request("GET", path, headers=reader)
    assert_limited(status, body, response)
    status, body, _ = await api.request("GET", path, headers=address())
    assert status == 200, body

    token = await register(api)  # logged in: the user's bucket, wherever they are
    for _ in range(4):
        status, body, _ = await api.request("GET", path, token=token, headers=address())
        assert status == 200, body
    status, body, response = await api.request("GET", path, token=token, headers=address())
    assert_limited(status, body, response)


@pytest.mark.timeout(60)
async def test_moderators_skip_the_filter_and_duplicates_not_the_rate_limit(
    cluster: Cluster, api: Api
) -> None:
    video = unique("staff")
    viewer = await register(api)
    status, body, _ = await post(api, video, REFUSED_TEXT, viewer)
    assert (status, body["error"]["code"]) == (422, "content_refused")
    assert (await post(api, video, "same words", viewer))[0] == 201
    status, body, _ = await post(api, video, "same words", viewer)
    assert (status, body["error"]["code"]) == (429, "duplicate_message")

    mod = await moderator(api, cluster)
    statuses = [
        (await post(api, video, text, mod))[0]
        for text in (REFUSED_TEXT, "same words", "same words", "a fourth")
    ]
    assert statuses == [201] * 4  # no filter, no duplicate suppression ...
    status, body, response = await post(api, video, "a fifth", mod)
    assert_limited(status, body, response)  # ... but the same 4 posts a minute


@pytest.mark.timeout(60)
async def test_a_demoted_moderator_loses_the_exemptions_with_the_token_in_hand(
    cluster: Cluster, api: Api
) -> None:
    """The exemptions follow the role in the store, not the one the token was issued with."""
    video = unique("demoted")
    mod, user_id, admin_token = await promoted(api, cluster)  # a token that says moderator
    assert (await post(api, video, REFUSED_TEXT, mod))[0] == 201
    await set_role(api, user_id, "viewer", admin_token)
    status, body, _ = await post(api, video, REFUSED_TEXT + " again", mod)
    assert (status, body["error"]["code"]) == (422, "content_refused")
