"""The OpenAPI document: it names every route, it is served, and the service keeps to it.

The fuzz test sends schemathesis-generated requests (valid and invalid ones) to
the running cluster, with real tokens and ids of real comments, reports and
users, and checks every answer against the document; then every document in
the store must still be well-formed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from pymongo import AsyncMongoClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from livecomments.cli.cluster import Cluster
from livecomments.comment_service.api.openapi import openapi_document
from livecomments.comment_service.app import build_app
from livecomments.comment_service.auth import ROLES
from livecomments.comment_service.moderation import REPORT_REASONS, REPORT_STATES
from livecomments.comment_service.reactions import EMOJI
from livecomments.kernel.settings import CommentServiceSettings, load
from tests.support import Api, staff, unique

HELD_TEXT = "great stream, more at https://example.com/watch"  # one link: held for review
LOGIN_ATTEMPTS = 3
# One real limit, so that a 429 and its Retry-After can be checked against the document.
CLUSTER_ENV = {"LIVECOMMENTS_LOGIN_LIMIT_ACCOUNT": f"{LOGIN_ATTEMPTS}/600"}
EXAMPLES = 12  # per operation and kind of case; about 1000 cases in all, ~10 s on 2 cores
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def served_settings(cluster: Cluster) -> CommentServiceSettings:
    """The settings the cluster's comment service runs with (as it builds them)."""
    return load(CommentServiceSettings, environ=cluster.services["comment-1"].env)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


# -- the document and the route table ---------------------------------------------


def test_document_covers_the_route_table_exactly() -> None:
    settings = CommentServiceSettings(jwt_secret="x" * 32)
    app = build_app(settings)
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    # aiohttp answers HEAD on every GET route by itself; the document lists the GET.
    heads = {(method, path) for method, path in routes if method == "HEAD"}
    assert {("GET", path) for _, path in heads} <= routes
    document = openapi_document(settings)
    documented = {(method, path) for method, path, _ in operations(document)}
    assert documented == routes - heads, (
        f"undocumented: {sorted(routes - heads - documented)}, "
        f"no such route: {sorted(documented - routes)}"
    )


def test_the_document_is_valid_openapi_with_every_path_parameter() -> None:
    document = openapi_document(CommentServiceSettings(jwt_secret="x" * 32))
    schemathesis.openapi.from_dict(orjson.loads(orjson.dumps(document))).validate()
    for method, path, operation in operations(document):
        in_path = set(re.findall(r"{(\w+)}", path))
        params = operation.get("parameters", [])
        assert {p["name"] for p in params if p["in"] == "path"} == in_path, (method, path)
        assert all(p["required"] for p in params if p["in"] == "path"), (method, path)
        assert operation["description"] and "Auth: " in operation["description"]
        assert "Rate limit: " in operation["description"]
        assert ("security" in operation and operation["security"] != []) == (
            "x-required-role" in operation
        ), (method, path)
    schemas = document["components"]["schemas"]
    for ref in re.findall(rb'"\$ref":"#/components/schemas/(\w+)"', orjson.dumps(document)):
        assert ref.decode() in schemas


def test_document_states_the_limits_of_its_settings() -> None:
    settings = CommentServiceSettings(
        jwt_secret="x" * 32, max_comment_chars=280, history_page_max=30, react_limit_user="7/9"
    )
    document = openapi_document(settings)
    assert openapi_document(settings) is document  # built once per settings
    schemas = document["components"]["schemas"]
    assert schemas["CommentText"]["maxLength"] == 280
    assert schemas["ReactionName"]["enum"] == list(EMOJI)
    comments = document["paths"]["/api/videos/{video_id}/comments"]["get"]
    (limit,) = [p for p in comments["parameters"] if p["name"] == "limit"]
    assert limit["schema"]["maximum"] == 30
    react = document["paths"]["/api/videos/{video_id}/comments/{comment_id}/reactions/{reaction}"]
    assert "`react_limit_user` = 7/9" in react["put"]["description"]
    assert "Retry-After" in react["put"]["responses"]["429"]["headers"]


# -- the running service ------------------------------------------------------------


async def test_the_service_serves_the_document_of_its_settings(cluster: Cluster, api: Api) -> None:
    status, body, response = await api.request("GET", "/api/openapi.json")
    assert status == 200 and response.content_type == "application/json"
    assert body == orjson.loads(orjson.dumps(openapi_document(served_settings(cluster))))
    assert body["openapi"] == "3.1.0"
    # The document states the limits the service runs with.
    assert (
        f"`login_limit_account` = {LOGIN_ATTEMPTS}/600"
        in body["paths"]["/api/auth/login"]["post"]["description"]
    )
    assert (
        "`post_limit_user` = 100000/1"
        in body["paths"]["/api/videos/{video_id}/comments"]["post"]["description"]
    )


