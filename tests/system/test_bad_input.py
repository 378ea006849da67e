"""Bad input gets a clear JSON error with a stable code, and nothing is stored."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from pymongo import AsyncMongoClient

from livecomments.cli.cluster import Cluster
from tests.support import Api, Viewer, on_own_session, staff, unique


async def stored(cluster: Cluster, video: str) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        return await client[cluster.namespace]["comments"].count_documents({"video_id": video})
    finally:
        await client.close()


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


@pytest.fixture(scope="module")
async def token(cluster: Cluster) -> str:
    """One user for the module: each test posts on a video of its own, no limits apply."""
    return await on_own_session(cluster, lambda api: api.register(unique("tester")))


BAD_BODIES: list[tuple[str, bytes, str, int, str]] = [
    # (case, body, content type, status, code)
    ("malformed json", b'{"text": "hi"', "application/json", 400, "invalid_json"),
    ("not an object", b'["hi"]', "application/json", 400, "invalid_json"),
    ("empty text", b'{"text": "   "}', "application/json", 400, "empty_text"),
    ("oversized text", orjson.dumps({"text": "x" * 501}), "application/json", 400, "text_too_long"),
    (
        "oversized body",
        orjson.dumps({"text": "x" * 20000}),
        "application/json",
        413,
        "payload_too_large",
    ),
    ("number text", b'{"text": 42}', "application/json", 400, "invalid_type"),
    ("null text", b'{"text": null}', "application/json", 400, "invalid_type"),
    ("missing text", b"{}", "application/json", 400, "invalid_type"),
    ("operator injection", b'{"text": {"$gt": ""}}', "application/json", 400, "invalid_type"),
    (
        "operator in parent",
        b'{"text": "hi", "parent_id": {"$ne": null}}',
        "application/json",
        400,
        "invalid_id",
    ),
    ("unknown field", b'{"text": "hi", "$where": "1"}', "application/json", 400, "unknown_field"),
    ("array text", b'{"text": ["a", "b"]}', "application/json", 400, "invalid_type"),
    ("wrong content type", b'{"text": "hi"}', "text/plain", 415, "unsupported_media_type"),
    ("form body", b"text=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("invalid utf-8", b'{"text": "\xff\xfe"}', "application/json", 400, "invalid_encoding"),
    (
        "control characters",
        b'{"text": "bell\\u0007"}',
        "application/json",
        400,
        "invalid_characters",
    ),
    (
        "bidi override",
        '{"text": "abc\u202edef"}'.encode(),
        "application/json",
        400,
        "invalid_characters",
    ),
    ("lone surrogate", b'{"text": "\\ud800"}', "application/json", 400, "invalid_json"),
    (
        "deeply nested",
        b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "application/json",
        400,
        "invalid_json",
    ),
    (
        "unknown parent",
        b'{"text": "hi", "parent_id": "12345"}',
        "application/json",
        404,
        "parent_not_found",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "ctype", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_comment_bodies_are_refused_and_nothing_is_stored(
    cluster: Cluster,
    api: Api,
    token: str,
    case: str,
    body: bytes,
    ctype: str,
    status: int,
    code: str,
) -> None:
    video = unique("bad")
    got, answer, response = await api.request(
        "POST",
        f"/api/videos/{video}/comments",
        data=body,
        token=token,
        headers={"Content-Type": ctype},
    )
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert response.content_type == "application/json"
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    assert await stored(cluster, video) == 0
    # ... and the service keeps serving.
    await api.post(video, "still fine", token)
    assert await stored(cluster, video) == 1


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        "Bearer not.a.jwt",
        # alg "none": unsigned, must be refused whatever its claims say
        "Bearer "
        + b64({"alg": "none", "typ": "JWT"})
        + "."
        + b64(
            {
                "sub": "1",
                "name": "x",
                "role": "admin",
                "iss": "livecomments",
                "iat": int(time.time()),
                "exp": int(time.time()) + 600,
            }
        )
        + ".",
        # signed with the wrong key
        "Bearer "
        + jwt.encode(
            {
                "sub": "1",
                "name": "x",
                "role": "admin",
                "iss": "livecomments",
                "iat": int(time.time()),
                "exp": int(time.time()) + 600,
            },
            "a-different-secret-that-is-long-enough!!",
            algorithm="HS256",
        ),
    ],
    ids=["missing", "basic", "empty bearer", "garbage", "alg none", "wrong key"],
)
async def test_posting_needs_a_valid_token(cluster: Cluster, api: Api, header: str | None) -> None:
    video = unique("auth")
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", data=b'{"text": "hi"}', headers=headers
    )
    assert status == 401, body
    assert body["error"]["code"] in ("unauthorized", "invalid_token")
    assert await stored(cluster, video) == 0


async def test_expired_token_is_refused(cluster: Cluster, api: Api) -> None:
    now = int(time.time())
    expired = jwt.encode(
        {
            "sub": "1",
            "name": "x",
            "role": "viewer",
            "iss": "livecomments",
            "iat": now - 7200,
            "exp": now - 3600,
            "jti": "old-token",
        },
        cluster.jwt_secret,
        algorithm="HS256",
    )
    status, body, _ = await api.request(
        "POST", "/api/videos/v/comments", json={"text": "hi"}, token=expired
    )
    assert (status, body["error"]["code"]) == (401, "token_expired")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/videos/bad%20id/comments", 400, "invalid_video_id"),
        ("/api/videos/" + "x" * 65 + "/comments", 400, "invalid_video_id"),
        ("/api/videos/ok/comments?limit=0", 400, "invalid_query"),
        ("/api/videos/ok/comments?limit=abc", 400, "invalid_query"),
        ("/api/videos/ok/comments?before=-1", 400, "invalid_query"),
        ("/api/videos/ok/comments?before=5&after=1", 400, "invalid_query"),
        ("/api/nope", 404, "not_found"),
    ],
)
async def test_bad_queries_get_json_errors(api: Api, path: str, status: int, code: str) -> None:
    got, body, _ = await api.request("GET", path)
    assert (got, body["error"]["code"]) == (status, code), body


async def test_unknown_video_has_empty_history(api: Api) -> None:
    page = await api.page(unique("never"))
    assert page["items"] == [] and page["head"] == 0 and page["next_before"] is None


async def test_accounts_validate_and_refuse_bad_credentials(api: Api) -> None:
    name = unique("acct")
    await api.register(name, "right password")
    status, body, _ = await api.request(
        "POST",
        "/api/auth/register",
        json={"username": name.upper(), "password": "whatever it takes"},
    )
    assert (status, body["error"]["code"]) == (409, "username_taken")
    status, body, _ = await api.request(
        "POST", "/api/auth/login", json={"username": name, "password": "wrong password"}
    )
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    status, body, _ = await api.request(
        "POST", "/api/auth/login", json={"username": {"$gt": ""}, "password": {"$gt": ""}}
    )
    assert (status, body["error"]["code"]) == (400, "invalid_type")
    status, body, _ = await api.request(
        "POST", "/api/auth/register", json={"username": "a b", "password": "long enough"}
    )
    assert (status, body["error"]["code"]) == (400, "invalid_username")
    status, body, _ = await api.request(
        "POST", "/api/auth/login", json={"username": name, "password": "right password"}
    )
    assert status == 200 and body["user"]["username"] == name and body["token"]


JUNK_IDS = [
    "abc",
    "-1",
    "1-",
    "-",
    "1-2-3",
    "99999999999999999999999-1",
    "1-99999999999999999999",
    "١-٢",  # noqa: RUF001 - non-ASCII digits on purpose
    "0-0",
    " ",
    "1-1; drop",
    "%00",
]


async def test_junk_last_event_ids_start_a_live_stream(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, token: str
) -> None:
    video = unique("junk")
    rtms = cluster.services["rtms-1"].url
    viewers = [
        await Viewer(f"{rtms}/stream/{video}", session, headers={"Last-Event-ID": junk}).connect()
        for junk in JUNK_IDS
    ] + [
        await Viewer(f"{rtms}/stream/{video}?last_event_id={junk}", session).connect()
        for junk in ("abc", "1-", "%ff%fe", "9" * 70)
    ]
    try:
        assert all(v.status == 200 for v in viewers)
        await api.post(video, "after the junk", token)
        for viewer in viewers:
            (event,) = await viewer.wait_for(1)
            assert event.json()["text"] == "after the junk"
    finally:
        for viewer in viewers:
            await viewer.close()


async def test_rtms_refuses_bad_requests_and_keeps_serving(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    rtms = cluster.services["rtms-2"].url
    for path, status, code in [
        ("/stream/bad%20id", 400, "invalid_video_id"),
        ("/stream/" + "v" * 65, 400, "invalid_video_id"),
        ("/stream/", 400, "invalid_video_id"),
        ("/nothing", 404, "not_found"),
    ]:
        async with session.get(rtms + path) as response:
            assert response.status == status
            assert (await response.json())["error"]["code"] == code
    async with session.post(rtms + "/stream/x", data=b"hi") as response:
        assert response.status == 405
    # Garbage on the raw socket, then a request head that never ends.
    host, port = rtms.rsplit("/", 1)[1].split(":")
    ssl_ctx = session.connector._ssl  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ssl_ctx)
    writer.write(b"\x00\x01garbage\r\n\r\n")
    assert (await reader.read(200)).startswith(b"HTTP/1.1 400")
    writer.close()
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ssl_ctx)
    writer.write(b"GET /stream/x HTTP/1.1\r\n" + b"X-Long: " + b"a" * 10000)
    assert (await reader.read(200)).startswith(b"HTTP/1.1 431")
    writer.close()
    async with session.get(rtms + "/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


# Every endpoint that takes a JSON body, with the field it reads first.
BODY_ENDPOINTS = [
    ("POST", "/api/auth/register", "username"),
    ("POST", "/api/auth/login", "username"),
    ("POST", "/api/videos/{video}/comments", "text"),
    ("PATCH", "/api/videos/{video}/comments/123", "text"),
    ("POST", "/api/comments/123/reports", "reason"),
    ("POST", "/api/moderation/reports/123/resolve", "action"),
    ("PUT", "/api/videos/{video}/bans/123", "reason"),
    ("PUT", "/api/bans/123", "duration_seconds"),
    ("PATCH", "/api/videos/{video}/settings", "slow_mode_seconds"),
    ("PUT", "/api/users/123/role", "role"),
]


def bad_bodies(field: str) -> list[tuple[str, bytes, str, int]]:
    """(case, body, content type, expected status) for a body whose first field is ``field``."""
    return [
        ("operator injection", orjson.dumps({field: {"$gt": ""}}), "application/json", 400),
        ("operator key", orjson.dumps({"$where": "sleep(1)"}), "application/json", 400),
        ("wrong content type", orjson.dumps({field: "x"}), "text/plain", 415),
        ("invalid utf-8", b'{"' + field.encode() + b'": "\xff\xfe"}', "application/json", 400),
        ("control characters", orjson.dumps({field: "a\x07b"}), "application/json", 400),
        # 400 (too deep to parse) or 413 where the endpoint takes only small bodies
        ("deeply nested", b'{"x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "application/json", 0),
        ("not an object", b"[1, 2]", "application/json", 400),
        ("oversized", orjson.dumps({field: "x" * 70_000}), "application/json", 413),
    ]


async def test_every_json_endpoint_refuses_bad_bodies_and_keeps_serving(
    cluster: Cluster, api: Api
) -> None:
    """All of it as an admin (who passes every role check), so the body is what is judged."""
    admin, _ = await staff(api, cluster, "admin")
    video = unique("sweep")
    before = await snapshot(cluster)
    for method, template, field in BODY_ENDPOINTS:
        path = template.format(video=video)
        for case, body, ctype, status in bad_bodies(field):
            got, answer, response = await api.request(
                method, path, data=body, token=admin, headers={"Content-Type": ctype}
            )
            assert got == status or (not status and got in (400, 413)), (path, case, answer)
            assert response.content_type == "application/json", (path, case)
            assert answer["error"]["code"] and answer["error"]["message"], (path, case)
    assert await snapshot(cluster) == before  # nothing stored, nothing changed
    status, _, _ = await api.request("GET", "/healthz")
    assert status == 200


async def snapshot(cluster: Cluster) -> dict[str, int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        db = client[cluster.namespace]
        return {
            name: await db[name].count_documents({})
            for name in ("comments", "held", "users", "reports", "bans", "videos")
        }
    finally:
        await client.close()


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "99999999999999999999999"},
        {"sub": "-1"},
        {"sub": "0"},
        {"sub": " 5 "},
        {"sub": "1_0"},
        {"name": "\u202e\x00"},
        {"name": {"$gt": ""}},
        {"role": "superuser"},
    ],
    ids=["huge sub", "negative sub", "zero sub", "padded sub", "underscore sub",
         "control name", "object name", "unknown role"],
)  # fmt: skip
async def test_signed_tokens_with_bad_claims_are_refused(
    cluster: Cluster, api: Api, claims: dict[str, Any]
) -> None:
    """Even a token signed with our secret is input: its claims are checked before use."""
    now = int(time.time())
    base = {"sub": "12345", "name": "someone", "role": "viewer", "iss": "livecomments",
            "iat": now, "exp": now + 600, "jti": "x"}  # fmt: skip
    token = jwt.encode({**base, **claims}, cluster.jwt_secret, algorithm="HS256")
    for method, path in (("GET", "/api/auth/me"), ("POST", "/api/videos/v/comments")):
        status, body, _ = await api.request(method, path, json={"text": "hi"}, token=token)
        assert (status, body["error"]["code"]) == (401, "invalid_token"), (method, body)
