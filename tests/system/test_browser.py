"""The viewer page in a real browser (system Chromium via Playwright).

Checks what only a browser checks: the page over HTTPS opens an EventSource
through the 307 to an RTMS node on another origin (TLS, CORS on the redirect
and on the stream), shows comments live, and lets a logged-in user post.
Then what users see of each other's actions, each in their own browser
context: deletes, replies, reactions and the held-for-review queue.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    expect,
)

from livecomments.cli.cluster import Cluster
from tests.support import PASSWORD, Api, on_own_session, staff, unique

pytestmark = pytest.mark.slow
LIVE = 10000  # ms a live change may take to reach another page


class Pages:
    """Opens the viewer page, one browser context per user; records script errors
    and failed requests (the browser also logs those as console errors)."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.browser = browser
        self.base = base
        self.errors: list[str] = []
        self.failed: list[str] = []

    async def open(
        self, video: str, username: str | None = None, *, bypass_csp: bool = False
    ) -> Page:
        # bypass_csp: only to inject the accessibility engine (an inline script the
        # page's Content-Security-Policy rightly refuses).
        context = await self.browser.new_context(ignore_https_errors=True, bypass_csp=bypass_csp)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)
        page.on(
            "response",
            lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        await page.goto(f"{self.base}/?v={video}")
        await expect(page.locator("#status")).to_have_text("live", timeout=15000)
        if username is not None:
            await page.fill("#username", username)
            await page.fill("#password", PASSWORD)
            await page.click("#login")
            await expect(page.locator("#logout")).to_be_visible(timeout=10000)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def assert_clean(self) -> None:
        assert (self.errors, self.failed) == ([], [])


@pytest.fixture(scope="module")
async def moderator(cluster: Cluster) -> tuple[str, str]:
    """One moderator for the module (no test changes its role or revokes its token)."""
    return await on_own_session(cluster, lambda api: staff(api, cluster, "moderator"))


@pytest.fixture
def pages(cluster: Cluster, browser: Browser) -> Pages:
    return Pages(browser, cluster.services["comment-1"].url)


async def username(api: Api, token: str) -> str:
    status, me, _ = await api.request("GET", "/api/auth/me", token=token)
    assert status == 200, me
    return str(me["username"])


def comment(page: Page, comment_id: str) -> Locator:
    return page.locator(f'#comments .comment[data-id="{comment_id}"]')


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


@pytest.mark.timeout(90)
async def test_moderator_delete_shows_a_tombstone_live(
    cluster: Cluster, api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    video = unique("del")
    author = unique("author")
    author_token = await api.register(author)
    mod_token, _ = moderator
    doomed = await api.post(video, "this text must vanish", author_token)
    kept = await api.post(video, "this one stays", author_token)

    viewer = await pages.open(video, await username(api, await api.register(unique("viewer"))))
    moderator = await pages.open(video, await username(api, mod_token))
    own = await pages.open(video, author)
    await expect(viewer.locator("#comments .comment .text")).to_have_text(
        ["this text must vanish", "this one stays"]
    )
    # Only the author and staff are offered Delete; everyone else may report.
    await expect(viewer.locator("#comments .delete")).to_have_count(0)
    await expect(viewer.locator("#comments select.report")).to_have_count(2)
    await expect(own.locator("#comments .delete")).to_have_count(2)

    await comment(moderator, doomed["id"]).locator(".delete").click()

    for page in (viewer, own, moderator):
        tombstone = comment(page, doomed["id"])
        await expect(tombstone).to_have_class(re.compile(r"\bdeleted\b"), timeout=LIVE)
        await expect(tombstone.locator(".text")).to_have_text("comment deleted")
        await expect(tombstone.locator(".reactions, .delete, .author")).to_have_count(0)
    # A change's frame has the change's seq as its id: the comment keeps its place.
    await expect(viewer.locator("#comments .comment .text")).to_have_text(
        ["comment deleted", "this one stays"]
    )
    # An edit shows in place too, marked as edited.
    status, _, _ = await api.request(
        "PATCH", f"/api/videos/{video}/comments/{kept['id']}",
        json={"text": "this one was edited"}, token=mod_token,
    )  # fmt: skip
    assert status == 200
    edited = comment(viewer, kept["id"])
    await expect(edited.locator(".text")).to_have_text("this one was edited", timeout=LIVE)
    await expect(edited.locator(".author")).to_have_text(author)
    await expect(edited.locator(".time")).to_have_text(re.compile(r"\(edited\)$"))
    # Later events (a new comment, a reload from history) never bring the text back.
    later = await api.post(video, "after the delete", author_token)
    await expect(comment(viewer, kept["id"])).to_be_visible()
    await expect(viewer.locator("#comments .comment .text")).to_have_text(
        ["comment deleted", "this one was edited", "after the delete"], timeout=LIVE
    )
    live_time = await comment(viewer, later["id"]).get_attribute("data-ms")
    await viewer.reload()
    await expect(viewer.locator("#status")).to_have_text("live", timeout=15000)
    await expect(viewer.locator("#comments .comment .text")).to_have_text(
        ["comment deleted", "this one was edited", "after the delete"]
    )
    # The time a live comment showed (its frame's created_at_ms) is the history's.
    assert live_time == str(later["created_at_ms"])
    assert await comment(viewer, later["id"]).get_attribute("data-ms") == live_time
    assert "this text must vanish" not in await viewer.content()
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_replies_nest_under_their_parent_live_and_from_history(
    api: Api, pages: Pages
) -> None:
    video = unique("reply")
    token = await api.register(unique("asker"))
    replier = unique("replier")
    await api.register(replier)
    first = await api.post(video, "first question", token)
    second = await api.post(video, "second question", token)

    viewer = await pages.open(video)
    writer = await pages.open(video, replier)
    await expect(viewer.locator("#comments > .comment")).to_have_count(2)

    # A reply through the API goes under its parent, not at the end of the list.
    reply = await api.post(video, "an answer", token, parent_id=first["id"])
    nested = comment(viewer, first["id"]).locator(".replies > .comment")
    await expect(nested.locator(".text")).to_have_text(["an answer"], timeout=LIVE)
    await expect(nested).to_have_attribute("data-id", reply["id"])
    await expect(viewer.locator("#comments > .comment")).to_have_count(2)
    await expect(nested.locator(".reply")).to_have_count(0)  # one level of replies

    # A reply from the page: Reply on the second comment, then Send.
    await comment(writer, second["id"]).locator(".reply").first.click()
    await expect(writer.locator("#reply-to")).to_contain_text("Replying to")
    await writer.fill("#comment-text", "answered in the page")
    await writer.click("#send")
    await expect(writer.locator("#reply-to")).to_be_hidden()
    second_replies = comment(viewer, second["id"]).locator(".replies > .comment .text")
    await expect(second_replies).to_have_text(["answered in the page"], timeout=LIVE)

    await viewer.reload()
    await expect(viewer.locator("#status")).to_have_text("live", timeout=15000)
    await expect(viewer.locator("#comments > .comment")).to_have_count(2)
    await expect(nested.locator(".text")).to_have_text(["an answer"])
    await expect(second_replies).to_have_text(["answered in the page"])
    pages.assert_clean()


AXE = Path(__file__).resolve().parents[1] / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


@pytest.mark.timeout(90)
async def test_the_page_passes_an_accessibility_scan(
    api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    """axe-core (npm, run inside Chromium) finds nothing at WCAG 2.2 AA and best
    practice on the page of a moderator watching comments, a reply and a right-to-left
    comment; and what a scan cannot judge is checked by hand."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` installs it (npm ci in tests/a11y)")
    video = unique("a11y")
    token = await api.register(unique("poster"))
    top = await api.post(video, "a comment to scan", token)
    await api.post(video, "a reply to it", token, parent_id=top["id"])
    rtl = await api.post(video, "مرحبا بالعالم، تعليق من اليمين إلى اليسار", token)
    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/pinned", json={"comment_id": top["id"]}, token=moderator[0]
    )
    assert status == 200, body
    page = await pages.open(video, await username(api, moderator[0]), bypass_csp=True)
    await expect(comment(page, rtl["id"])).to_be_visible()
    await expect(page.locator("#pinned")).to_contain_text("a comment to scan")
    # A log that announces additions, not every time or count that changes in place.
    log = page.locator("#comments")
    await expect(log).to_have_attribute("role", "log")
    await expect(log).to_have_attribute("aria-relevant", "additions")
    # Right-to-left text reads in its own direction; the absolute time on hover.
    await expect(comment(page, rtl["id"]).locator(":scope > .head > .text")).to_have_attribute(
        "dir", "auto"
    )
    time = comment(page, top["id"]).locator(":scope > .head > time")
    await expect(time).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    await expect(time).to_have_attribute("title", re.compile(r"\d"))

    await page.add_script_tag(path=str(AXE))
    violations = await page.evaluate(
        """async (tags) => (await axe.run(document, {runOnly: {type: "tag", values: tags}}))
            .violations.map((v) => ({id: v.id, help: v.help,
                                     nodes: v.nodes.map((n) => n.target.join(" "))}))""",
        AXE_RULES,
    )
    assert violations == [], violations
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_the_page_takes_its_limits_from_the_server_and_says_when_a_session_ends(
    api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    """The length limit and the video's slow mode come from the server; a session
    about to expire is announced, and an expired one logs out with a message
    (the expiry is moved forward in the page: the token's own expiry is the server's,
    tested with the API)."""
    video = unique("limits")
    status, body, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 30},
        token=moderator[0],
    )  # fmt: skip
    assert status == 200, body
    status, settings, _ = await api.request("GET", f"/api/videos/{video}/settings")
    assert status == 200 and settings["slow_mode_seconds"] == 30
    name = unique("writer")
    await api.register(name)
    page = await pages.open(video, name)
    await expect(page.locator("#limits")).to_have_text("Slow mode: one comment every 30 s")
    await expect(page.locator("#comment-text")).to_have_attribute(
        "maxlength", str(settings["max_comment_chars"])
    )
    shift = """(ms) => {
        const a = JSON.parse(sessionStorage.getItem("lc_auth"));
        a.exp = Date.now() + ms;
        sessionStorage.setItem("lc_auth", JSON.stringify(a));
    }"""
    await page.evaluate(shift, 120_000)
    await expect(page.locator("#error")).to_have_text(
        re.compile(r"session ends in 2 min"), timeout=10000
    )
    await page.evaluate(shift, -1)
    await expect(page.locator("#error")).to_have_text(re.compile(r"session expired"), timeout=10000)
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("live")  # watching goes on
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_a_warned_user_reads_the_warning_and_acknowledges_it_in_the_page(
    api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    video = unique("warned")
    name = unique("warned")
    token = await api.register(name)
    user_id = await api.user_id(token)
    page = await pages.open(video, name)
    status, body, _ = await api.request(
        "POST", f"/api/users/{user_id}/warnings", json={"reason": "keep it civil"},
        token=moderator[0],
    )  # fmt: skip
    assert status == 201, body
    await page.fill("#comment-text", "am I still welcome?")
    await page.click("#send")
    await expect(page.locator("#error")).to_contain_text("a moderator warned you")
    warning = page.locator("#warning")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("keep it civil")
    await page.click("#warning-ack")
    await expect(warning).to_be_hidden()
    await page.click("#send")  # the draft is still there
    await expect(page.locator("#comments")).to_contain_text("am I still welcome?", timeout=LIVE)
    pages.failed = [f for f in pages.failed if not f.startswith("403 ")]  # the refusal above
    pages.assert_clean()


@pytest.mark.timeout(120)
async def test_a_moderator_works_from_the_page(
    api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    """From a comment's menu: edit, time out (then lift it in the panel), warn; in the
    panel: slow mode, and an open report dismissed. Every step goes through the API."""
    video = unique("modpage")
    author_name = unique("author")
    author = await api.register(author_name)
    author_id = await api.user_id(author)
    target = await api.post(video, "a comment to moderate", author)
    reporter = await api.register(unique("reporter"))
    status, body, _ = await api.request(
        "POST", f"/api/comments/{target['id']}/reports", json={"reason": "spam"}, token=reporter
    )
    assert status in (200, 201), body

    page = await pages.open(video, await username(api, moderator[0]))
    panel = page.locator("#mod")
    await expect(panel).to_be_visible()
    menu = comment(page, target["id"]).locator("select.moderate")
    answers: list[str] = []
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept(answers.pop(0))))

    # Edit: the new text reaches this page (and every viewer) live.
    answers.append("an edited comment")
    await menu.select_option("edit")
    await expect(comment(page, target["id"])).to_contain_text("an edited comment", timeout=LIVE)

    # Time out for 10 minutes: the panel lists it; Lift ends it.
    answers.append("cool down")
    await menu.select_option("timeout:600")
    ban = panel.locator("#bans-list li.ban-item", has_text=author_name)
    await expect(ban).to_contain_text("cool down", timeout=LIVE)
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": "let me in"}, token=author
    )
    assert (status, body["error"]["code"]) == (403, "banned")
    await ban.locator("button.lift").click()
    await expect(ban).to_have_count(0, timeout=LIVE)
    await api.post(video, "back again", author)

    # Warn: the author's next post waits for the acknowledgement.
    answers.append("mind the language")
    await menu.select_option("warn")
    await expect(page.locator("#error")).to_contain_text("is warned")
    status, mine, _ = await api.request("GET", "/api/auth/me/warning", token=author)
    assert status == 200 and mine["warning"]["reason"] == "mind the language"
    assert mine["warning"]["user_id"] == author_id

    # Slow mode from the panel: the video's settings change, and the hint follows.
    await page.fill("#slow-mode", "15")
    await page.click("#slow-set")
    await expect(page.locator("#limits")).to_have_text("Slow mode: one comment every 15 s")
    status, settings, _ = await api.request("GET", f"/api/videos/{video}/settings")
    assert settings["slow_mode_seconds"] == 15

    # The open report: dismissed from the panel.
    await page.click("#mod-refresh")
    report = panel.locator("#reports-list li.report-item", has_text=author_name)
    await expect(report).to_have_count(1)
    await report.locator("button.dismiss").click()
    await expect(report).to_have_count(0, timeout=LIVE)
    assert answers == []
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_a_moderator_pins_from_the_page_and_every_viewer_sees_it(
    api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    """Pin from a comment's button: a viewer's page shows it live, a page opened later
    on load; Unpin hides it everywhere; deleting a pinned comment unpins it."""
    video = unique("pinpage")
    author = await api.register(unique("author"))
    first = await api.post(video, "welcome, read the rules", author)
    second = await api.post(video, "a second comment", author)
    mod_page = await pages.open(video, await username(api, moderator[0]))
    viewer = await pages.open(video)
    await expect(comment(viewer, second["id"])).to_be_visible()
    await expect(viewer.locator("#pinned")).to_be_hidden()

    await comment(mod_page, first["id"]).locator("button.pin").click()
    for page in (mod_page, viewer):
        await expect(page.locator("#pinned")).to_be_visible(timeout=LIVE)
        await expect(page.locator("#pinned .text")).to_have_text("welcome, read the rules")
    await expect(viewer.locator("#unpin")).to_be_hidden()  # viewers cannot unpin
    # The pinned comment has no Pin button; the others do.
    await expect(comment(mod_page, first["id"]).locator("button.pin")).to_have_count(0)
    late = await pages.open(video)
    await expect(late.locator("#pinned .text")).to_have_text("welcome, read the rules")

    await mod_page.locator("#unpin").click()
    for page in (mod_page, viewer, late):
        await expect(page.locator("#pinned")).to_be_hidden(timeout=LIVE)

    # Pin the second, then delete it: it is unpinned for everyone.
    await comment(mod_page, second["id"]).locator("button.pin").click()
    await expect(viewer.locator("#pinned .text")).to_have_text("a second comment", timeout=LIVE)
    status, _, _ = await api.request(
        "DELETE", f"/api/videos/{video}/comments/{second['id']}", token=author
    )
    assert status == 200
    for page in (mod_page, viewer, late):
        await expect(page.locator("#pinned")).to_be_hidden(timeout=LIVE)
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_a_moderator_raises_the_shield_from_the_panel(
    api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    """The panel's switch applies the preset (slow mode 30 s, new accounts refused: the
    defaults); a new account's page shows the server's refusal and the video's rules;
    off restores the slow mode from before."""
    video = unique("shieldpage")
    status, body, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 5}, token=moderator[0]
    )
    assert status == 200, body
    mod_page = await pages.open(video, await username(api, moderator[0]))
    shield = mod_page.locator("#shield-on")
    await expect(mod_page.locator("#slow-mode")).to_have_value("5")  # the panel has loaded
    await expect(shield).not_to_be_checked()
    await shield.check()
    await expect(mod_page.locator("#slow-mode")).to_have_value("30", timeout=LIVE)
    await expect(mod_page.locator("#limits")).to_have_text(
        "Shield mode is on · Slow mode: one comment every 30 s"
        " · accounts younger than 10 min cannot comment"
    )
    newbie = unique("newbie")
    await api.register(newbie)
    page = await pages.open(video, newbie)
    await page.fill("#comment-text", "hello, I just joined")
    await page.click("#send")
    await expect(page.locator("#error")).to_contain_text(
        "shield mode is on: accounts this new cannot comment on this video yet"
    )
    await expect(page.locator("#limits")).to_contain_text("Shield mode is on")
    await expect(page.locator("#comment-text")).to_have_value("hello, I just joined")
    pages.failed.remove(next(f for f in pages.failed if f.startswith("403 ")))  # the refusal

    await shield.uncheck()
    await expect(mod_page.locator("#slow-mode")).to_have_value("5", timeout=LIVE)
    await expect(mod_page.locator("#limits")).to_have_text("Slow mode: one comment every 5 s")
    status, settings, _ = await api.request("GET", f"/api/videos/{video}/settings")
    assert settings["shield"] is False and settings["min_account_age_seconds"] == 0
    await page.click("#send")
    await expect(page.locator("#comments .comment .text")).to_have_text(
        ["hello, I just joined"], timeout=LIVE
    )
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_the_page_shows_how_many_watch_as_viewers_come_and_go(pages: Pages) -> None:
    """The count comes from the first page, then from the stream's ``viewers`` events
    (load reports every 5 s, a count at most every 3 s: within 15 s)."""
    video = unique("audience")
    first = await pages.open(video)
    await expect(first.locator("#watching")).to_have_text("1 watching", timeout=15000)
    second = await pages.open(video)
    await expect(first.locator("#watching")).to_have_text("2 watching", timeout=15000)
    await expect(second.locator("#watching")).to_have_text("2 watching", timeout=15000)
    await second.context.close()
    await expect(first.locator("#watching")).to_have_text("1 watching", timeout=15000)
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_a_reaction_in_one_page_updates_the_count_in_another(api: Api, pages: Pages) -> None:
    video = unique("react")
    token = await api.register(unique("poster"))
    target = await api.post(video, "react to me", token)
    status, body, _ = await api.request("GET", "/api/reactions")
    assert status == 200, body
    like = {r["name"]: r["emoji"] for r in body["reactions"]}["like"]

    clicker_name = unique("clicker")
    await api.register(clicker_name)
    clicker = await pages.open(video, clicker_name)
    watcher = await pages.open(video)
    mine = comment(clicker, target["id"]).locator(".reactions button[data-reaction=like]")
    seen = comment(watcher, target["id"]).locator(".reactions button[data-reaction=like]")
    await expect(seen).to_have_text(like)

    await mine.click()
    await expect(mine).to_have_text(f"{like} 1")
    await expect(mine).to_have_attribute("aria-pressed", "true")
    await expect(seen).to_have_text(f"{like} 1", timeout=LIVE)

    # A second click takes the reaction back, everywhere.
    await mine.click()
    await expect(mine).to_have_attribute("aria-pressed", "false")
    await expect(seen).to_have_text(like, timeout=LIVE)
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_a_held_comment_appears_only_after_a_moderator_approves_it(
    cluster: Cluster, api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    video = unique("held")
    author_name = unique("linker")
    await api.register(author_name)
    mod_token, _ = moderator
    held_text = "check https://example.com"

    author = await pages.open(video, author_name)
    viewer = await pages.open(video)
    moderator = await pages.open(video, await username(api, mod_token))
    await expect(author.locator("#held")).to_be_hidden()
    await expect(moderator.locator("#held")).to_be_visible()

    await author.fill("#comment-text", held_text)
    await author.click("#send")
    await expect(author.locator("#error")).to_contain_text("awaiting review")
    pending = author.locator("#comments .comment.held")
    await expect(pending.locator(".text")).to_have_text(held_text)
    await expect(pending.locator(".note")).to_have_text("awaiting review")

    await moderator.click("#held-refresh")
    item = moderator.locator("#held-list .held-item", has_text=held_text)
    await expect(item).to_have_count(1, timeout=LIVE)
    await asyncio.sleep(1)  # give a wrongly published comment time to show up
    for page in (viewer, moderator):
        await expect(page.locator("#comments .comment")).to_have_count(0)

    await item.locator(".approve").click()
    await expect(item).to_have_count(0)
    for page in (viewer, moderator, author):
        await expect(page.locator("#comments .comment .text")).to_have_text(
            [held_text], timeout=LIVE
        )
    await expect(author.locator("#comments .comment.held")).to_have_count(0)
    await expect(author.locator("#comments .comment .note")).to_have_count(0)
    pages.assert_clean()


@pytest.mark.timeout(90)
async def test_refusals_are_shown_with_the_server_message_and_logout_revokes(
    cluster: Cluster, api: Api, pages: Pages, moderator: tuple[str, str]
) -> None:
    video = unique("refuse")
    name = unique("talker")
    user_id = await api.user_id(await api.register(name))
    mod_token, _ = moderator
    page = await pages.open(video, name)
    error = page.locator("#error")

    async def send(text: str) -> None:
        await page.fill("#comment-text", text)
        await page.click("#send")

    await send("kys")  # refused outright by the content filter: 422
    await expect(error).to_have_text("this comment was refused by the content filter")
    await expect(page.locator("#comment-text")).to_have_value("kys")  # kept for editing

    status, body, _ = await api.request(
        "PATCH", f"/api/videos/{video}/settings", json={"slow_mode_seconds": 60}, token=mod_token
    )
    assert status == 200, body
    await send("first")
    await expect(page.locator("#comments .comment .text")).to_have_text(["first"])
    await expect(error).to_have_text("")
    await send("second")  # slow mode: 429 with Retry-After
    await expect(error).to_have_text(
        re.compile(r"^slow mode is on: .*\(try again in (60|59|58) s\)$")
    )

    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/bans/{user_id}", json={"reason": "test"}, token=mod_token
    )
    assert status == 200, body
    await send("third")
    await expect(error).to_have_text("you are banned from commenting on this video")
    await expect(page.locator("#comments .comment")).to_have_count(1)
    assert pages.errors == []

    # Log out revokes the token on the server, not just in the tab.
    token = await page.evaluate("JSON.parse(sessionStorage.getItem('lc_auth')).token")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#send")).to_be_disabled()
    status, body, _ = await api.request("GET", "/api/auth/me", token=token)
    assert status == 401, body


@pytest.mark.timeout(90)
async def test_while_its_stream_is_down_the_page_keeps_up_by_polling(
    api: Api, pages: Pages
) -> None:
    """No stream (every stream request fails): the page polls ?after= (the server
    answers from its recent-comments cache) until the stream is back."""
    video = unique("poll")
    token = await api.register(unique("poller"))
    await api.post(video, "before the outage", token)
    page = await pages.open(video)
    texts = page.locator("#comments .comment .text")
    await expect(texts).to_have_text(["before the outage"])
    stream = re.compile(r".*/stream(/|\?|$).*")
    await page.route(stream, lambda route: route.abort())
    await page.evaluate("stream._es.dispatchEvent(new Event('error'))")  # the open stream breaks
    await expect(page.locator("#status")).to_have_text("reconnecting")
    await api.post(video, "during the outage", token)
    await expect(texts).to_have_text(["before the outage", "during the outage"], timeout=LIVE)
    assert await page.evaluate("stream._es === null || stream._es.readyState !== EventSource.OPEN")
    await page.unroute(stream)
    await expect(page.locator("#status")).to_have_text("live", timeout=20000)
    await api.post(video, "after the outage", token)
    await expect(texts).to_have_text(
        ["before the outage", "during the outage", "after the outage"], timeout=LIVE
    )
