"""JSON logs, the access log and one request id through a comment's whole trip (issue 12).

The cluster logs JSON lines (``LIVECOMMENTS_LOG_FORMAT=json``) and the comment
service an access log. A comment posted with ``X-Request-ID`` gets that id back,
and the comment service, the dispatcher that routed it and the RTMS node that
delivered it each log one line with it: a ``grep`` of the id shows the trip.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from livecomments.cli.cluster import Cluster
from tests.support import Api, Viewer, unique, wait_until

CLUSTER_ENV = {"LIVECOMMENTS_LOG_FORMAT": "json", "LIVECOMMENTS_ACCESS_LOG": "true"}
MADE = re.compile(r"[0-9a-f]{32}")  # an id the service made
COMMENTS_ROUTE = "/api/videos/{video_id}/comments"


def log_lines(cluster: Cluster, name: str) -> list[str]:
    """What the process ``name`` wrote in this run (stdout and stderr)."""
    proc = cluster.services[name].proc
    with proc.log_path.open("rb") as log_file:
        log_file.seek(proc.log_offset)
        return log_file.read().decode(errors="replace").splitlines()


def records(cluster: Cluster, name: str, needle: str) -> list[dict[str, Any]]:
    """The log records of ``name`` that mention ``needle``; each must be one JSON object."""
    found = []
    for line in log_lines(cluster, name):
        if needle in line:
            record = orjson.loads(line)  # not JSON: the test fails here
            assert isinstance(record, dict), line
            found.append(record)
    return found


def named(cluster: Cluster, kind: str) -> list[str]:
    return [name for name, service in cluster.services.items() if service.kind == kind]


async def logged(cluster: Cluster, name: str, needle: str, count: int = 1) -> list[dict[str, Any]]:
    """The records of ``name`` that mention ``needle``, once there are ``count`` of them."""
    await wait_until(
        lambda: len(records(cluster, name, needle)) >= count, what=f"{needle} in {name}'s log"
    )
    return records(cluster, name, needle)


def access(found: list[dict[str, Any]]) -> dict[str, Any]:
    (line,) = [r for r in found if r["logger"] == "livecomments.access"]
    return line


async def test_one_request_id_follows_a_comment_through_every_process(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("trip")
    token = await api.register(unique("poster"))
    rtms = cluster.services["rtms-1"].url
    # Two viewers on one node: still one line there (per event, never per viewer).
    viewers = [await Viewer(f"{rtms}/stream/{video}", session).connect() for _ in range(2)]
    chosen = f"trip-{uuid.uuid4().hex}"
    try:
        status, body, response = await api.request(
            "POST",
            f"/api/videos/{video}/comments",
            json={"text": "follow me"},
            token=token,
            headers={"X-Request-ID": chosen},
        )
        assert status == 201, body
        assert response.headers["X-Request-ID"] == chosen
        for viewer in viewers:
            (event,) = await viewer.wait_for(1)
            assert event.json()["id"] == body["id"]
    finally:
        for viewer in viewers:
            await viewer.close()
    dispatchers = named(cluster, "dispatcher")

    def whole_trip() -> bool:
        comment = records(cluster, "comment-1", chosen)
        routed = [r for d in dispatchers for r in records(cluster, d, chosen)]
        return len(comment) >= 2 and bool(routed) and bool(records(cluster, "rtms-1", chosen))

    await wait_until(whole_trip, what=f"{chosen} in every process's log")

    trip = {"video_id": video, "comment_id": body["id"], "request_id": chosen}
    comment = records(cluster, "comment-1", chosen)
    (accepted,) = [r for r in comment if r["message"].startswith("comment accepted")]
    assert accepted.items() >= {**trip, "component": "comment-service", "level": "INFO"}.items()
    assert accepted["node_id"] and accepted["seq"] == body["seq"]
    assert accepted["time"].endswith("Z") and accepted["logger"].startswith("livecomments.")

    line = access(comment)
    assert (
        line.items()
        >= {
            "method": "POST",
            "route": COMMENTS_ROUTE,
            "path": f"/api/videos/{video}/comments",
            "status": 201,
            "client": "127.0.0.1",
            "request_id": chosen,
            "component": "comment-service",
        }.items()
    )
    assert line["bytes"] > len(orjson.dumps(body)) and line["duration_ms"] >= 0  # + headers
    assert "aiohttp" in line["user_agent"]

    routed = {d: records(cluster, d, chosen) for d in dispatchers}
    ((by, (dispatched,)),) = [(d, found) for d, found in routed.items() if found]
    assert dispatched.items() >= {**trip, "component": "dispatcher", "node_id": by}.items()
    assert dispatched["nodes"] == ["rtms-1"] and dispatched["message"].startswith("dispatched")

    (delivered,) = records(cluster, "rtms-1", chosen)
    assert delivered.items() >= {**trip, "component": "rtms", "node_id": "rtms-1"}.items()
    assert delivered["message"].startswith("event delivered") and delivered["viewers"] == 2
    assert records(cluster, "rtms-2", chosen) == []  # no viewer there: not sent there


async def test_a_request_without_an_id_gets_one_made_for_it(cluster: Cluster, api: Api) -> None:
    video = unique("made")
    token = await api.register(unique("poster"))
    status, body, response = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "no id"}, token=token
    )
    assert status == 201, body
    made = response.headers["X-Request-ID"]
    assert MADE.fullmatch(made)
    found = await logged(cluster, "comment-1", made, 2)
    (accepted,) = [r for r in found if r["message"].startswith("comment accepted")]
    assert accepted["comment_id"] == body["id"] and accepted["video_id"] == video
    assert access(found)["status"] == 201


@pytest.mark.parametrize(
    ("text", "status", "said"),
    [
        ("great stream, more at https://example.com/watch", 202, "comment held"),  # one link
        ("buy followers now at http://spam.example and http://x.example", 422, "comment refused"),
    ],
)
async def test_a_held_or_refused_post_is_logged_with_its_id(
    cluster: Cluster, api: Api, text: str, status: int, said: str
) -> None:
    video = unique("filtered")
    token = await api.register(unique("poster"))
    chosen = f"filtered-{uuid.uuid4().hex}"
    answered, body, response = await api.request(
        "POST",
        f"/api/videos/{video}/comments",
        json={"text": text},
        token=token,
        headers={"X-Request-ID": chosen},
    )
    assert answered == status and response.headers["X-Request-ID"] == chosen, body
    found = await logged(cluster, "comment-1", chosen, 2)
    (line,) = [r for r in found if r["logger"] != "livecomments.access"]
    assert line["message"].startswith(said) and line["video_id"] == video
    if status == 202:
        assert line["comment_id"] == body["id"]
    else:
        assert line["reason"] == "content_refused" and "comment_id" not in line
    assert access(found)["status"] == status


async def test_error_answers_carry_the_id_and_are_in_the_access_log(
    cluster: Cluster, api: Api
) -> None:
    cases = [
        ("POST", f"/api/videos/{unique('v')}/comments", 401, COMMENTS_ROUTE),  # no token
        ("GET", "/api/no/such/thing", 404, None),
        ("DELETE", "/api/reactions", 405, None),
    ]
    for method, path, expected, route in cases:
        chosen = f"err-{uuid.uuid4().hex}"
        status, body, response = await api.request(
            method, path, json={"text": "x"}, headers={"X-Request-ID": chosen}
        )
        assert status == expected and "error" in body, body
        assert response.headers["X-Request-ID"] == chosen
        line = access(await logged(cluster, "comment-1", chosen))
        assert line["status"] == expected and line["route"] == route
        assert line["method"] == method and line["path"] == path


async def raw_get(cluster: Cluster, head: bytes) -> tuple[int, dict[str, str]]:
    """A GET of /api/reactions with ``head`` among its header lines, sent as bytes
    (a client library would refuse to send what a hostile client sends)."""
    base = cluster.services["comment-1"].url
    port = int(base.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=cluster.ca_file)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(
            b"GET /api/reactions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + head
            + b"\r\nConnection: close\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    headers: dict[str, str] = {}
    for line in rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def test_a_hostile_request_id_is_replaced_never_reflected(cluster: Cluster, api: Api) -> None:
    too_long = "A" * 129
    status, _, response = await api.request(
        "GET", "/api/reactions", headers={"X-Request-ID": too_long}
    )
    assert status == 200 and MADE.fullmatch(response.headers["X-Request-ID"])

    for hostile in (
        b"not ok",
        "caf\u00e9-".encode() + uuid.uuid4().hex.encode(),  # not ASCII (UTF-8 on the wire)
        b"<script>alert(1)</script>",
    ):
        status, headers = await raw_get(cluster, b"X-Request-ID: " + hostile)
        assert status == 200
        assert MADE.fullmatch(headers["x-request-id"]), headers
    # CR/LF: the HTTP parser refuses the request before any of our code sees it;
    # the injected text becomes neither a header of the answer nor a line of a log.
    marker = f"Injected-{uuid.uuid4().hex}"
    for smuggled in (b"evil\r\n\t" + marker.encode() + b": 1", b"evil\r" + marker.encode()):
        status, headers = await raw_get(cluster, b"X-Request-ID: " + smuggled)
        assert status == 400 and marker.lower() not in headers
        assert all(marker not in value for value in headers.values())
    await asyncio.sleep(0.5)  # what would be logged about them is written by now
    for line in log_lines(cluster, "comment-1"):
        assert too_long not in line and "caf\u00e9-" not in line and "<script>" not in line
        if marker in line:  # aiohttp's own report of the refusal: one JSON record
            assert isinstance(orjson.loads(line), dict), line


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_an_outbox_re_dispatch_carries_the_same_request_id(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """With every dispatcher down the comment is stored (201) but not dispatched; once a
    dispatcher is back, the outbox sends it again, under the id of the post."""
    video = unique("resent")
    token = await api.register(unique("poster"))
    viewer = await Viewer(f"{cluster.services['rtms-1'].url}/stream/{video}", session).connect()
    dispatchers = named(cluster, "dispatcher")
    chosen = f"resent-{uuid.uuid4().hex}"
    try:
        for name in dispatchers:
            cluster.services[name].proc.kill()
        try:
            status, body, response = await api.request(
                "POST",
                f"/api/videos/{video}/comments",
                json={"text": "sent again"},
                token=token,
                headers={"X-Request-ID": chosen},
            )
            assert status == 201 and response.headers["X-Request-ID"] == chosen, body
        finally:
            for name in dispatchers:
                await asyncio.to_thread(cluster.restart, name)
        # The restarted dispatchers' logs start now: only the outbox can send it to them.
        await wait_until(
            lambda: any(records(cluster, d, chosen) for d in dispatchers),
            timeout=30,
            what=f"{chosen} re-dispatched",
        )
        routed = [r for d in dispatchers for r in records(cluster, d, chosen)]
        assert routed[0]["comment_id"] == body["id"] and routed[0]["video_id"] == video
        assert routed[0]["nodes"] == ["rtms-1"]
        (event,) = await viewer.wait_for(1, timeout=20)
        assert event.json()["id"] == body["id"]
        failed = [
            r for r in records(cluster, "comment-1", chosen) if "not dispatched" in r["message"]
        ]
        assert failed and failed[0]["level"] == "ERROR" and failed[0]["comment_id"] == body["id"]
    finally:
        await viewer.close()
        for name in dispatchers:
            if not cluster.services[name].proc.alive():
                await asyncio.to_thread(cluster.restart, name)
