"""The comment service's HTTP surface against hostile or unlucky browsers and clients (issue 10).

- A history page costs in proportion to its ``limit``, not to the size of the
  recent-comments cache; anonymous history reads are limited per address
  (logged-in readers per user); older pages carry cache headers, the head none.
- CORS for the configured origins (preflights, errors included), proven in
  Chromium from a second origin; the viewer page's Content-Security-Policy
  (no violation while it loads, streams and posts), frame-ancestors, HSTS.
- The page follows a ``moved`` event only to an origin the server lists.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.cli.launcher import free_port
from livecomments.kernel.redis.keys import Keys
from tests.support import PASSWORD, Api, cli, client_session, unique

ALLOWED_PORT, OTHER_PORT = free_port(), free_port()
ALLOWED = f"http://127.0.0.1:{ALLOWED_PORT}"  # a page origin the API lets in
OTHER = f"http://127.0.0.1:{OTHER_PORT}"  # one it does not
HISTORY_BURST = 60
CLUSTER_ENV = {
    "LIVECOMMENTS_CORS_ORIGINS": ALLOWED,
    "LIVECOMMENTS_HISTORY_LIMIT_IP": f"{HISTORY_BURST}/600",
    "LIVECOMMENTS_HISTORY_LIMIT_USER": f"{HISTORY_BURST}/600",
    "LIVECOMMENTS_FRAME_ANCESTORS": "'self' https://embed.example",
    "LIVECOMMENTS_RTMS_ORIGINS": "https://*.rtms.example",
    "LIVECOMMENTS_RECENT_CACHE_SIZE": "40",
}
LIVE = 10000  # ms a live change may take to reach a page


def source(cluster: Cluster, address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (another 127.0.0.x)."""
    return client_session(cluster.ca_file, source=address)


async def entries_read(api: Api) -> int:
    status, health, _ = await api.request("GET", "/healthz")
    assert status == 200, health
    return int(health["history_cache_entries_read"])


