"""Chat replay: a video's start, its comments by offset, and the page playing them back.

The range queries run over thousands of comments stored with the documents the
service writes (inserted straight into the store, with times spread over hours:
what is under test is the query, not the write path), with comments posted,
edited, deleted and approved through the API on top. The expected answers are
computed from what the store holds, by reading every document.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, expect
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from livecomments.cli.cluster import Cluster
from livecomments.comment_service.replay import MARGIN_MS, SCAN_CAP
from livecomments.kernel.store import void_id
from tests.support import Api, on_own_session, staff, unique
from tests.system.test_browser import AXE, AXE_RULES

Doc = dict[str, Any]
HELD_TEXT = "great stream, more at https://example.com/watch"  # one link: held for review
_ids = itertools.count(time.time_ns() // 1000 * 1000)


@pytest.fixture(scope="module")
async def moderator(cluster: Cluster) -> tuple[str, str]:
    return await on_own_session(cluster, lambda api: staff(api, cluster, "moderator"))


@pytest.fixture
async def db(cluster: Cluster) -> AsyncIterator[AsyncDatabase[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(cluster.backends.mongo_uri, tz_aware=True)
    yield client[cluster.namespace]
    await client.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def comment_doc(video: str, seq: int, t_ms: int, text: str, **extra: Any) -> Doc:
    """A comment as ``Comments._post`` stores it."""
    doc: Doc = {
        "_id": next(_ids), "video_id": video, "seq": seq, "epoch": 1, "user_id": 42,
        "author": "bulk_author", "text": text, "parent_id": None, "status": "visible",
        "created_at": at(t_ms), "created_at_ms": t_ms, "edited_at": None, "rev": 0,
        "reactions": {},
    }  # fmt: skip
    doc.update(extra)
    if doc["status"] == "deleted":
        doc.pop("text")
    return doc


def marker_doc(video: str, seq: int, t_ms: int, target: Doc) -> Doc:
    """A change marker as ``Comments._announce`` stores it."""
    return {
        "_id": next(_ids), "video_id": video, "marker": "comment.updated",
        "target_id": target["_id"], "target_seq": target["seq"], "snapshot": {}, "by": 7,
        "created_at": at(t_ms), "created_at_ms": t_ms, "seq": seq, "epoch": 1,
    }  # fmt: skip


def void_doc(video: str, seq: int, t_ms: int) -> Doc:
    """A void as ``Store.fence`` stores it."""
    return {"_id": void_id(video, seq), "video_id": video, "seq": seq, "void": True,
            "created_at": at(t_ms)}  # fmt: skip


def bulk(video: str, count: int, first_ms: int) -> list[Doc]:
    """``count`` comments 2 s apart from ``first_ms``, with what a real video has between
    them: replies, tombstones, change markers, voids, an approved comment, and times
    that run against the seq order (every tenth comment is 2.5 s early)."""
    docs: list[Doc] = []
    for i in range(count):
        t = first_ms + i * 2000 - (2500 if i % 10 == 3 else 0)
        extra: Doc = {}
        if i % 15 == 7:
            extra["parent_id"] = docs[-1]["_id"] if not docs[-1].get("marker") else None
        if i % 13 == 5:
            extra.update(status="deleted", deleted_at=at(t + 100), deleted_by=7, rev=1)
        if i % 400 == 100:  # held for a minute, then approved: replayed at its approval
            extra.update(created_at=at(t - 60_000), created_at_ms=t - 60_000,
                         approved_at=at(t), approved_at_ms=t, approved_by=7)  # fmt: skip
        docs.append(comment_doc(video, len(docs) + 1, t, f"bulk comment {i}", **extra))
        if i % 50 == 20:
            docs.append(marker_doc(video, len(docs) + 1, t + 300, docs[-1]))
        if i % 97 == 40:
            docs.append(void_doc(video, len(docs) + 1, t + 5000))
    return docs


async def insert(db: AsyncDatabase[Doc], docs: list[Doc]) -> None:
    for i in range(0, len(docs), 1000):
        await db.comments.insert_many(docs[i : i + 1000])


def event_ms(doc: Doc) -> int:
    return int(doc.get("approved_at_ms") or doc["created_at_ms"])


async def stored_docs(db: AsyncDatabase[Doc], video: str) -> list[Doc]:
    """Every document of the video, by seq."""
    return await db.comments.find({"video_id": video}).sort("seq", 1).to_list(None)


def expected(
    docs: list[Doc], start_ms: int, from_ms: int = 0, to_ms: int | None = None
) -> list[tuple[str, int]]:
    """(id, offset_ms) of what a replay of the range shows, from the stored documents."""
    out = []
    for doc in docs:
        if doc.get("marker") or doc.get("void") or doc.get("status") != "visible":
            continue
        offset = event_ms(doc) - start_ms
        if offset >= from_ms and (to_ms is None or offset < to_ms):
            out.append((str(doc["_id"]), offset))
    return out


async def replay_all(api: Api, video: str, **params: Any) -> tuple[list[Doc], list[bytes]]:
    """Every item of a range, paging with next_after; and each page's raw body."""
    items: list[Doc] = []
    bodies: list[bytes] = []
    after = None
    while True:
        query = {**params, **({"after": after} if after is not None else {})}
        status, body, _ = await api.request(
            "GET", f"/api/videos/{video}/replay?" + "&".join(f"{k}={v}" for k, v in query.items())
        )
        assert status == 200, body
        bodies.append(orjson.dumps(body))  # as it came: the JSON has one spelling
        items += body["items"]
        if body["next_after"] is None:
            return items, bodies
        assert after is None or body["next_after"] > after, "no progress"
        after = body["next_after"]


