"""The viewer page in a real browser (system Chromium via Playwright).

Checks what only a browser checks: the page over HTTPS opens an EventSource
through the 307 to an RTMS node on another origin (TLS, CORS on the redirect
and on the stream), shows comments live, and lets a logged-in user post.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from livecomments.cluster import Cluster
from tests.support import Api, unique

CHROMIUM = "/usr/lib/chromium/chromium"
pytestmark = pytest.mark.slow


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--ignore-certificate-errors",
            ],
        )
        yield launched
        await launched.close()


@pytest.mark.timeout(90)
async def test_viewer_page_shows_comments_live_and_posts(
    cluster: Cluster, api: Api, browser: Browser
) -> None:
    video = unique("page")
    base = cluster.services["comment-1"].url
    context = await browser.new_context(ignore_https_errors=True)
    watcher = await context.new_page()
    poster = await (await browser.new_context(ignore_https_errors=True)).new_page()
    errors: list[str] = []
    watcher.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    token = await api.register(unique("early"))
    await api.post(video, "from history", token)

    await watcher.goto(f"{base}/?v={video}")
    await expect(watcher.locator("#status")).to_have_text("live", timeout=15000)
    await expect(watcher.locator("#comments .comment .text")).to_have_text(["from history"])

    # A comment posted elsewhere arrives live.
    await api.post(video, "<b>live</b> & safe", token)
    await expect(watcher.locator("#comments .comment .text")).to_have_text(
        ["from history", "<b>live</b> & safe"], timeout=10000
    )

    # A user registers and posts from the page; the other browser sees it once.
    await poster.goto(f"{base}/?v={video}")
    await expect(poster.locator("#status")).to_have_text("live", timeout=15000)
    await poster.fill("#username", unique("page_user"))
    await poster.fill("#password", "a long enough password")
    await poster.click("#register")
    await expect(poster.locator("#send")).to_be_enabled(timeout=10000)
    await poster.fill("#comment-text", "hello from a browser")
    await poster.click("#send")
    await expect(watcher.locator("#comments .comment .text")).to_have_text(
        ["from history", "<b>live</b> & safe", "hello from a browser"], timeout=10000
    )
    await expect(poster.locator("#comments .comment")).to_have_count(3)
    assert not [e for e in errors if "CORS" in e or "EventSource" in e], errors