def rtms_origins(cluster: Cluster) -> list[str]:
    return sorted(s.url for s in cluster.services.values() if s.kind == "rtms")


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it is truthy (no fixed sleeps)."""
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- item 8: history costs O(limit), is limited per address, and may be cached --------


async def test_a_history_page_reads_only_as_many_cache_entries_as_it_lists(
    cluster: Cluster,
) -> None:
    """``limit=1`` on a video with 30 cached comments reads 1 entry (and 3 more for a
    comment's reply preview), not the whole cached range above it."""
    async with source(cluster, "127.0.0.4") as http:
        api = Api(cluster.services["comment-1"].url, http)
        video = unique("cost")
        token = await api.register(unique("talker"))
        parent = await api.post(video, "a question", token)
        replies = [
            await api.post(video, f"answer {n}", token, parent_id=parent["id"]) for n in range(5)
        ]
        for n in range(30):
            await api.post(video, f"line {n}", token)

        costs = []
        pages = []
        for query in ({"after": 0}, {}, {"after": 20}, {"before": 20}):
            before = await entries_read(api)
            pages.append(await api.page(video, limit=1, **query))
            costs.append(await entries_read(api) - before)
        # The first oldest-first page is the question with its reply preview: 1 + 3 entries.
        first = pages[0]["items"]
        assert [i["text"] for i in first] == ["a question"]
        assert first[0]["reply_count"] == 5
        assert [r["id"] for r in first[0]["replies"]] == [r["id"] for r in replies[:3]]
        assert [i["text"] for i in pages[1]["items"]] == ["line 29"]
        assert costs == [4, 1, 1, 1], costs  # the cache holds 36 entries above seq 1

        # The same pages from a bigger limit read proportionally more, never the rest.
        before = await entries_read(api)
        wide = await api.page(video, after=0, limit=10)
        assert await entries_read(api) - before == 10 + 3
        assert [i["text"] for i in wide["items"]] == ["a question"] + [
            f"line {n}" for n in range(4)
        ]


async def test_reply_previews_follow_changes_and_leave_the_index_when_trimmed(
    cluster: Cluster, api: Api
) -> None:
    """The reply index holds a reply exactly while the cache holds its entry: a deleted
    reply shows as a tombstone in the preview, a trimmed one leaves the index."""
    video = unique("index")
    token = await api.register(unique("replier"))
    parent = await api.post(video, "parent", token)
    replies = [await api.post(video, f"r{n}", token, parent_id=parent["id"]) for n in range(4)]
    path = f"/api/videos/{video}/comments/{replies[0]['id']}"
    status, body, _ = await api.request("DELETE", path, token=token)
    assert status == 200, body
    (item,) = (await api.page(video, after=0, limit=1))["items"]
    assert item["reply_count"] == 4
    assert [(r["text"], r["status"]) for r in item["replies"]] == [
        (None, "deleted"), ("r1", "visible"), ("r2", "visible")
    ]  # fmt: skip
    redis = Redis.from_url(cluster.backends.redis_url)
    index = Keys(f"{cluster.namespace}:").recent_replies(video)
    try:
        assert await redis.zcard(index) == 4
        for n in range(40):  # the cache keeps 40 entries: the parent and its replies go
            await api.post(video, f"line {n}", token)

        async def emptied() -> bool:
            return int(await redis.zcard(index)) == 0

        await until(emptied, "the trimmed replies to leave the index")
    finally:
        await redis.aclose()
    # The page now comes from the store, and says the same.
    (again,) = (await api.page(video, after=0, limit=1))["items"]
    assert (again["reply_count"], again["replies"]) == (4, item["replies"])


async def test_anonymous_history_reads_are_limited_per_address(cluster: Cluster, api: Api) -> None:
    video = unique("flood")
    token = await api.register(unique("reader"))
    posted = await api.post(video, "hello", token)
    path = f"/api/videos/{video}/comments?limit=1"
    async with (
        source(cluster, "127.0.0.2") as flood_http,
        source(cluster, "127.0.0.3") as calm_http,
    ):
        flood = Api(api.base, flood_http)
        calm = Api(api.base, calm_http)
        statuses = []
        for _ in range(HISTORY_BURST + 1):
            status, body, response = await flood.request("GET", path, headers={"Origin": ALLOWED})
            statuses.append(status)
            if status == 429:
                break
        assert statuses == [200] * HISTORY_BURST + [429]
        assert body["error"]["code"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
        assert body["error"]["details"]["retry_after"] == int(response.headers["Retry-After"])
        # A cross-origin page can read the refusal and its Retry-After.
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
        # Every history read of that address is refused: one comment, its replies.
        one = f"/api/videos/{video}/comments/{posted['id']}"
        for other in (one, one + "/replies"):
            status, body, _ = await flood.request("GET", other)
            assert (status, body["error"]["code"]) == (429, "rate_limited")
        # Another address is served meanwhile, and so is a logged-in user at the
        # flooding address (users count per user, not per address).
        status, body, _ = await calm.request("GET", path)
        assert status == 200 and [i["text"] for i in body["items"]] == ["hello"]
        status, body, _ = await flood.request("GET", path, token=token)
        assert status == 200, body
        # A token that does not verify is no token: the address's bucket applies.
        status, body, _ = await flood.request("GET", path, token="not.a.token")
        assert status == 429, body
    # Posting, and the stream, are not history reads.
    assert (await api.post(video, "still posting", token))["seq"] == 2


async def test_older_pages_may_be_cached_briefly_and_the_head_never(api: Api) -> None:
    video = unique("cache")
    token = await api.register(unique("cacher"))
    parent = await api.post(video, "parent", token)
    for n in range(3):
        await api.post(video, f"reply {n}", token, parent_id=parent["id"])
    for n in range(6):
        await api.post(video, f"line {n}", token)
    base = f"/api/videos/{video}/comments"

    async def cache_control(path: str) -> str:
        status, body, response = await api.request("GET", path)
        assert status == 200, body
        assert "Origin" in response.headers.get("Vary", "")  # CORS answers differ by origin
        return response.headers["Cache-Control"]

    head = await api.page(video, limit=3)
    assert await cache_control(f"{base}?limit=3") == "no-store"  # the head page
    assert (
        await cache_control(f"{base}?limit=3&before={head['next_before']}") == "public, max-age=5"
    )
    assert await cache_control(f"{base}?limit=3&after=0") == "public, max-age=5"  # full, older
    assert await cache_control(f"{base}?limit=50&after=0") == "no-store"  # reaches the head
    assert await cache_control(f"{base}?limit=3&after=10") == "no-store"  # a short poll
    replies = f"{base}/{parent['id']}/replies"
    assert await cache_control(f"{replies}?limit=2") == "public, max-age=5"  # more follow
    assert await cache_control(f"{replies}?limit=5") == "no-store"  # may gain replies
    assert await cache_control(f"{base}/{parent['id']}") == "no-store"  # one comment


# -- item 12: CORS, CSP, frame-ancestors, HSTS ------------------------------------------


async def test_preflights_and_answers_carry_cors_for_allowed_origins_only(api: Api) -> None:
    video = unique("cors")
    path = f"/api/videos/{video}/comments"
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    status, body, response = await api.request("OPTIONS", path, headers={"Origin": ALLOWED, **ask})
    assert (status, body) == (204, None)
    assert response.headers.getall("Access-Control-Allow-Origin") == [ALLOWED]
    assert "Origin" in response.headers["Vary"]
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) >= {"GET", "POST"}
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    for name in ("authorization", "content-type", "idempotency-key", "last-event-id"):
        assert name in allowed_headers
    assert int(response.headers["Access-Control-Max-Age"]) > 0

    status, _, response = await api.request("OPTIONS", path, headers={"Origin": OTHER, **ask})
    assert status == 204
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]

    # Every route answers preflights with its own methods; unknown paths stay 404.
    status, _, response = await api.request(
        "OPTIONS", "/api/auth/login", headers={"Origin": ALLOWED, **ask}
    )
    assert (status, response.headers["Access-Control-Allow-Methods"]) == (204, "POST")
    status, body, response = await api.request(
        "OPTIONS", "/api/nothing/here", headers={"Origin": ALLOWED, **ask}
    )
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED

    # Errors name the origin too, so a cross-origin page can read their codes.
    status, body, response = await api.request(
        "POST", path, json={"text": "hi"}, headers={"Origin": ALLOWED}
    )
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert response.headers.getall("Access-Control-Allow-Origin") == [ALLOWED]
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    status, _, response = await api.request("GET", path, headers={"Origin": OTHER})
    assert status == 200 and "Access-Control-Allow-Origin" not in response.headers
    # The stream redirect, as before: exactly one value.
    status, _, response = await api.request(
        "GET", f"/api/videos/{video}/stream", headers={"Origin": ALLOWED}, allow_redirects=False
    )
    assert status == 307
    assert response.headers.getall("Access-Control-Allow-Origin") == [ALLOWED]


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_the_page_and_the_api_send_the_security_headers(cluster: Cluster, api: Api) -> None:
    status, html, response = await api.request("GET", "/")
    assert status == 200
    html = html.decode()
    policy = response.headers["Content-Security-Policy"]
    csp = {name: value for name, _, value in (p.strip().partition(" ") for p in policy.split(";"))}
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert csp["default-src"] == "'none'"
    # The inline script by its hash, and the client library from this service.
    assert csp["script-src"] == "'self' " + _hash(script)
    assert re.findall(r"<script src=[^>]*>", html) == ['<script src="/livecomments.js">']
    status, library, answer = await api.request("GET", "/livecomments.js")
    assert status == 200 and answer.content_type == "text/javascript"
    assert b"LiveComments" in library
    assert csp["style-src"] == _hash(style)
    streams = ["https://*.rtms.example", *rtms_origins(cluster)]
    assert csp["connect-src"] == " ".join(["'self'", *streams])
    assert csp["frame-ancestors"] == "'self' https://embed.example"
    meta = re.search(r'name="livecomments-rtms-origins" content="([^"]*)"', html)
    assert meta is not None and meta[1] == " ".join(streams)
    for path in ("/", "/api/reactions", "/api/nothing"):
        status, _, response = await api.request("GET", path)
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")  # TLS here
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        if path != "/":
            assert response.headers["Content-Security-Policy"] == (
                "default-src 'none'; frame-ancestors 'none'"
            )


