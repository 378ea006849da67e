"""Every process of a running cluster serves /metrics, and the numbers follow what happened.

Scraped as Prometheus would (the text format, parsed by prometheus_client's
parser): each process exports the metrics ``livecomments/kernel/metrics.py``
declares for its component with their types; posting N comments moves the
accepted-posts counter by exactly N, the dispatchers and both RTMS nodes by what
they routed, delivered and wrote to the viewers; a refused post moves its reason;
viewers per video stay a bounded top-k; and every metric the Grafana dashboard
and the alert rules query is exported.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from livecomments.cli.cluster import Cluster
from livecomments.cli.launcher import free_port, wait_ready
from livecomments.kernel import metrics as m
from tests.support import Api, Viewer, unique
from tests.unit.test_dashboard import EXTERNAL, PROCESS, referenced, spec_of

REFUSED_TEXT = "buy followers now at http://spam.example and http://x.example"
COMMENTS = "/api/videos/{video_id}/comments"


class Scrape:
    """One scrape of one process: its families by name."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def samples(self, name: str) -> list[Any]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    # A process makes its exposition at most every EXPOSITION_MAX_AGE: after waiting
    # that long, what it answers was made after everything the test did before.
    await asyncio.sleep(m.EXPOSITION_MAX_AGE + 0.05)
    async with session.get(url) as response:
        assert response.status == 200, (url, response.status, await response.text())
        assert response.content_type == "text/plain"
        return Scrape(await response.text())


async def scrape_all(cluster: Cluster, session: aiohttp.ClientSession) -> dict[str, Scrape]:
    urls = cluster.metrics_urls()
    scrapes = await asyncio.gather(*(scrape(session, url) for url in urls.values()))
    return dict(zip(urls, scrapes, strict=True))


async def settled(
    take: Callable[[], Awaitable[dict[str, Scrape]]],
    done: Callable[[dict[str, Scrape]], bool],
    timeout: float = 10.0,
) -> dict[str, Scrape]:
    """Scrape until ``done`` holds (a reply may be counted a moment after the viewer
    got the event); the last scrape either way, for the asserts to explain."""
    deadline = time.monotonic() + timeout
    while True:
        now = await take()
        if done(now) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


def kind_of(name: str) -> str:
    return {"dispatcher": m.DISPATCHER, "rtms": m.RTMS, "comment": m.COMMENT_SERVICE}[
        name.rsplit("-", 1)[0]
    ]


async def register(api: Api) -> str:
    return await api.register(unique("m"))


# -- names and types ----------------------------------------------------------------