def pairs(items: list[Doc]) -> list[tuple[str, int]]:
    return [(item["id"], item["offset_ms"]) for item in items]


async def replay_reads(api: Api) -> Doc:
    status, health, _ = await api.request("GET", "/healthz")
    assert status == 200, health
    return dict(health["replay_reads"])


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ranges_over_thousands_of_comments(
    api: Api, db: AsyncDatabase[Doc], moderator: tuple[str, str]
) -> None:
    video = unique("bulk")
    first_ms = now_ms() - 3 * 3600 * 1000
    docs = bulk(video, 3000, first_ms)
    await insert(db, docs)
    mod_token, _ = moderator
    # On top, through the API: posts (they take the seqs after the stored ones), a
    # delete and an edit of stored comments, and a viewer deleting their own post.
    viewer = await api.register(unique("viewer"))
    posted = [await api.post(video, f"posted {n}", mod_token) for n in range(3)]
    own = await api.post(video, "mine, soon gone", viewer)
    status, _, _ = await api.request(
        "DELETE", f"/api/videos/{video}/comments/{own['id']}", token=viewer
    )
    assert status == 200
    parents = {d.get("parent_id") for d in docs}
    shown = [
        d for d in docs
        if d.get("status") == "visible" and "approved_at" not in d and d["_id"] not in parents
    ]  # fmt: skip
    doomed, edited = shown[500], shown[900]
    status, _, _ = await api.request(
        "DELETE", f"/api/videos/{video}/comments/{doomed['_id']}", token=mod_token
    )
    assert status == 200
    status, _, _ = await api.request(
        "PATCH", f"/api/videos/{video}/comments/{edited['_id']}",
        json={"text": "edited later"}, token=mod_token,
    )  # fmt: skip
    assert status == 200

    # No start set: the first comment's time, remembered in the video's document.
    status, start, _ = await api.request("GET", f"/api/videos/{video}/live")
    assert status == 200, start
    assert (start["source"], start["started_at_ms"]) == ("first_comment", first_ms)
    stored = await db.videos.find_one({"_id": video})
    assert stored is not None and stored["live_at_source"] == "first_comment"
    start_ms = first_ms

    # The whole replay, paged to the end: every comment once, in seq order, as stored now.
    before = await replay_reads(api)
    began = time.perf_counter()
    items, bodies = await replay_all(api, video, limit=100)
    took = time.perf_counter() - began
    now_stored = await stored_docs(db, video)
    whole = expected(now_stored, start_ms)
    assert pairs(items) == whole
    assert len(whole) > 2500 and len({i for i, _ in whole}) == len(whole)
    assert [item["seq"] for item in items] == sorted(item["seq"] for item in items)
    ids = [i for i, _ in whole]
    assert [p["id"] for p in posted] == ids[-3:]  # the API's posts, at their time
    assert own["id"] not in ids and str(doomed["_id"]) not in ids
    assert all(b"mine, soon gone" not in body for body in bodies)
    assert all(f'"{doomed["text"]}"'.encode() not in body for body in bodies)
    by_id = {item["id"]: item for item in items}
    assert by_id[str(edited["_id"])]["text"] == "edited later"
    seqs = {str(d["_id"]): d["seq"] for d in docs}
    replies = [item for item in items if item["parent_id"] is not None]
    assert replies and all(seqs[r["parent_id"]] < r["seq"] for r in replies)
    approved = next(d for d in docs if "approved_at_ms" in d)
    assert by_id[str(approved["_id"])]["offset_ms"] == approved["approved_at_ms"] - start_ms
    after = await replay_reads(api)
    print(
        f"whole replay of {len(items)} comments ({len(docs) + 8} seqs) in {len(bodies)} pages:"
        f" {took:.2f} s, {after['documents'] - before['documents']} documents read"
    )

    # Ranges: boundaries at items' offsets (from is in, to is out), between them, and
    # where times run against the seq order; each is what the store says, paged or not.
    rng = random.Random(14)
    offsets = [offset for _, offset in whole]
    early = [event_ms(d) - start_ms for d in docs if "created_at_ms" in d][3::10][:20]
    edges = sorted(
        {*rng.sample(offsets, 12), *early, *(rng.randrange(0, offsets[-1]) for _ in range(8))}
    )
    head = len(docs) + 8  # what the cluster's counter holds: stored docs + API events
    for lo, hi in itertools.pairwise(edges):
        reads = await replay_reads(api)
        status, page, _ = await api.request(
            "GET", f"/api/videos/{video}/replay?from_ms={lo}&to_ms={hi}&limit=100"
        )
        assert status == 200, page
        want = expected(now_stored, start_ms, lo, hi)
        assert pairs(page["items"]) == want[: len(page["items"])], (lo, hi)
        # One search per range, each probe a few seqs of the index: a binary search.
        cost = await replay_reads(api)
        assert cost["searches"] - reads["searches"] == 1
        assert cost["probes"] - reads["probes"] <= math.ceil(math.log2(head + 1)) + 1
        assert cost["documents"] - reads["documents"] <= SCAN_CAP
        rest: list[Doc] = []
        if page["next_after"] is not None:
            rest, _ = await replay_all(api, video, from_ms=lo, to_ms=hi, limit=100,
                                       after=page["next_after"])  # fmt: skip
        assert pairs(page["items"] + rest) == want
    # Tiling ranges page the whole replay; small pages too.
    tiles: list[Doc] = []
    for lo in range(0, offsets[-1] + 1, 1_200_000):
        part, _ = await replay_all(api, video, from_ms=lo, to_ms=lo + 1_200_000, limit=77)
        tiles += part
    assert pairs(tiles) == whole
    x = offsets[1234]
    one, _ = await replay_all(api, video, from_ms=x, to_ms=x + 1, limit=1)
    assert pairs(one) == expected(now_stored, start_ms, x, x + 1) != []
    none, _ = await replay_all(api, video, from_ms=x - 1, to_ms=x, limit=1)
    assert all(offset < x for _, offset in pairs(none))
    # Past the end: nothing, and nothing more.
    status, page, _ = await api.request(
        "GET", f"/api/videos/{video}/replay?from_ms={offsets[-1] + 3_600_000}"
    )
    assert status == 200 and (page["items"], page["next_after"]) == ([], None)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_request_reads_a_bounded_range_and_says_where_to_go_on(
    api: Api, db: AsyncDatabase[Doc]
) -> None:
    """Thousands of deleted comments before the visible ones: a page stops after
    ``SCAN_CAP`` seqs with no item and a cursor. The video has no counter in Redis
    (stored only), so the store's highest seq bounds the read. A range wholly in the
    past may be cached, an open one not."""
    video = unique("sparse")
    first_ms = now_ms() - 7200 * 1000
    docs = [
        comment_doc(video, n + 1, first_ms + n * 100, f"gone {n}", status="deleted")
        for n in range(SCAN_CAP + 500)
    ]
    docs += [
        comment_doc(video, len(docs) + n + 1, first_ms + 600_000 + n * 1000, f"kept {n}")
        for n in range(20)
    ]
    await insert(db, docs)
    status, page, response = await api.request("GET", f"/api/videos/{video}/replay?to_ms=3600000")
    assert status == 200, page
    assert page["items"] == [] and page["next_after"] == SCAN_CAP
    assert response.headers["Cache-Control"] == "public, max-age=5"
    items, _ = await replay_all(api, video, to_ms=3_600_000)
    assert [i["text"] for i in items] == [f"kept {n}" for n in range(20)]
    assert [i["offset_ms"] for i in items] == [600_000 + n * 1000 for n in range(20)]
    status, page, response = await api.request("GET", f"/api/videos/{video}/replay?from_ms=600000")
    assert status == 200 and len(page["items"]) == 20
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.timeout(60)
async def test_a_gap_still_being_written_ends_the_range_until_it_is_filled(
    api: Api, db: AsyncDatabase[Doc]
) -> None:
    """A seq taken but not stored yet (a post in flight) is never stepped over: the
    range stops before it. Once it is filled (here by a void, as a fence writes it),
    the range goes on."""
    video = unique("gap")
    t = now_ms() - 2000
    docs = [comment_doc(video, seq, t + seq, f"recent {seq}") for seq in range(1, 11) if seq != 6]
    await insert(db, docs)
    items, _ = await replay_all(api, video)
    assert [i["seq"] for i in items] == [1, 2, 3, 4, 5]
    await insert(db, [void_doc(video, 6, now_ms())])
    items, _ = await replay_all(api, video)
    assert [i["seq"] for i in items] == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    # An old gap is for good: it is stepped over.
    old = unique("oldgap")
    t = now_ms() - 4 * MARGIN_MS
    await insert(db, [comment_doc(old, s, t + s, f"old {s}") for s in (1, 2, 4, 5)])
    items, _ = await replay_all(api, old)
    assert [i["seq"] for i in items] == [1, 2, 4, 5]