# -- in Chromium ------------------------------------------------------------------------


@pytest.fixture
async def elsewhere() -> AsyncIterator[None]:
    """Two tiny sites on other origins: one the API allows, one it does not."""

    async def blank(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>elsewhere</title>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", blank)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in (ALLOWED_PORT, OTHER_PORT):
        await web.TCPSite(runner, "127.0.0.1", port).start()
    yield
    await runner.cleanup()


CROSS_ORIGIN = """async ([api, video, token]) => {
  const out = {};
  const read = async (name, promise) => {
    try {
      const r = await promise;
      out[name] = {status: r.status, body: await r.json(), retry: r.headers.get("Retry-After")};
    } catch (e) { out[name] = {blocked: String(e)}; }
  };
  const path = api + "/api/videos/" + video + "/comments";
  await read("history", fetch(path + "?limit=5"));
  await read("post", fetch(path, {method: "POST", body: JSON.stringify({text: "from afar"}),
    headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json",
              "Idempotency-Key": "k-" + video}}));
  await read("refused", fetch(path, {method: "POST", body: "{}",
    headers: {"Authorization": "Bearer not-a-token", "Content-Type": "application/json"}}));
  return out;
}"""


@pytest.mark.timeout(90)
async def test_a_page_on_an_allowed_origin_reads_and_posts_and_others_cannot(
    api: Api, browser: Browser, elsewhere: None
) -> None:
    video = unique("afar")
    token = await api.register(unique("afar"))
    await api.post(video, "already here", token)
    context = await browser.new_context(ignore_https_errors=True)
    results = {}
    for origin in (ALLOWED, OTHER):
        page = await context.new_page()
        await page.goto(origin + "/")
        results[origin] = await page.evaluate(CROSS_ORIGIN, [api.base, video, token])
    allowed, other = results[ALLOWED], results[OTHER]
    assert allowed["history"]["status"] == 200
    assert [i["text"] for i in allowed["history"]["body"]["items"]] == ["already here"]
    assert allowed["post"]["status"] == 201 and allowed["post"]["body"]["text"] == "from afar"
    assert allowed["refused"]["status"] == 401  # the error code is readable across origins
    assert allowed["refused"]["body"]["error"]["code"] == "invalid_token"
    assert set(other) == {"history", "post", "refused"}
    assert all("blocked" in r for r in other.values()), other
    # The browser sent the disallowed post's preflight only: nothing was posted from there.
    texts = [i["text"] for i in (await api.page(video, after=0))["items"]]
    assert texts == ["already here", "from afar"]
    await context.close()


async def _viewer(browser: Browser, base: str, video: str) -> tuple[Page, list[str]]:
    """The viewer page, recording CSP violations (event and console) and script errors."""
    context = await browser.new_context(ignore_https_errors=True)
    await context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" or "Content Security Policy" in m.text
            else None
        ),
    )
    await page.goto(f"{base}/?v={video}")
    await expect(page.locator("#status")).to_have_text("live", timeout=15000)
    return page, problems