async def test_every_process_exports_its_metrics_with_their_types(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    scrapes = await scrape_all(cluster, session)
    assert sorted(scrapes) == ["comment-1", "dispatcher-1", "dispatcher-2", "rtms-1", "rtms-2"]
    for name, scraped in scrapes.items():
        component = kind_of(name)
        for spec in m.specs_of(component):
            family = scraped.families.get(spec.family)
            assert family is not None, f"{name} does not export {spec.name}"
            assert family.type == spec.kind, (name, spec.name, family.type)
        ours = {f for f in scraped.families if f.startswith(m.PREFIX)}
        assert ours == {spec.family for spec in m.specs_of(component)}, name
        (info,) = scraped.samples("livecomments_build_info")
        assert info.labels["component"] == component and info.value == 1
        # The process collector: CPU, memory, file descriptors.
        assert scraped.value("process_cpu_seconds_total") > 0
        assert scraped.value("process_resident_memory_bytes") > 0
        assert scraped.value("process_open_fds") > 0
        assert scraped.value("livecomments_zookeeper_connected") == 1
        assert scraped.value("livecomments_zookeeper_session_state", state="CONNECTED") == 1
    assert scrapes["rtms-1"].samples("livecomments_build_info")[0].labels["node_id"] == "rtms-1"
    assert scrapes["dispatcher-2"].value("livecomments_cluster_nodes", kind="rtms") == 2
    assert scrapes["comment-1"].value("livecomments_cluster_nodes", kind="dispatcher") == 2


async def test_the_dispatchers_admin_listener_answers_health(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    for name in ("dispatcher-1", "dispatcher-2"):
        url = cluster.services[name].metrics_url.replace("/metrics", "/healthz")
        assert url.startswith("http://127.0.0.1:")
        async with session.get(url) as response:
            assert response.status == 200
            body = orjson.loads(await response.read())
        assert body["node_id"] == name and body["zookeeper"] == "CONNECTED"
        assert body["rtms_nodes"] == 2


# -- values ------------------------------------------------------------------------------


async def test_counters_move_by_what_was_done(
    cluster: Cluster, session: aiohttp.ClientSession, api: Api
) -> None:
    posts = 5
    video = unique("metrics")
    token = await register(api)
    # Every video is placed on both nodes (MIN_SPREAD=2): one viewer on each.
    viewers = [
        await Viewer(f"{cluster.services[n].url}/stream/{video}?redirected=1", session).connect()
        for n in ("rtms-1", "rtms-2")
    ]
    assert [v.status for v in viewers] == [200, 200]
    before = await scrape_all(cluster, session)
    texts = [f"metrics {i}" for i in range(posts)]
    for text in texts:
        await api.post(video, text, token)
    status, body, _ = await api.request(
        "POST", f"/api/videos/{video}/comments", json={"text": REFUSED_TEXT}, token=token
    )
    assert (status, body["error"]["code"]) == (422, "content_refused")
    for viewer in viewers:
        await viewer.wait_for(posts)

    def delta(after: dict[str, Scrape], process: str, name: str, **labels: str) -> float:
        return after[process].value(name, **labels) - before[process].value(name, **labels)

    def dispatched(after: dict[str, Scrape]) -> float:
        return sum(
            delta(after, d, "livecomments_dispatcher_delivered_total", node=n)
            for d in ("dispatcher-1", "dispatcher-2")
            for n in ("rtms-1", "rtms-2")
        )

    after = await settled(
        lambda: scrape_all(cluster, session), lambda now: dispatched(now) >= 2 * posts
    )
    # The comment service: posts by outcome, HTTP answers by route and status, stages.
    assert delta(after, "comment-1", "livecomments_posts_total", outcome="accepted") == posts
    assert delta(after, "comment-1", "livecomments_posts_total", outcome="held") == 0
    refused = {"outcome": "refused", "reason": "content_refused"}
    assert delta(after, "comment-1", "livecomments_posts_total", **refused) == 1
    route = {"route": COMMENTS, "method": "POST"}
    assert delta(after, "comment-1", "livecomments_http_requests_total", **route, status="201") == (
        posts
    )
    assert delta(after, "comment-1", "livecomments_http_requests_total", **route, status="422") == 1
    count = "livecomments_http_request_duration_seconds_count"
    assert delta(after, "comment-1", count, **route) == posts + 1
    assert delta(after, "comment-1", "livecomments_post_duration_seconds_count") == posts
    for stage in ("admission", "insert", "dispatch"):
        name = "livecomments_post_stage_duration_seconds_count"
        assert delta(after, "comment-1", name, stage=stage) == posts, stage
    assert delta(after, "comment-1", "livecomments_store_call_duration_seconds_count") > 0
    assert delta(after, "comment-1", "livecomments_redis_call_duration_seconds_count") > 0
    assert (
        after["comment-1"].value("livecomments_grpc_streams_opened_total", peer="dispatcher") >= 1
    )
    # The dispatchers: every event routed once (plus what the outbox sent again), and
    # taken by both hosting nodes.
    again = delta(after, "comment-1", "livecomments_outbox_redispatched_total")
    routed = sum(
        delta(after, d, "livecomments_dispatcher_events_total")
        for d in ("dispatcher-1", "dispatcher-2")
    )
    assert routed == posts + again
    assert dispatched(after) == 2 * (posts + again)
    assert sum(delta(after, d, "livecomments_dispatcher_dropped_total") for d in after) == 0
    assert (
        sum(
            delta(after, d, "livecomments_dispatcher_dispatch_duration_seconds_count")
            for d in ("dispatcher-1", "dispatcher-2")
        )
        >= 1
    )
    # Each RTMS node: the events accepted, written once to its one viewer, each
    # event's latency observed once.
    for node, viewer in zip(("rtms-1", "rtms-2"), viewers, strict=True):
        assert delta(after, node, "livecomments_rtms_events_accepted_total") == posts, node
        assert delta(after, node, "livecomments_rtms_deliveries_total") == posts, node
        assert delta(after, node, "livecomments_rtms_delivery_latency_seconds_count") == posts
        assert 1 <= delta(after, node, "livecomments_rtms_writes_total") <= posts
        written = delta(after, node, "livecomments_rtms_written_bytes_total")
        assert written == sum(len(e.data) for e in viewer.of("comment")) + sum(
            len(f"id: {e.id}\nevent: comment\ndata: \n\n") for e in viewer.of("comment")
        )
        assert after[node].value("livecomments_rtms_viewers") == 1
        assert after[node].value("livecomments_rtms_video_viewers", video_id=video) == 1
        assert after[node].value("livecomments_rtms_connections") >= 1
        assert after[node].value("livecomments_rtms_channels") >= 1
    # A viewer that comes back with its last event id resumes from the ring.
    resumes = "livecomments_rtms_resumes_total"
    last = viewers[0].of("comment")[1].id
    assert last is not None
    before_resume = await scrape(session, cluster.services["rtms-1"].metrics_url)
    again_viewer = await Viewer(
        f"{cluster.services['rtms-1'].url}/stream/{video}?redirected=1",
        session,
        headers={"Last-Event-ID": last},
    ).connect()
    await again_viewer.wait_for(posts - 2)
    resumed = await scrape(session, cluster.services["rtms-1"].metrics_url)
    ring = resumed.value(resumes, source="ring") - before_resume.value(resumes, source="ring")
    assert ring == 1
    for viewer in [*viewers, again_viewer]:
        await viewer.close()


async def test_viewers_per_video_are_a_bounded_top_k(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    base = cluster.services["rtms-1"].url
    videos = [unique("topk") for _ in range(m.TOP_VIDEOS + 3)]
    viewers = [
        await Viewer(f"{base}/stream/{video}?redirected=1", session).connect() for video in videos
    ]
    viewers += [
        await Viewer(f"{base}/stream/{videos[-1]}?redirected=1", session).connect()
        for _ in range(2)
    ]
    scraped = await scrape(session, cluster.services["rtms-1"].metrics_url)
    top = scraped.samples("livecomments_rtms_video_viewers")
    assert len(top) == m.TOP_VIDEOS
    assert {s.labels["video_id"]: s.value for s in top}[videos[-1]] == 3
    assert scraped.value("livecomments_rtms_viewers") >= len(videos) + 2
    for viewer in viewers:
        await viewer.close()


# -- the dashboard and the rules ---------------------------------------------------------


async def test_every_metric_the_dashboard_and_rules_query_is_exported(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    scrapes = await scrape_all(cluster, session)
    exported: dict[str, str] = {}  # family -> type, over every process
    for scraped in scrapes.values():
        exported.update((f.name, f.type) for f in scraped.families.values())
    missing = []
    for name in sorted(referenced() - EXTERNAL):
        spec = spec_of(name)
        family = spec.family if spec is not None else name.removesuffix("_total")
        kind = spec.kind if spec is not None else None
        if family not in exported or (kind is not None and exported[family] != kind):
            missing.append(name)
    assert not missing, f"queried but not exported by the cluster: {missing}"
    assert PROCESS <= {
        s.name for sc in scrapes.values() for f in sc.families.values() for s in f.samples
    }


# -- an admin listener keeps /metrics off the public one ------------------------------------


@pytest.mark.timeout(90)
async def test_an_admin_port_moves_metrics_off_the_public_listener(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    ports = {"rtms": free_port(), "comment": free_port()}
    started = [
        cluster.start_rtms(env={"LIVECOMMENTS_ADMIN_PORT": str(ports["rtms"])}, wait=False),
        cluster.start_comment_service(
            env={"LIVECOMMENTS_ADMIN_PORT": str(ports["comment"])}, wait=False
        ),
    ]
    names = [next(n for n, s in cluster.services.items() if s is node) for node in started]
    try:
        for node in started:
            wait_ready(node.proc)
        for node, port, component in zip(
            started, ports.values(), (m.RTMS, m.COMMENT_SERVICE), strict=True
        ):
            assert node.metrics_url == f"http://127.0.0.1:{port}/metrics"
            scraped = await scrape(session, node.metrics_url)
            assert scraped.samples("livecomments_build_info")[0].labels["component"] == component
            async with session.get(f"{node.url}/metrics") as response:
                assert response.status == 404
                assert orjson.loads(await response.read())["error"]["code"] == "not_found"
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert orjson.loads(await response.read())["zookeeper"] == "CONNECTED"
    finally:
        for node, name in zip(started, names, strict=True):
            node.proc.stop()
            del cluster.services[name]


async def test_top_finds_every_process_and_shows_what_it_does(
    cluster: Cluster, session: aiohttp.ClientSession, api: Api
) -> None:
    """``livecomments top`` finds the processes through ZooKeeper alone, and its numbers are
    the processes' own."""
    video = unique("top")
    token = await register(api)
    viewers = [
        await Viewer(f"{cluster.services[n].url}/stream/{video}?redirected=1", session).connect()
        for n in ("rtms-1", "rtms-2")
    ]
    for i in range(3):
        await api.post(video, f"top {i}", token)
    for viewer in viewers:
        await viewer.wait_for(3)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIVECOMMENTS_")},
        **{k: v for k, v in cluster.base_env().items() if k.startswith("LIVECOMMENTS_ZK_")},
    }
    args = ["top", "--once", "--json", "--interval", "0.5"]
    args += ["--ca", cluster.ca_file] if cluster.ca_file else []
    top = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livecomments", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(top.communicate(), 60)
    assert top.returncode == 0, err.decode()
    doc = orjson.loads(out)
    after = await scrape_all(cluster, session)  # nothing happened since: the same counts
    assert {r["name"] for r in doc["rtms"]} == {"rtms-1", "rtms-2"}
    assert {r["name"] for r in doc["dispatcher"]} == {"dispatcher-1", "dispatcher-2"}
    assert len(doc["comment-service"]) == 1 and doc["totals"]["down"] == 0
    for row in doc["rtms"]:
        process = after[row["name"]]
        assert row["viewers"] == process.value(m.RTMS_VIEWERS.name) >= 1
        assert row["deliveries"] == process.value(m.RTMS_DELIVERIES.name) >= 3
    for row in doc["dispatcher"]:
        assert row["events"] == after[row["name"]].value(m.DISPATCHER_EVENTS.name)
        assert row["zookeeper"] is True
    (comment,) = doc["comment-service"]
    accepted = after["comment-1"].value(m.POSTS.name, outcome="accepted")
    assert comment["accepted"] == accepted >= 3
    assert doc["totals"]["viewers"] == sum(r["viewers"] for r in doc["rtms"])
    assert doc["totals"]["rtms_nodes"] == 2 and doc["totals"]["dispatchers"] == 2