@pytest.mark.timeout(60)
async def test_the_start_set_by_staff_replaces_the_derived_one(
    api: Api, db: AsyncDatabase[Doc], moderator: tuple[str, str]
) -> None:
    video = unique("start")
    viewer = await api.register(unique("viewer"))
    posted = [await api.post(video, f"comment {n}", viewer) for n in range(3)]
    first = posted[0]["created_at_ms"]
    status, start, _ = await api.request("GET", f"/api/videos/{video}/live")
    assert status == 200 and start == {
        "video_id": video,
        "started_at": dt.datetime.fromtimestamp(first / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "started_at_ms": first,
        "source": "first_comment",
    }
    items, _ = await replay_all(api, video)
    assert pairs(items) == [(c["id"], c["created_at_ms"] - first) for c in posted]
    # Kept: a later comment does not move it.
    await api.post(video, "later", viewer)
    status, again, _ = await api.request("GET", f"/api/videos/{video}/live")
    assert again == start

    # Staff say the video went live 10 s before the first comment.
    went_live = first - 10_000
    iso = dt.datetime.fromtimestamp(went_live / 1000, dt.UTC).isoformat()
    path = f"/api/videos/{video}/live"
    status, body, _ = await api.request("PUT", path, json={"started_at": iso}, token=viewer)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body, _ = await api.request("PUT", path, json={"started_at": iso})
    assert status == 401
    status, body, _ = await api.request("PUT", path, json={"started_at": iso}, token=moderator[0])
    assert status == 200, body
    assert (body["started_at_ms"], body["source"]) == (went_live, "staff")
    status, again, _ = await api.request("GET", path)
    assert again == body
    stored = await db.videos.find_one({"_id": video})
    assert stored is not None and stored["live_at_by"] == int(moderator[1])
    items, _ = await replay_all(api, video, limit=2)
    assert [i["offset_ms"] for i in items[:3]] == [c["created_at_ms"] - went_live for c in posted]
    assert items[0]["offset_ms"] == 10_000

    # A start in another time zone is the same instant; comments before it are in no replay.
    second = posted[1]["created_at_ms"]
    zoned = dt.datetime.fromtimestamp(second / 1000, dt.timezone(dt.timedelta(hours=-5)))
    status, body, _ = await api.request(
        "PUT", path, json={"started_at": zoned.isoformat()}, token=moderator[0]
    )
    assert status == 200 and body["started_at_ms"] == second
    items, _ = await replay_all(api, video)
    assert [i["id"] for i in items] == [
        i for i, offset in expected(await stored_docs(db, video), second) if offset >= 0
    ]
    assert posted[1]["id"] in [i["id"] for i in items]


@pytest.mark.timeout(60)
async def test_a_held_comment_replays_where_it_was_approved(
    api: Api, db: AsyncDatabase[Doc], moderator: tuple[str, str]
) -> None:
    video = unique("heldreplay")
    author = await api.register(unique("linker"))
    status, held, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": HELD_TEXT}, token=author
    )
    assert status == 202, held
    plain = await api.post(video, "published at once", await api.register(unique("plain")))
    status, approved, _ = await api.request(
        "POST", f"/api/moderation/held/{held['id']}/approve", token=moderator[0]
    )
    assert status == 200, approved
    stored = await db.comments.find_one({"_id": int(held["id"])})
    assert stored is not None and stored["approved_at_ms"] >= stored["created_at_ms"]
    items, _ = await replay_all(api, video)
    start = plain["created_at_ms"]  # the first comment by seq: the held one had none yet
    assert pairs(items) == [
        (plain["id"], 0),
        (held["id"], stored["approved_at_ms"] - start),
    ]