@pytest.mark.timeout(90)
async def test_the_viewer_page_loads_streams_and_posts_without_a_csp_violation(
    cluster: Cluster, api: Api, browser: Browser
) -> None:
    video = unique("csp")
    token = await api.register(unique("early"))
    await api.post(video, "from history", token)
    page, problems = await _viewer(browser, api.base, video)
    texts = page.locator("#comments .comment .text")
    await expect(texts).to_have_text(["from history"])
    await api.post(video, "streamed", token)  # over the EventSource on the RTMS origin
    await expect(texts).to_have_text(["from history", "streamed"], timeout=LIVE)
    await page.fill("#username", unique("csp_user"))
    await page.fill("#password", PASSWORD)
    await page.click("#register")
    await expect(page.locator("#send")).to_be_enabled(timeout=10000)
    await page.fill("#comment-text", "posted from the page")
    await page.click("#send")
    await expect(texts).to_have_text(
        ["from history", "streamed", "posted from the page"], timeout=LIVE
    )
    await expect(page.locator("#reply-to")).to_be_hidden()  # styles apply (moved out of style=)
    assert (
        await page.evaluate("getComputedStyle(document.getElementById('compose')).marginTop")
        == "8px"
    )
    assert (await page.evaluate("window.__violations"), problems) == ([], [])
    # The policy is enforced: what it does not list is refused, and would be seen here.
    await page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
        " document.body.append(s); }"
    )
    assert await page.evaluate("window.__ran") is None
    await page.evaluate("fetch('https://127.0.0.2:1/').catch(() => null)")

    async def two_violations() -> bool:
        return bool(await page.evaluate("window.__violations.length >= 2"))

    await until(two_violations, "the violations to be reported")
    await page.context.close()


