"""Accounts under attack (issue 10): login locks, alike answers, weak passwords, bans, admins.

Every test runs against the real cluster. Clients say which address they come
from with X-Forwarded-For, through 127.0.0.1, a trusted proxy here as the L7
proxy is in production (see tests/system/test_limits.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from livecomments.cli.cluster import Cluster
from tests.support import PASSWORD, Api, create_admin, staff, unique

PAIR_LIMIT = 5  # failed logins per (account, address)
ACCOUNT_LIMIT = 12  # failed logins per account, all addresses, before the back-off
# Accounts only, nobody watches: one process of each kind is enough.
CLUSTER_SHAPE = {"dispatchers": 1, "rtms": 1}
CLUSTER_ENV = {
    "LIVECOMMENTS_TRUSTED_PROXIES": "127.0.0.1",
    "LIVECOMMENTS_LOGIN_LIMIT_ACCOUNT": f"{PAIR_LIMIT}/300",
    "LIVECOMMENTS_LOGIN_BACKOFF_ACCOUNT": f"{ACCOUNT_LIMIT}/300",
    "LIVECOMMENTS_LOGIN_BACKOFF_FIRST": "1",
    "LIVECOMMENTS_LOGIN_BACKOFF_MAX": "4",
}


def source(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": f"{ip}, 127.0.0.1"}


async def login(api: Api, username: str, password: str, ip: str) -> tuple[int, Any, Any]:
    status, body, response = await api.request(
        "POST", "/api/auth/login", json={"username": username, "password": password},
        headers=source(ip),
    )  # fmt: skip
    return status, body, response.headers


# -- logins -------------------------------------------------------------------------


async def test_failed_logins_lock_the_address_not_the_account(cluster: Cluster, api: Api) -> None:
    """Before: ten failures from anywhere locked the account, admins included, everywhere."""
    admin = unique("boss")
    await create_admin(cluster, admin)
    for _ in range(PAIR_LIMIT):
        status, body, _ = await login(api, admin, "not the password", "10.3.0.1")
        assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    # That address is locked for that account, even with the right password ...
    status, body, headers = await login(api, admin, PASSWORD, "10.3.0.1")
    assert (status, body["error"]["code"]) == (429, "login_locked")
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["details"]["retry_after"] == int(headers["Retry-After"])
    # ... but the admin, elsewhere, logs in, and so does anyone else from that address.
    status, body, _ = await login(api, admin, PASSWORD, "10.3.0.2")
    assert status == 200, body
    assert body["user"]["role"] == "admin"
    other = unique("neighbour")
    await api.register(other)
    status, _, _ = await login(api, other, PASSWORD, "10.3.0.1")
    assert status == 200


async def test_concurrent_guesses_cannot_slip_past_the_lock(api: Api) -> None:
    """Each attempt counts as a failure before its hash is checked, so a burst of
    guesses sent at once gets no more tries than the same guesses one by one."""
    name = unique("burst")
    await api.register(name)
    results = await asyncio.gather(
        *(login(api, name, f"guess number {n}", "10.3.1.1") for n in range(4 * PAIR_LIMIT))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [401] * PAIR_LIMIT + [429] * (3 * PAIR_LIMIT)
    assert {body["error"]["code"] for status, body, _ in results if status == 429} == {
        "login_locked"
    }
    status, _, _ = await login(api, name, PASSWORD, "10.3.1.2")  # the owner, elsewhere
    assert status == 200


async def test_a_spray_from_many_addresses_slows_strangers_but_not_the_owner(api: Api) -> None:
    """Past the account-wide threshold, addresses the account never logged in from
    wait between attempts (a doubling wait, capped), while the owner's address is
    let through at once: a botnet cannot lock the owner out."""
    name = unique("target")
    await api.register(name)
    status, _, _ = await login(api, name, PASSWORD, "10.4.0.50")  # the owner's usual address
    assert status == 200
    sprayed = []
    for n in range(ACCOUNT_LIMIT + 6):  # one guess from each of many addresses
        status, body, headers = await login(api, name, "spray and pray", f"10.4.1.{n}")
        sprayed.append(status)
        if status == 429:
            assert body["error"]["code"] == "login_backoff"
            assert 1 <= int(headers["Retry-After"]) <= 4
    assert sprayed[: ACCOUNT_LIMIT + 1] == [401] * (ACCOUNT_LIMIT + 1)
    assert 429 in sprayed[ACCOUNT_LIMIT + 1 :]
    # The owner, from their address, is not slowed at all.
    status, body, _ = await login(api, name, PASSWORD, "10.4.0.50")
    assert status == 200, body
    # The owner from a new address is slowed, not locked out: after the
    # Retry-After it says (capped at 4 s here), the login goes through.
    for _ in range(5):
        status, body, headers = await login(api, name, PASSWORD, "10.4.2.1")
        if status == 200:
            break
        assert body["error"]["code"] == "login_backoff"
        await asyncio.sleep(int(headers["Retry-After"]))
    assert status == 200, body


async def test_unknown_users_and_wrong_passwords_get_the_same_answer(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    api = Api(cluster.services["comment-1"].url, session)
    name = unique("exists")
    await api.register(name)
    answers = []
    for username in (name, unique("nobody")):
        async with session.post(
            api.base + "/api/auth/login",
            json={"username": username, "password": "wrong password"},
            headers=source("10.5.0.1"),
        ) as response:
            answers.append(
                (response.status, response.headers["Content-Type"], await response.read())
            )
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and b'"invalid_credentials"' in answers[0][2]
    # Locked alike too: an unknown user's address locks after as many failures.
    ghost = unique("ghost")
    for ip, who in (("10.5.0.2", name), ("10.5.0.3", ghost)):
        statuses = [(await login(api, who, "wrong password", ip))[0] for _ in range(PAIR_LIMIT + 1)]
        assert statuses == [401] * PAIR_LIMIT + [429]


# -- passwords ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short1!x", "at least 10"),  # 8: the old minimum
        ("password123", "most common"),
        ("Dragon2024!!", "most common"),  # a common word with digits and punctuation
        ("qwertyuiop", "most common"),
        ("zzzzzzzzzzzz", "too few"),
        ("{name}-rocks-42", "username"),
    ],
)
async def test_weak_passwords_are_refused_on_sign_up(api: Api, password: str, why: str) -> None:
    name = unique("newbie")
    status, body, _ = await api.request(
        "POST", "/api/auth/register",
        json={"username": name, "password": password.format(name=name)},
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "weak_password"), body
    assert why in body["error"]["message"]
    assert body["error"]["details"]["min_length"] == 10
    # Nothing was created: the name is still free, for a strong password.
    status, body, _ = await api.request(
        "POST", "/api/auth/register", json={"username": name, "password": PASSWORD}
    )
    assert status == 201, body


def test_the_cli_refuses_a_weak_admin_password(cluster: Cluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livecomments", "users", "create-admin", unique("weak"),
         "--password-stdin"],
        input="password123\n", env={**os.environ, **cluster.base_env()},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "weak_password" in result.stderr


# -- bans -------------------------------------------------------------------------------


async def test_a_moderator_cannot_lift_or_replace_an_admins_ban(cluster: Cluster, api: Api) -> None:
    admin, _ = await staff(api, cluster, "admin")
    moderator, _ = await staff(api, cluster, "moderator")
    video = unique("bans")
    viewer = await api.register(unique("troll"))
    viewer_id = await api.user_id(viewer)
    for path in (f"/api/bans/{viewer_id}", f"/api/videos/{video}/bans/{viewer_id}"):
        status, ban, _ = await api.request("PUT", path, json={"reason": "abuse"}, token=admin)
        assert status == 200 and ban["banned_by_role"] == "admin", ban
        status, body, _ = await api.request("DELETE", path, token=moderator)
        assert (status, body["error"]["code"]) == (403, "ban_set_by_admin")
        status, body, _ = await api.request(
            "PUT", path, json={"duration_seconds": 1, "reason": "shorter"}, token=moderator
        )
        assert (status, body["error"]["code"]) == (403, "ban_set_by_admin")
    # The admin's ban is untouched: still permanent, and enforced.
    status, bans, _ = await api.request("GET", "/api/bans", token=moderator)
    (mine,) = [b for b in bans["items"] if b["user_id"] == viewer_id]
    assert mine["expires_at"] is None and mine["reason"] == "abuse"
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "let me in"}, token=viewer
    )
    assert (status, body["error"]["code"]) == (403, "banned")
    # An admin lifts it; a moderator's own ban stays theirs to lift (and an admin's to change).
    for path in (f"/api/bans/{viewer_id}", f"/api/videos/{video}/bans/{viewer_id}"):
        status, _, _ = await api.request("DELETE", path, token=admin)
        assert status == 204
    path = f"/api/videos/{video}/bans/{viewer_id}"
    status, ban, _ = await api.request("PUT", path, json={"reason": "spam"}, token=moderator)
    assert status == 200 and ban["banned_by_role"] == "moderator"
    status, ban, _ = await api.request("PUT", path, json={"reason": "worse"}, token=admin)
    assert status == 200 and ban["banned_by_role"] == "admin"
    status, _, _ = await api.request("DELETE", path, token=admin)
    assert status == 204
    status, ban, _ = await api.request("PUT", path, json={"reason": "spam"}, token=moderator)
    status, _, _ = await api.request("DELETE", path, token=moderator)
    assert status == 204
    # An admin's timeout that has run out no longer stands in a moderator's way.
    timeout = {"duration_seconds": 1, "reason": "short"}
    status, _, _ = await api.request("PUT", path, json=timeout, token=admin)
    assert status == 200
    status, body, _ = await api.request("PUT", path, json=timeout, token=moderator)
    assert (status, body["error"]["code"]) == (403, "ban_set_by_admin")
    for _ in range(40):
        await asyncio.sleep(0.1)
        status, ban, _ = await api.request("PUT", path, json=timeout, token=moderator)
        if status == 200:
            break
    assert status == 200 and ban["banned_by_role"] == "moderator", ban
    await asyncio.sleep(1.1)  # the moderator's timeout runs out too
    status, _, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "back again"}, token=viewer
    )
    assert status == 201


# -- the last admin -------------------------------------------------------------------------


async def _only_admins(cluster: Cluster, keep: list[str]) -> list[str]:
    """Make every admin of this module's database but ``keep`` a moderator (the other
    tests made some); the usernames of the admins left."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        users = client[cluster.namespace]["users"]
        await users.update_many(
            {"role": "admin", "username": {"$nin": keep}}, {"$set": {"role": "moderator"}}
        )
        return sorted([u["username"] async for u in users.find({"role": "admin"})])
    finally:
        await client.close()