async def test_rate_limited_answers_are_documented(cluster: Cluster, api: Api) -> None:
    status, document, _ = await api.request("GET", "/api/openapi.json")
    assert status == 200
    name = unique("limited")
    await api.register(name)
    login = schemathesis.openapi.from_dict(document)["/api/auth/login"]["POST"]
    case = login.Case(
        body={"username": name, "password": "not the password"}, media_type="application/json"
    )

    def attempts() -> list[Any]:
        with requests.Session() as http:
            return [
                case.call(base_url=api.base, session=http, verify=cluster.ca_file, timeout=10)
                for _ in range(LOGIN_ATTEMPTS + 1)
            ]

    responses = await asyncio.to_thread(attempts)
    assert [r.status_code for r in responses] == [401] * LOGIN_ATTEMPTS + [429]
    for response in responses:
        case.validate_response(response, checks=CHECKS)
    assert int(responses[-1].headers["retry-after"][0]) >= 1


# Each draws nothing on its own: format characters (zero-width space and joiners,
# BOM, soft hyphen, word joiner, a tag), combining marks with nothing to mark,
# variation selectors, Hangul fillers and the blank braille pattern.
INVISIBLE_TEXTS = [
    "\u200b",
    "\u200d\u200c",
    "\ufeff",
    "\u00ad",
    "\u2060",
    "\U000e0020",
    "\u0301\u20e3",
    "\ufe0f",
    "\u034f",
    "\u3164",
    "\u115f\u1160",
    "\u2800",
]


async def test_texts_that_draw_nothing_are_refused_as_documented(api: Api) -> None:
    status, document, _ = await api.request("GET", "/api/openapi.json")
    assert "visible" in document["components"]["schemas"]["CommentText"]["description"]
    token = await api.register(unique("blank"))
    video = unique("blank")
    for text in INVISIBLE_TEXTS:
        status, body, _ = await api.request(
            "POST", f"/api/videos/{video}/comments", json={"text": text}, token=token
        )
        assert status == 400 and body["error"]["code"] == "empty_text", (text, body)
    # Invisible characters inside a visible text are fine: ZWJ joins emoji.
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f"
    assert (await api.post(video, family, token))["text"] == family
    page = await api.page(video)
    assert [item["text"] for item in page["items"]] == [family]


def example_path(path: str) -> str:
    values = {"video_id": "v1", "comment_id": "1", "user_id": "1", "report_id": "1"}
    values["reaction"] = next(iter(EMOJI))
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)


async def test_the_documented_auth_rules_are_the_enforced_ones(cluster: Cluster, api: Api) -> None:
    """Without a token every secured operation is 401, no public one is; with a viewer's
    token every moderator or admin operation is 403."""
    viewer = await api.register(unique("plain"))
    for method, path, operation in operations(openapi_document(served_settings(cluster))):
        url = example_path(path)
        status, body, _ = await api.request(method, url, allow_redirects=False)
        if operation.get("security"):
            assert status == 401, (method, path, body)
            assert str(status) in operation["responses"]
        else:
            assert status != 401, (method, path, body)
        if operation.get("x-required-role") in ("moderator", "admin"):
            status, body, _ = await api.request(method, url, token=viewer, json={})
            assert status == 403 and body["error"]["code"] == "forbidden", (method, path, body)


# -- fuzzing ------------------------------------------------------------------------------


@dataclass
class Run:
    """Some generated cases of one operation, sent with one token."""

    method: str
    path: str
    mode: GenerationMode
    examples: int
    who: str = "anonymous"  # the role whose token is sent
    token: str | None = None
    path_parameters: dict[str, str] = field(default_factory=dict)
    aimed: bool = False  # at seeded objects with the right token: something must succeed
    statuses: set[int] = field(default_factory=set)  # what the service answered

    def __str__(self) -> str:
        fixed = f" at {self.path_parameters}" if self.path_parameters else ""
        return f"{self.method} {self.path} ({self.mode.value}, as {self.who}{fixed})"


@dataclass
class FuzzResult:
    cases: int = 0
    failures: list[str] = field(default_factory=list)


def fuzz(schema: Any, base_url: str, ca_file: str, runs: list[Run]) -> FuzzResult:
    """Send every run's cases and check the answers; collects failures rather than stopping."""
    result = FuzzResult()
    with requests.Session() as http:
        for run in runs:
            operation = schema[run.path][run.method]
            failed = send_cases(operation, http, base_url, ca_file, run, result)
            if failed:
                result.failures.append(f"{run}: {len(failed)} failed, e.g.\n" + failed[0])
    return result