@pytest.mark.timeout(60)
async def test_bad_requests_and_videos_without_a_start(
    api: Api, moderator: tuple[str, str]
) -> None:
    nothing = unique("nothing")
    for path in (f"/api/videos/{nothing}/replay", f"/api/videos/{nothing}/live"):
        status, body, _ = await api.request("GET", path)
        assert (status, body["error"]["code"]) == (404, "video_not_started"), path
    video = unique("params")
    await api.post(video, "something", await api.register(unique("viewer")))
    for query in ("from_ms=-1", "from_ms=abc", "to_ms=0", "from_ms=500&to_ms=500",
                  "from_ms=500&to_ms=499", "limit=0", "limit=101", "after=x",
                  f"to_ms={1 << 43}"):  # fmt: skip
        status, body, _ = await api.request("GET", f"/api/videos/{video}/replay?{query}")
        assert (status, body["error"]["code"]) == (400, "invalid_query"), query
    status, body, _ = await api.request("GET", "/api/videos/bad%20id/replay")
    assert (status, body["error"]["code"]) == (400, "invalid_video_id")
    path, token = f"/api/videos/{video}/live", moderator[0]
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    for value in ("yesterday", "2026-01-01T00:00:00", "1999-12-31T23:59:59Z", ahead, 1234, None):
        status, body, _ = await api.request("PUT", path, json={"started_at": value}, token=token)
        assert (status, body["error"]["code"]) == (400, "invalid_field"), value
    status, body, _ = await api.request(
        "PUT", path, json={"started_at": "2026-01-01T00:00:00Z", "at": 1}, token=token
    )
    assert (status, body["error"]["code"]) == (400, "unknown_field")