@pytest.mark.timeout(90)
async def test_the_page_follows_moved_only_to_origins_it_trusts(
    cluster: Cluster, api: Api, browser: Browser
) -> None:
    video = unique("moved")
    token = await api.register(unique("mover"))
    await api.post(video, "before the move", token)
    page, problems = await _viewer(browser, api.base, video)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/stream" in r.url else None)

    # The page's own check, on what a hostile event could carry.
    node = rtms_origins(cluster)[0]
    checks = {
        f"{node}/stream/{video}?redirected=1": True,
        f"{api.base}/api/videos/{video}/stream": True,
        "https://a.rtms.example/stream/x": True,  # LIVECOMMENTS_RTMS_ORIGINS wildcard
        "https://rtms.example/stream/x": False,
        "https://a.rtms.example.evil.test/stream/x": False,
        "https://a.rtms.example:8443/stream/x": False,
        "http://a.rtms.example/stream/x": False,
        "https://evil.test/stream/x": False,
        "javascript:alert(1)": False,
        "data:text/event-stream,x": False,
        "//evil.test/stream/x": False,
    }
    seen = await page.evaluate(
        "(urls) => urls.map((u) => "
        "LiveComments.trustedStreamUrl(u, location.href, STREAM_ORIGINS) !== null)",
        list(checks),
    )
    assert dict(zip(checks, seen, strict=True)) == checks

    # An untrusted `moved` reaches the page's handler: it reconnects through the
    # stream endpoint with its last event id, and never opens the URL it was given.
    await page.evaluate(
        "(v) => stream._es.dispatchEvent(new MessageEvent('moved', {data: JSON.stringify("
        "{url: 'https://evil.test/stream/' + v, last_event_id: '1-1'})}))",
        video,
    )
    await expect(page.locator("#status")).to_have_text("live", timeout=15000)
    assert not [u for u in streams if "evil.test" in u]
    assert any(
        u.startswith(f"{api.base}/api/videos/{video}/stream?last_event_id=") for u in streams
    )

    # A real move (an operator's `move`): the node sends `moved` with the other
    # node's URL, which the page trusts and opens directly.
    nodes = {s.url: n for n, s in cluster.services.items() if s.kind == "rtms"}
    on = [url.split("/stream/")[0] for url in streams if url.split("/stream/")[0] in nodes][-1]
    target = next(name for url, name in nodes.items() if url != on)
    target_url = cluster.services[target].url
    before = len(streams)
    await cli(cluster, "move", video, "--to", target)
    try:

        async def followed() -> bool:
            return any(u.startswith(f"{target_url}/stream/{video}?") for u in streams[before:])

        await until(followed, "the page to follow the move")
        assert all(u.startswith(f"{target_url}/stream/{video}?") for u in streams[before:])
        await expect(page.locator("#status")).to_have_text("live", timeout=15000)
        await api.post(video, "after the move", token)
        await expect(page.locator("#comments .comment .text")).to_have_text(
            ["before the move", "after the move"], timeout=LIVE
        )
    finally:
        await cli(cluster, "unpin", video)
    assert (await page.evaluate("window.__violations"), problems) == ([], [])
    await page.context.close()