async def test_the_last_admin_cannot_be_demoted(cluster: Cluster, api: Api) -> None:
    """Two admins demoting each other at the same moment: one of them stays admin.
    Before, both demotions went through and the installation had no admin left."""
    for attempt in range(2):
        first, second = unique(f"a{attempt}"), unique(f"b{attempt}")
        for name in (first, second):
            await create_admin(cluster, name)
        assert await _only_admins(cluster, [first, second]) == sorted([first, second])
        tokens = [await api.login(first), await api.login(second)]
        ids = [await api.user_id(token) for token in tokens]
        results = await asyncio.gather(
            *(
                api.request(
                    "PUT",
                    f"/api/users/{ids[1 - n]}/role",
                    json={"role": "viewer"},
                    token=tokens[n],
                )
                for n in (0, 1)
            )
        )
        outcomes = sorted(
            (status, body["error"]["code"] if status != 200 else "") for status, body, _ in results
        )
        # The loser was either refused as the last admin, or (if it came second
        # to the lock after losing its role) as no longer an admin.
        assert outcomes in ([(200, ""), (403, "forbidden")], [(200, ""), (409, "last_admin")])
        (survivor,) = await _only_admins(cluster, [first, second])
        # The survivor cannot be demoted by the CLI either.
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "livecomments", "users", "set-role", survivor, "moderator"],
            env={**os.environ, **cluster.base_env()}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0 and "last_admin" in result.stderr, result.stderr
        assert await _only_admins(cluster, [survivor]) == [survivor]