def send_cases(
    operation: Any,
    http: requests.Session,
    base_url: str,
    ca_file: str,
    run: Run,
    result: FuzzResult,
) -> list[str]:
    """Up to ``run.examples`` cases; the failures, described with a curl command each."""
    headers = {"Authorization": f"Bearer {run.token}"} if run.token else {}
    failed: list[str] = []

    @hypothesis.settings(
        max_examples=run.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # report failures as found: no shrinking
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.given(
        case=operation.as_strategy(
            generation_mode=run.mode, path_parameters=run.path_parameters or None
        )
    )
    def send(case: Any) -> None:
        result.cases += 1
        try:
            response = case.call(
                base_url=base_url, session=http, headers=headers, verify=ca_file, timeout=10
            )
            run.statuses.add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as exc:
            failed.append(str(exc))
        except requests.RequestException as exc:
            failed.append(f"{case.as_curl_command(headers=headers)}\n{exc!r}")

    send()
    return failed


@dataclass
class Seeds:
    """Real users, comments, held comments, reports and bans for the fuzzer to aim at."""

    tokens: dict[str, str]  # by role, and "leaving": logged out over and over by the fuzzer
    path_parameters: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


async def seed(api: Api, cluster: Cluster, flag_threshold: int) -> Seeds:
    viewer, author, leaving = [await api.register(unique(n)) for n in ("fv", "fa", "fl")]
    admin, _ = await staff(api, cluster, "admin")
    moderator_name = unique("fm")
    moderator_id = await api.user_id(await api.register(moderator_name))
    status, body, _ = await api.request(
        "PUT", f"/api/users/{moderator_id}/role", json={"role": "moderator"}, token=admin
    )
    assert status == 200, body
    moderator = await api.login(moderator_name)
    seeds = Seeds({"viewer": viewer, "moderator": moderator, "admin": admin, "leaving": leaving})
    video = unique("fuzz")

    async def comment(token: str, text: str, **extra: Any) -> str:
        status, body, _ = await api.request(
            "POST", f"/api/videos/{video}/comments", json={"text": text, **extra}, token=token
        )
        assert status in (201, 202), body
        return str(body["id"])

    async def moderate(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer, _ = await api.request(method, path, json=body, token=moderator)
        assert status < 300, answer
        return dict(answer)

    fixed = seeds.path_parameters
    comments = "/api/videos/{video_id}/comments"
    one = comments + "/{comment_id}"
    for method, path in (("POST", comments), ("GET", comments),
                         ("GET", "/api/videos/{video_id}/stream"),
                         ("GET", "/api/videos/{video_id}/settings"),
                         ("PATCH", "/api/videos/{video_id}/settings"),
                         ("GET", "/api/videos/{video_id}/bans"),
                         ("GET", "/api/videos/{video_id}/live"),
                         ("GET", "/api/videos/{video_id}/replay")):  # fmt: skip
        fixed[method, path] = {"video_id": video}
    for method, path in (("GET", one), ("PATCH", one), ("GET", one + "/replies"),
                         ("PUT", one + "/reactions/{reaction}"),
                         ("DELETE", one + "/reactions/{reaction}")):  # fmt: skip
        target = await comment(author, f"seed for {method} {path}")
        fixed[method, path] = {"video_id": video, "comment_id": target}
        await comment(viewer, "a reply", parent_id=target)
    # The viewer may delete their own comment; someone else's gets a 403.
    fixed["DELETE", one] = {"video_id": video, "comment_id": await comment(viewer, "mine")}
    fixed["POST", "/api/comments/{comment_id}/reports"] = {
        "comment_id": await comment(author, "report me")
    }
    # Enough reports against the author to flag them, one of them to resolve.
    for n in range(flag_threshold):
        reported = await comment(author, f"report me too ({n})")
        report = await moderate("POST", f"/api/comments/{reported}/reports", {"reason": "spam"})
    fixed["POST", "/api/moderation/reports/{report_id}/resolve"] = {"report_id": report["id"]}
    fixed["DELETE", "/api/moderation/flagged-users/{user_id}"] = {
        "user_id": await api.user_id(author)
    }
    for verb in ("approve", "deny"):
        held = await comment(author, f"{HELD_TEXT}?{verb}")
        fixed["POST", f"/api/moderation/held/{{comment_id}}/{verb}"] = {"comment_id": held}
    # Bans and timeouts to list, and a user to ban again and unban; the admin
    # changes another user's role back and forth.
    victim = await api.user_id(await api.register(unique("fx")))
    await moderate("PUT", f"/api/bans/{victim}", {"reason": "spam", "duration_seconds": 600})
    await moderate("PUT", f"/api/videos/{video}/bans/{victim}", {"reason": "rude"})
    fixed["PUT", "/api/users/{user_id}/role"] = {
        "user_id": await api.user_id(await api.register(unique("fp")))
    }
    for prefix in ("/api", "/api/videos/{video_id}"):
        for method in ("PUT", "DELETE"):
            fixed[method, prefix + "/bans/{user_id}"] = {"user_id": victim}
            if "{video_id}" in prefix:
                fixed[method, prefix + "/bans/{user_id}"]["video_id"] = video
    return seeds


def plan(document: dict[str, Any], seeds: Seeds, examples: int) -> list[Run]:
    """Valid and invalid cases of every operation, plus valid ones aimed at real objects.

    Each operation gets the token of the role it needs, and a few cases with the
    next lower role's token. Reads aimed at real objects run again at the end,
    when the objects have been edited, reacted to, deleted, approved.
    """
    positive, negative = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    lower = {"moderator": "viewer", "admin": "moderator"}
    runs, again = [], []
    for method, path, operation in operations(document):
        role = operation.get("x-required-role")
        who = "leaving" if path == "/api/auth/logout" else role or "anonymous"
        token = seeds.tokens.get(who)
        fixed = seeds.path_parameters.get((method, path), {})
        runs.append(Run(method, path, positive, examples, who, token))
        if operation.get("parameters") or operation.get("requestBody"):
            runs.append(Run(method, path, negative, examples, who, token))
        if fixed:
            runs.append(Run(method, path, positive, examples, who, token, fixed, aimed=True))
        if role in lower:
            other = lower[role]
            runs.append(Run(method, path, positive, 3, other, seeds.tokens[other], fixed))
        if method == "GET":
            again.append(Run(method, path, positive, 5, who, token, fixed))
    return runs + again


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_fuzzed_requests_get_documented_answers_and_store_nothing_malformed(
    cluster: Cluster, api: Api
) -> None:
    status, document, _ = await api.request("GET", "/api/openapi.json")
    assert status == 200
    settings = served_settings(cluster)
    seeds = await seed(api, cluster, settings.flag_threshold)
    covered = {(method, path) for method, path, _ in operations(document)}
    assert set(seeds.path_parameters) <= covered
    runs = plan(document, seeds, examples=EXAMPLES)
    schema = schemathesis.openapi.from_dict(document)
    started = time.monotonic()
    result = await asyncio.to_thread(fuzz, schema, api.base, cluster.ca_file, runs)
    elapsed = time.monotonic() - started
    print(f"fuzzed {result.cases} cases in {len(runs)} runs in {elapsed:.1f} s")
    assert not result.failures, "\n\n".join(result.failures)
    # The aimed runs reached the objects: some of their answers were successes.
    for run in runs:
        assert not run.aimed or min(run.statuses) < 400, (str(run), run.statuses)
    await assert_store_is_well_formed(cluster, settings)
    status, health, _ = await api.request("GET", "/healthz")
    assert status == 200 and health["status"] == "ok"


# -- the store after the fuzzing ------------------------------------------------------------

VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
USERNAME = re.compile(r"[A-Za-z0-9_]{3,32}")
BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
BLANK = set("\u115f\u1160\u3164\uffa0\u2800")  # Hangul fillers, the blank braille pattern


def is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 63


def is_video(value: Any) -> bool:
    return isinstance(value, str) and VIDEO_ID.fullmatch(value) is not None


def text_problem(value: Any, max_chars: int, *, blank_ok: bool = False) -> str | None:
    """Why ``value`` is not a text the service may store, or None."""
    if blank_ok and value == "":
        return None
    if not isinstance(value, str):
        return f"not a string: {value!r}"
    if unicodedata.normalize("NFC", value) != value:
        return f"not NFC: {value!r}"
    if value.strip() != value:
        return f"untrimmed: {value!r}"
    if not 1 <= len(value) <= max_chars:
        return f"{len(value)} characters"
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") or ch in BIDI:
            return f"contains U+{ord(ch):04X}: {value!r}"
    if all(unicodedata.category(ch)[0] in "MZ" or unicodedata.category(ch) == "Cf" or ch in BLANK
           for ch in value):  # fmt: skip
        return f"nothing visible: {value!r}"
    return None


def reactions_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"reactions not a dict: {value!r}"
    for name, count in value.items():
        if name not in EMOJI or not isinstance(count, int) or count < 1:
            return f"bad reaction count {name!r}: {count!r}"
    return None


def comment_problems(doc: dict[str, Any], max_chars: int) -> list[str | None]:
    status = doc.get("status")
    problems = [
        None if is_id(doc.get("user_id")) else "user_id",
        None if USERNAME.fullmatch(str(doc.get("author"))) else f"author {doc.get('author')!r}",
        None if doc.get("parent_id") is None or is_id(doc["parent_id"]) else "parent_id",
        None if isinstance(doc.get("created_at"), dt.datetime) else "created_at",
        reactions_problem(doc.get("reactions") or {}),
    ]
    if status == "deleted":
        problems.append(None if "text" not in doc else "a deleted comment kept its text")
    else:
        problems.append(text_problem(doc.get("text"), max_chars))
    return problems


def stored_problems(
    collection: str, doc: dict[str, Any], settings: CommentServiceSettings
) -> list[str]:
    """Everything wrong with one stored document."""
    chars = settings.max_comment_chars
    checks: list[str | None] = []
    if collection == "videos":
        slow = doc.get("slow_mode", 0)  # absent: a video with only a start (replay)
        live_at = doc.get("live_at")
        checks += [
            None if is_video(doc["_id"]) else "_id",
            None if isinstance(slow, int) and 0 <= slow <= settings.max_slow_mode else "slow_mode",
            None if live_at is None or isinstance(live_at, dt.datetime) else "live_at",
            None if doc.get("live_at_source") in (None, "staff", "first_comment") else "source",
        ]
    elif collection == "bans":
        scope = doc.get("scope")
        expires = doc.get("expires_at")
        checks += [
            None if scope == "*" or is_video(scope) else f"scope {scope!r}",
            None if is_id(doc.get("user_id")) and is_id(doc.get("by")) else "ids",
            None if doc["_id"] == f"{scope}:{doc.get('user_id')}" else "_id",
            text_problem(doc.get("reason"), 200, blank_ok=True),
            None if expires is None or expires > doc["created_at"] else "expires_at",
        ]
    else:
        checks.append(None if is_id(doc["_id"]) else f"_id {doc['_id']!r}")
    if collection == "users":
        checks += [
            None if USERNAME.fullmatch(doc.get("username", "")) else "username",
            None if doc.get("username_key") == doc.get("username", "").lower() else "key",
            None if doc.get("role") in ROLES else f"role {doc.get('role')!r}",
            None if str(doc.get("password_hash")).startswith("$argon2") else "password_hash",
        ]
    elif collection == "reports":
        checks += [
            None if doc.get("reason") in REPORT_REASONS else f"reason {doc.get('reason')!r}",
            None if doc.get("status") in REPORT_STATES else f"status {doc.get('status')!r}",
            text_problem(doc.get("note"), 500, blank_ok=True),
            None if is_id(doc.get("comment_id")) and is_id(doc.get("reporter_id")) else "ids",
            None if is_video(doc.get("video_id")) else "video_id",
        ]
    elif collection == "held":
        checks += [
            None if doc.get("state") in ("pending", "approved", "denied") else "state",
            None if is_video(doc.get("video_id")) else "video_id",
            *comment_problems(doc, chars),
        ]
    elif collection == "comments":
        checks += [
            None if is_video(doc.get("video_id")) else "video_id",
            None if isinstance(doc.get("seq"), int) and doc["seq"] >= 1 else "seq",
        ]
        if doc.get("marker"):
            snapshot = doc.get("snapshot") or {}
            checks += [
                None if doc["marker"] in ("comment.updated", "comment.deleted") else "marker",
                None if is_id(doc.get("target_id")) else "target_id",
                None if snapshot.get("text") is None else text_problem(snapshot["text"], chars),
            ]
        else:
            checks += [
                None if doc.get("status") in ("visible", "deleted") else "status",
                *comment_problems(doc, chars),
            ]
    return [problem for problem in checks if problem]


async def assert_store_is_well_formed(cluster: Cluster, settings: CommentServiceSettings) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cluster.backends.mongo_uri)
    try:
        db = client[cluster.namespace]
        found: list[str] = []
        counts: dict[str, int] = {}
        for name in ("comments", "held", "users", "reports", "bans", "videos"):
            async for doc in db[name].find({}):
                counts[name] = counts.get(name, 0) + 1
                found += [
                    f"{name} {doc['_id']!r}: {p}" for p in stored_problems(name, doc, settings)
                ]
    finally:
        await client.close()
    assert not found, "\n".join(found[:50])
    assert counts.get("comments") and counts.get("users"), counts
