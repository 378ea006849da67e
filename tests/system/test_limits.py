"""Limits shared by two comment-service processes through Redis: 429 with Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from livecomments.cli.cluster import Cluster
from tests.support import Api, client_session, unique

# Two comment services share the limits; nobody watches: one dispatcher, one RTMS node.
CLUSTER_SHAPE = {"dispatchers": 1, "rtms": 1, "comment_services": 2}
CLUSTER_ENV = {
    "LIVECOMMENTS_POST_LIMIT_USER": "5/30",
    "LIVECOMMENTS_POST_LIMIT_IP": "8/30",
    "LIVECOMMENTS_LOGIN_LIMIT_ACCOUNT": "3/300",
    "LIVECOMMENTS_LOGIN_LIMIT_IP": "6/300",
    "LIVECOMMENTS_DUPLICATE_WINDOW": "30",
    # The tests come from 127.0.0.1 and say who the client is with X-Forwarded-For,
    # as the L7 proxy does in production; 127.0.0.2 plays an untrusted client.
    "LIVECOMMENTS_TRUSTED_PROXIES": "127.0.0.1",
}


@pytest.fixture
def apis(cluster: Cluster, session: aiohttp.ClientSession) -> tuple[Api, Api]:
    return (
        Api(cluster.services["comment-1"].url, session),
        Api(cluster.services["comment-2"].url, session),
    )


def client(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": f"{ip}, 127.0.0.1"}


async def post(api: Api, video: str, text: str, token: str, ip: str) -> tuple[int, Any, Any]:
    status, body, response = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": text}, token=token,
        headers=client(ip),
    )  # fmt: skip
    return status, body, dict(response.headers)


async def test_user_limit_is_shared_by_both_replicas(apis: tuple[Api, Api]) -> None:
    video = unique("lim")
    token = await apis[0].register(unique("fast"))
    for n in range(5):
        status, body, _ = await post(apis[n % 2], video, f"message {n}", token, "10.0.0.1")
        assert status == 201, body
    for api in apis:
        status, body, headers = await post(api, video, "one too many", token, "10.0.0.1")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert 1 <= int(headers["Retry-After"]) <= 7  # one token comes back every 6 s
        assert body["error"]["details"]["retry_after"] == int(headers["Retry-After"])
    # Someone else on another address is not affected.
    other = await apis[1].register(unique("calm"))
    status, _, _ = await post(apis[1], video, "hello", other, "10.0.0.9")
    assert status == 201


async def test_address_limit_covers_many_users(apis: tuple[Api, Api]) -> None:
    video = unique("ip")
    tokens = [await apis[0].register(unique("nat")) for _ in range(3)]
    statuses = []
    for n in range(9):
        status, _, _ = await post(apis[n % 2], video, f"hi {n}", tokens[n % 3], "10.0.0.2")
        statuses.append(status)
    assert statuses == [201] * 8 + [429]  # 8 per 30 s from one address, whoever posts


async def test_forwarded_for_counts_only_from_a_trusted_proxy(cluster: Cluster) -> None:
    """A client at 127.0.0.2 cannot choose its address with X-Forwarded-For."""
    video = unique("spoof")
    async with client_session(cluster.ca_file, source="127.0.0.2") as http:
        api = Api(cluster.services["comment-1"].url, http)
        tokens = [await api.register(unique("spoof")) for _ in range(3)]
        statuses = []
        for n in range(9):  # a new forged address each time: all counted against 127.0.0.2
            status, _, _ = await post(api, video, f"x {n}", tokens[n % 3], f"10.9.9.{n}")
            statuses.append(status)
    assert statuses == [201] * 8 + [429]


async def test_login_attempts_are_limited_per_account_and_address(
    apis: tuple[Api, Api],
) -> None:
    name = unique("victim")
    await apis[0].register(name)
    wrong = {"username": name, "password": "not the password"}
    for n in range(3):  # both replicas count the same failures
        status, body, _ = await apis[n % 2].request(
            "POST", "/api/auth/login", json=wrong, headers=client("10.1.0.1")
        )
        assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    # The account is locked for a while from that address, even with the right password ...
    right = {"username": name, "password": "correct horse battery"}
    status, body, response = await apis[1].request(
        "POST", "/api/auth/login", json=right, headers=client("10.1.0.1")
    )
    assert (status, body["error"]["code"]) == (429, "login_locked")
    assert int(response.headers["Retry-After"]) >= 1
    # ... not from the owner's (tests/system/test_accounts_hardening.py has the rest).
    status, body, _ = await apis[0].request(
        "POST", "/api/auth/login", json=right, headers=client("10.1.0.99")
    )
    assert status == 200, body
    # One address trying many accounts is stopped too.
    statuses = []
    for n in range(7):
        status, _, _ = await apis[n % 2].request(
            "POST", "/api/auth/login",
            json={"username": unique(f"guess{n}"), "password": "password1"},
            headers=client("10.1.1.1"),
        )  # fmt: skip
        statuses.append(status)
    assert statuses == [401] * 6 + [429]


async def test_duplicate_messages_are_suppressed(apis: tuple[Api, Api]) -> None:
    video = unique("dup")
    token = await apis[0].register(unique("echo"))
    status, _, _ = await post(apis[0], video, "Same Words", token, "10.2.0.1")
    assert status == 201
    for api, text in ((apis[0], "Same Words"), (apis[1], "same words")):
        status, body, headers = await post(api, video, text, token, "10.2.0.1")
        assert (status, body["error"]["code"]) == (429, "duplicate_message")
        assert 25 <= int(headers["Retry-After"]) <= 30
    status, _, _ = await post(apis[1], video, "different words", token, "10.2.0.1")
    assert status == 201
    # The same words on another video, or from another user, are fine.
    status, _, _ = await post(apis[1], unique("dup"), "Same Words", token, "10.2.0.1")
    assert status == 201
    other = await apis[0].register(unique("echo"))
    status, _, _ = await post(apis[0], video, "Same Words", other, "10.2.0.2")
    assert status == 201


async def test_concurrent_posts_share_one_admission_call_and_keep_every_limit(
    apis: tuple[Api, Api],
) -> None:
    """Posts that arrive together are admitted in one Redis call (comment_service/
    admission.py), one after the other inside it: a burst meets the same limits as a
    sequence, and only admitted posts take a seq, so the stored seqs stay contiguous."""
    video = unique("burst")
    token = await apis[0].register(unique("burst"))
    # 12 different texts at once from one user: the 5/30 user bucket admits 5.
    results = await asyncio.gather(
        *(post(apis[n % 2], video, f"burst {n}", token, f"10.1.0.{n}") for n in range(12))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] * 5 + [429] * 7
    # The same text 6 times at once from another user: one gets through.
    other = await apis[1].register(unique("echo"))
    results = await asyncio.gather(
        *(post(apis[0], video, "same words", other, f"10.2.0.{n}") for n in range(6))
    )
    assert sorted(status for status, _, _ in results) == [201] + [429] * 5
    assert {body["error"]["code"] for status, body, _ in results if status == 429} == {
        "duplicate_message"
    }
    page = await apis[0].page(video, limit=50)
    assert sorted(int(c["seq"]) for c in page["items"]) == list(range(1, 7))