# -- the page -----------------------------------------------------------------------------


AXE_RUN = """async (tags) => (await axe.run(document, {runOnly: {type: "tag", values: tags}}))
    .violations.map((v) => ({id: v.id, help: v.help,
                             nodes: v.nodes.map((n) => n.target.join(" "))}))"""
PLAYBACK = """() => [...document.querySelectorAll("#replay-comments .comment")]
    .map((el) => ({id: el.dataset.id, offset: +el.dataset.offset, shown: +el.dataset.shownAt,
                   n: +el.dataset.n, reply: !!el.parentElement.closest(".comment")}))
    .sort((a, b) => a.n - b.n)"""


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_page_replays_comments_at_their_pace_from_an_offset(
    cluster: Cluster, api: Api, db: AsyncDatabase[Doc], browser: Browser,
    moderator: tuple[str, str],
) -> None:  # fmt: skip
    """From 1:00: nothing before it, then each comment when the replay's clock reaches
    its offset, in order, across pages (50 a page) and ranges (10 s each); deleted ones
    never; a reply under its parent. Back to live shows the live list, which went on."""
    video = unique("pagereplay")
    start = now_ms() - 3600 * 1000
    status, body, _ = await api.request(
        "PUT", f"/api/videos/{video}/live", json={"started_at": at(start).isoformat()},
        token=moderator[0],
    )  # fmt: skip
    assert status == 200, body
    docs = [comment_doc(video, 1, start + 30_000, "before the offset")]
    for n in range(140):  # 60.5 s to 70.2 s: three pages, and into the next range
        extra = {"status": "deleted"} if n == 70 else {}
        docs.append(
            comment_doc(video, len(docs) + 1, start + 60_500 + n * 70, f"fast {n}", **extra)
        )
    docs.append(comment_doc(video, len(docs) + 1, start + 71_000, "slow 0"))
    docs.append(comment_doc(video, len(docs) + 1, start + 72_500, "a reply",
                            parent_id=docs[-1]["_id"]))  # fmt: skip
    for n in range(1, 4):
        docs.append(comment_doc(video, len(docs) + 1, start + 72_000 + n * 1000, f"slow {n}"))
    await insert(db, docs)
    want = expected(await stored_docs(db, video), start, 60_000)
    assert len(want) == 144

    context = await browser.new_context(ignore_https_errors=True, bypass_csp=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{cluster.services['comment-1'].url}/?v={video}")
    await expect(page.locator("#status")).to_have_text("live", timeout=15000)
    await page.fill("#replay-at", "1:00")
    await page.click("#replay-start")
    await expect(page.locator("#replay-comments")).to_be_visible()
    await expect(page.locator("#comments")).to_be_hidden()
    await expect(page.locator("#replay-clock")).to_have_text(re.compile(r"^Replaying at 1:\d\d"))
    replayed = page.locator("#replay-comments .comment")
    await expect(replayed.first).to_have_attribute("data-offset", str(want[0][1]), timeout=10000)
    live = await api.post(video, "live meanwhile", await api.register(unique("live")))
    await expect(replayed).to_have_count(len(want), timeout=40000)
    shown = await page.evaluate(PLAYBACK)
    assert [(s["id"], s["offset"]) for s in shown] == want
    # Paced: each when the replay's clock (running from 1:00 in real time) reached it.
    assert all(s["shown"] >= s["offset"] for s in shown), "shown before its time"
    reply = next(s for s in shown if s["id"] == str(docs[-4]["_id"]))
    assert reply["reply"]
    content = await page.content()
    assert "before the offset" not in content and "fast 70<" not in content
    assert "live meanwhile" not in await page.locator("#replay-comments").inner_text()

    # Accessible in replay mode too.
    await page.add_script_tag(path=str(AXE))
    violations = await page.evaluate(AXE_RUN, AXE_RULES)
    assert violations == [], violations

    await page.click("#replay-stop")
    await expect(page.locator("#replay-comments")).to_be_hidden()
    await expect(page.locator(f'#comments .comment[data-id="{live["id"]}"]')).to_be_visible()
    assert errors == []
    await context.close()
