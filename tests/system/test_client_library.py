"""livecomments.js in Chromium: a node is killed under a viewer that uses it.

The library is the page's stream client (the page's own tests use it throughout);
here it is driven directly, as an integrator would, on a cluster of its own: it
goes from live to reconnecting when its node dies (kill -9), keeps up by polling,
comes back live on the other node from its last event id, and hands over every
comment once, in order.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from livecomments.cli.cluster import Cluster
from tests.support import Api, cli, unique, wait_until

pytestmark = pytest.mark.slow
SESSION_TIMEOUT = 4.0
CLUSTER_ENV = {
    "LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
    "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.5",
}

RECORD = """(video) => {
  window.rec = {states: [], comments: [], viewers: []};
  const s = new LiveComments.VideoStream(video, {trustedOrigins: STREAM_ORIGINS});
  window.recStream = s;
  s.addEventListener("state", (e) => rec.states.push(e.detail));
  s.addEventListener("comment", (e) => rec.comments.push([e.detail.id, e.detail.rev]));
  s.addEventListener("viewers", (e) => rec.viewers.push(e.detail.count));
  s.start();
}"""


async def recorded(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("rec")
    return result


@pytest.mark.timeout(120)
async def test_the_library_survives_its_node_being_killed(
    cluster: Cluster, api: Api, browser: Browser
) -> None:
    video = unique("library")
    token = await api.register(unique("poster"))
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{cluster.services['comment-1'].url}/?v={unique('elsewhere')}")
        await page.evaluate(RECORD, video)
        await wait_until(lambda: _has_state(page, "live"), what="the library goes live")
        before = [await api.post(video, f"before {n}", token) for n in range(3)]
        await wait_until(lambda: _count(page, 3), what="3 comments live")

        # Which node serves it (its load report): kill that one, with no goodbye.
        hosts = await _hosts(cluster, video)
        assert len(hosts) == 1, hosts  # one viewer: one node
        (node,) = hosts
        cluster.services[node].proc.kill()
        await wait_until(lambda: _has_state(page, "reconnecting"), what="reconnecting")
        during = [await api.post(video, f"during {n}", token) for n in range(5)]
        # Back live on the other node once the dead one's session is gone.
        await wait_until(
            lambda: _live_again(page), timeout=3 * SESSION_TIMEOUT + 20, what="live again"
        )
        after = await api.post(video, "after", token)
        await wait_until(lambda: _count(page, 9), timeout=15, what="every comment")
        rec = await recorded(page)
        ids = [c[0] for c in rec["comments"]]
        assert ids == [c["id"] for c in (*before, *during, after)], rec["comments"]
        assert len(set(ids)) == len(ids)  # each once
        # The load reports agree once the dead node's session is gone.
        other = {n for n in ("rtms-1", "rtms-2") if n != node}
        await wait_until(
            lambda: _hosts_are(cluster, video, other),
            timeout=3 * SESSION_TIMEOUT + 10,
            what=f"only {other} hosting the viewer",
        )
        assert re.search(
            r"[?&]last_event_id=\d+-\d+", await page.evaluate("recStream._streamUrl()")
        )
        await expect(page.locator("#status")).to_have_text("live")  # the page itself too
        assert errors == []
    finally:
        await context.close()


async def _hosts(cluster: Cluster, video: str) -> set[str]:
    """The nodes whose load reports show a viewer of ``video`` (once there is one)."""
    found: set[str] = set()

    async def reported() -> bool:
        _, doc, _ = await cli(cluster, "videos")
        row = next((r for r in doc["videos"] if r["video"] == video), None)
        found.clear()
        found.update(node for node, n in (row or {}).get("viewers_by_node", {}).items() if n)
        return bool(found)

    await wait_until(reported, what=f"a load report with the viewer of {video}")
    return found


async def _hosts_are(cluster: Cluster, video: str, nodes: set[str]) -> bool:
    return await _hosts(cluster, video) == nodes


async def _has_state(page: Any, state: str) -> bool:
    return state in (await recorded(page))["states"]


async def _live_again(page: Any) -> bool:
    states = (await recorded(page))["states"]
    return "reconnecting" in states and states[-1] == "live"


async def _count(page: Any, n: int) -> bool:
    return len((await recorded(page))["comments"]) >= n
