"""An RTMS node against hostile or unlucky viewers (issue 10, items 5-7).

- Channel creation belongs to the node: a viewer that disconnects while its
  request creates a video's channel does not hang the others joining it; a
  failed creation answers every joiner (503, Retry-After) and is rolled back.
- Connection limits on the SSE listener: a head deadline (408), caps on
  connections not streaming yet, per-address caps on streams and on first
  viewers of new videos, per-node caps on channels and creations/s.
- Bounded resume: store reads paged and shared by concurrent resumers, written
  within the per-viewer buffer bound; too far back gets ``reset`` instead.

Every attack test keeps a viewer of another video on the attacked node, posts
a comment during the attack and checks it arrives (printing, never asserting,
the latency). The first tests drive the hub and the limits in-process (fake
transports that model flow control); the rest run on the real cluster, each
attack from its own 127.0.x.y source addresses so the per-address limits of one
test do not meet another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from livecomments.cli.cluster import Cluster
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.netaddr import TrustedProxies, limit_key
from livecomments.kernel.rates import Rate
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.stream import Position
from livecomments.rtms.channel import HEARTBEAT
from livecomments.rtms.hub import Hub
from livecomments.rtms.limits import Buckets, Refused
from tests.hub_doubles import flow_viewer
from tests.support import Api, Viewer, cli, client_session, unique

HEAD_TIMEOUT = 3.0
PER_PEER_PENDING = 20
STREAMS_PER_ADDRESS = 30
JOINS = 10  # new videos per address: a burst of 10, 1 more every 10 s
NODE_CREATIONS = 150  # new videos per node: a burst of 150, 5 more per second
RING = 16
PAGE = 20
REPLAY_LIMIT = 100
PROXY_NET = "127.0.9.0/24"

CLUSTER_ENV = {
    "LIVECOMMENTS_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
    "LIVECOMMENTS_MAX_UNATTACHED": "100",
    "LIVECOMMENTS_MAX_UNATTACHED_PER_PEER": str(PER_PEER_PENDING),
    "LIVECOMMENTS_MAX_STREAMS_PER_ADDRESS": str(STREAMS_PER_ADDRESS),
    "LIVECOMMENTS_JOIN_LIMIT_ADDRESS": f"{JOINS}/{JOINS * 10}",
    "LIVECOMMENTS_CHANNEL_LIMIT_NODE": f"{NODE_CREATIONS}/30",
    "LIVECOMMENTS_HOST_GRACE": "3",
    "LIVECOMMENTS_RING_SIZE": str(RING),
    "LIVECOMMENTS_REPLAY_PAGE": str(PAGE),
    "LIVECOMMENTS_REPLAY_LIMIT": str(REPLAY_LIMIT),
    "LIVECOMMENTS_TRUSTED_PROXIES": PROXY_NET,
}


# -- in-process: the hub with transports that model flow control ---------------------


EPOCH = 3


def stored(video: str, seq: int) -> dict[str, Any]:
    return {
        "_id": 1000 + seq, "video_id": video, "seq": seq, "epoch": EPOCH, "user_id": 1,
        "author": "a", "text": "x" * 200, "created_at_ms": 0,
    }  # fmt: skip


class StoreBackend:
    """A video with ``head`` stored events; ``host`` may be slow or fail."""

    def __init__(self, head: int = 0, host_delay: float = 0.0, fail: bool = False) -> None:
        self.head_seq = head
        self.host_delay = host_delay
        self.fail = fail
        self.fetches: list[tuple[int, int]] = []
        self.hosted: set[str] = set()
        self.unhosted: list[str] = []

    async def head(self, video_id: str) -> Position | None:
        return Position(EPOCH, self.head_seq)

    async def fetch(self, video_id: str, lo: int, hi: int) -> list[dict[str, Any]]:
        self.fetches.append((lo, hi))
        await asyncio.sleep(0.01)
        return [stored(video_id, s) for s in range(lo, min(hi, self.head_seq) + 1)]

    async def host(self, video_id: str) -> None:
        self.hosted.add(video_id)  # the znode is made, and then the call fails
        await asyncio.sleep(self.host_delay)
        if self.fail:
            raise Unavailable("zookeeper: connection lost")

    async def unhost(self, video_id: str) -> None:
        self.hosted.discard(video_id)
        self.unhosted.append(video_id)


async def test_a_joiner_that_goes_away_does_not_cancel_the_channel_for_the_others() -> None:
    backend = StoreBackend(host_delay=0.05)
    hub = Hub(backend)
    first, _ = flow_viewer()
    second, transport = flow_viewer()
    creator = asyncio.create_task(hub.attach(first, "v", None, b"HEAD\n"))
    await asyncio.sleep(0.01)  # the first request is creating the channel
    joiner = asyncio.create_task(hub.attach(second, "v", None, b"HEAD\n"))
    await asyncio.sleep(0)
    creator.cancel()  # its client reset the connection
    await asyncio.wait_for(joiner, 2)
    assert transport.data == b"HEAD\n" and second.channel is hub.channels["v"]
    assert hub.viewer_count == 1 and hub.stats.channels_created == 1
    await hub.stop()


async def test_a_failed_creation_answers_every_joiner_and_is_rolled_back() -> None:
    backend = StoreBackend(host_delay=0.05, fail=True)
    hub = Hub(backend)
    joins = [hub.attach(flow_viewer()[0], "v", None, b"HEAD\n") for _ in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*joins, return_exceptions=True), 2)
    assert all(isinstance(r, Unavailable) for r in results), results
    assert hub.channels == {} and not hub.hosts("v")
    for _ in range(100):  # the rollback removes the znode the failed call made
        if backend.unhosted:
            break
        await asyncio.sleep(0.01)
    assert backend.unhosted == ["v"] and backend.hosted == set()
    backend.fail = False  # ZooKeeper is back: the next viewer hosts the video
    viewer, _ = flow_viewer()
    await asyncio.wait_for(hub.attach(viewer, "v", None, b""), 2)
    assert backend.hosted == {"v"} and hub.stats.channels_failed == 1
    await hub.stop()


async def test_node_caps_on_channels_and_creations_refuse_with_retry_after() -> None:
    hub = Hub(StoreBackend(), max_channels=3, channel_limit="100/1")
    for video in ("a", "b", "c"):
        await hub.attach(flow_viewer()[0], video, None)
    with pytest.raises(Refused) as refused:
        await hub.attach(flow_viewer()[0], "d", None)
    assert refused.value.status == 503 and refused.value.code == "node_busy"
    assert refused.value.headers["Retry-After"] == "10"
    await hub.attach(flow_viewer()[0], "a", None)  # joining a hosted video costs nothing
    await hub.stop()

    hub = Hub(StoreBackend(), channel_limit="2/10")
    await hub.attach(flow_viewer()[0], "a", None)
    await hub.attach(flow_viewer()[0], "b", None)
    with pytest.raises(Refused) as refused:
        await hub.attach(flow_viewer()[0], "c", None)
    assert refused.value.code == "node_busy" and refused.value.headers["Retry-After"] == "5"
    assert hub.stats.channels_refused == 1
    await hub.stop()


async def test_replay_is_paged_shared_and_written_within_the_buffer_bound() -> None:
    bound = 8192
    backend = StoreBackend(head=300)
    hub = Hub(
        backend, ring_size=16, max_viewer_buffer=bound, replay_page=50, replay_limit=250,
        write_timeout=0.3,
    )  # fmt: skip
    await hub.attach(flow_viewer()[0], "v", None)  # hosts it: head 300, empty ring
    readers = [flow_viewer() for _ in range(5)]
    stuck, stuck_transport = flow_viewer()
    joins = [
        asyncio.create_task(hub.attach(viewer, "v", Position(EPOCH, 100), b"HEAD\n"))
        for viewer, _ in [*readers, (stuck, stuck_transport)]
    ]
    while not all(task.done() for task in joins[:-1]):  # readers read; `stuck` never does
        for _, transport in readers:
            transport.drain()
        await asyncio.sleep(0.001)
    for _, transport in readers:
        assert transport.seqs() == list(range(101, 301))
        assert transport.data.startswith(b"HEAD\n")
        assert transport.peak <= bound, transport.peak
    # Four pages (101-150 .. 251-300), each read once for the six of them.
    assert sorted(backend.fetches) == [(lo, lo + 49) for lo in range(101, 301, 50)]
    await asyncio.wait_for(joins[-1], 2)
    assert stuck_transport.aborted and stuck_transport.peak <= bound
    assert hub.stats.slow_dropped == 1 and hub.viewer_count == 1 + len(readers)
    # Further back than replay_limit store events: reset, and no store read.
    far, far_transport = flow_viewer()
    before = len(backend.fetches)
    await hub.attach(far, "v", Position(EPOCH, 1), b"")
    assert b"event: reset" in far_transport.data and b"too_far_behind" in far_transport.data
    assert len(backend.fetches) == before and hub.stats.replay_resets == 1
    await hub.stop()


async def test_heartbeat_and_moved_drop_a_viewer_whose_buffer_is_full() -> None:
    bound = 1024
    hub = Hub(StoreBackend(), max_viewer_buffer=bound)
    reading, reading_transport = flow_viewer()
    full, full_transport = flow_viewer()
    await hub.attach(reading, "v", None)
    await hub.attach(full, "v", None)
    full_transport.buffer = bound  # it stopped reading
    hub.heartbeat()
    assert reading_transport.data == HEARTBEAT and full_transport.aborted
    assert full_transport.data == b""  # nothing written past the bound
    hub2 = Hub(StoreBackend(), max_viewer_buffer=bound)
    a, a_transport = flow_viewer()
    b, b_transport = flow_viewer()
    await hub2.attach(a, "v", None)
    await hub2.attach(b, "v", None)
    b_transport.buffer = bound - 10
    assert hub2.move("v", "https://elsewhere", "moved") == 2
    assert b"event: moved" in a_transport.data and a_transport.closed
    assert b_transport.aborted and b"moved" not in b_transport.data
    await hub.stop()
    await hub2.stop()


def test_trusted_proxies_take_cidr_ranges_and_ipv6_clients_count_by_64() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.0.2.7", "fd00::/8"])
    assert trusted.trusts("10.3.4.5") and trusted.trusts("::ffff:10.0.0.1")
    assert not trusted.trusts("11.0.0.1") and not TrustedProxies([]).trusts("10.0.0.1")
    # From the right, skipping our proxies; a forged left part is never read.
    assert trusted.client("10.0.0.2", "1.1.1.1, 203.0.113.9, 10.9.9.9") == "203.0.113.9"
    assert trusted.client("10.0.0.2", "garbage, 192.0.2.7") == "10.0.0.2"
    assert trusted.client("198.51.100.1", "203.0.113.9") == "198.51.100.1"  # not a proxy
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert limit_key("::ffff:198.51.100.1") == "198.51.100.1"
    with pytest.raises(ValueError):
        TrustedProxies(["10.0.0.0/33"])
    now = [0.0]
    buckets = Buckets(Rate.parse("2/10"), clock=lambda: now[0], max_keys=2)
    assert buckets.take("a") == 0 and buckets.take("a") == 0 and buckets.take("a") == 5.0
    now[0] = 5.0
    assert buckets.take("a") == 0
    buckets.take("b")
    buckets.take("c")  # past max_keys: the oldest or full buckets are forgotten
    assert len(buckets) <= 2


# -- on the cluster ----------------------------------------------------------------------


def rtms(cluster: Cluster, index: int) -> str:
    return cluster.services[f"rtms-{index}"].url


def ssl_context(cluster: Cluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cluster.ca_file)


async def connect(
    cluster: Cluster, index: int, source: str, *, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TLS connection to an RTMS node from ``source`` (127.0.x.y)."""
    host, port = rtms(cluster, index).rsplit("/", 1)[1].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock, ssl=ssl_context(cluster), server_hostname=host)


def request(path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: rtms",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def response(
    reader: asyncio.StreamReader, timeout: float = 10
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and (for an error) the JSON body of an answer."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = None
    if "content-length" in headers:
        body = orjson.loads(await reader.readexactly(int(headers["content-length"])))
    return int(status_line.split()[1]), headers, body


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a client that vanishes does."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


async def health(session: aiohttp.ClientSession, cluster: Cluster, index: int) -> dict[str, Any]:
    async with session.get(f"{rtms(cluster, index)}/healthz") as answer:
        body: dict[str, Any] = await answer.json()
        return body


class Bystander:
    """A viewer of another video on the attacked node, and a poster to prove it is served."""

    def __init__(self, api: Api, viewer: Viewer, video: str, token: str) -> None:
        self.api, self.viewer, self.video, self.token = api, viewer, video, token
        self.got = 0

    async def check(self, label: str) -> None:
        """Post during the attack; the comment must arrive (the latency is only printed)."""
        sent = time.monotonic()
        posted = await self.api.post(self.video, f"during {label}", self.token)
        self.got += 1
        events_ = await self.viewer.wait_for(self.got, timeout=15)
        took = (time.monotonic() - sent) * 1000
        assert events_[-1].json()["id"] == posted["id"]
        print(f"[{label}] a viewer of another video got a comment {took:.0f} ms after the post")


_bystanders = iter(range(1, 250))


@pytest.fixture
async def bystander(
    cluster: Cluster, api: Api, request: pytest.FixtureRequest
) -> AsyncIterator[Bystander]:
    """Each from its own address, so the attacks' per-address limits never meet it."""
    index = getattr(request, "param", 1)
    video = unique("bystander")
    async with client_session(cluster.ca_file, source=f"127.0.1.{next(_bystanders)}") as http:
        url = f"{rtms(cluster, index)}/stream/{video}?redirected=1"
        viewer = await Viewer(url, http).connect()
        assert viewer.status == 200
        token = await api.register(unique("poster"))
        yield Bystander(api, viewer, video, token)
        await viewer.close()


async def test_a_viewer_resetting_while_its_join_creates_the_channel_hangs_no_one(
    cluster: Cluster, api: Api, bystander: Bystander
) -> None:
    """200 rounds: two viewers join a new video at once, the first resets after 0-15 ms."""
    token = bystander.token
    rng = random.Random(10)
    hung: list[str] = []

    async def round_(n: int) -> None:
        video, node = unique(f"race{n}"), 1 + n % 2
        source = f"127.0.2.{1 + n % 50}"  # 4 rounds per address: within its join limit
        path = f"/stream/{video}?redirected=1"

        async def first() -> None:
            _reader, writer = await connect(cluster, node, source)
            writer.write(request(path))
            await asyncio.sleep(rng.uniform(0, 0.015))
            reset(writer)

        async with client_session(cluster.ca_file, source=source) as http:
            url = f"{rtms(cluster, node)}{path}"
            second = Viewer(url, http)
            leaving = asyncio.create_task(first())
            try:
                await second.connect(timeout=10)
            except TimeoutError:
                hung.append(video)
                await second.close()
                return
            finally:
                await leaving
            try:
                assert second.status == 200, (second.status, bytes(second.raw))
                posted = await api.post(video, f"round {n}", token)
                (event,) = await second.wait_for(1)
                assert event.json()["id"] == posted["id"]
            finally:
                await second.close()

    for batch in range(0, 200, 10):
        await asyncio.gather(*(round_(n) for n in range(batch, batch + 10)))
    assert hung == [], f"{len(hung)} of 200 second viewers got no answer"
    await bystander.check("join race")


async def test_a_failed_creation_answers_every_joiner_with_503_and_retry_after(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, bystander: Bystander
) -> None:
    video = unique("broken")
    redis = Redis.from_url(cluster.backends.redis_url)
    video_keys = Keys(f"{cluster.namespace}:")
    keys = [video_keys.seq(video), video_keys.epoch(video)]
    await redis.mset({keys[0]: "not a number", keys[1]: "1"})  # its head cannot be read
    try:
        async with client_session(cluster.ca_file, source="127.0.0.7") as http:
            url = f"{rtms(cluster, 1)}/stream/{video}?redirected=1"

            async def join() -> tuple[int, str | None, Any]:
                async with http.get(url) as answer:
                    return answer.status, answer.headers.get("Retry-After"), await answer.json()

            answers = await asyncio.wait_for(asyncio.gather(*(join() for _ in range(6))), 10)
            for status, retry_after, body in answers:
                assert status == 503 and retry_after is not None and int(retry_after) >= 1
                assert body["error"]["code"] == "unavailable"
            await bystander.check("failed creation")
            _, listed, _ = await cli(cluster, "videos")
            assert video not in {v["video"] for v in listed["videos"]}  # no znode left
            await redis.delete(*keys)
            viewer = await Viewer(url, http).connect()  # the video works once its head does
            assert viewer.status == 200
            await viewer.close()
    finally:
        await redis.delete(*keys)
        await redis.aclose()


async def test_request_heads_have_a_deadline_and_a_cap_per_peer_and_per_node(
    cluster: Cluster, session: aiohttp.ClientSession, bystander: Bystander
) -> None:
    started = time.monotonic()
    # One address sends 30 heads that never end: 20 are held, 10 refused at once.
    held = [await connect(cluster, 1, "127.0.0.3") for _ in range(PER_PEER_PENDING)]
    for _, writer in held:
        writer.write(b"GET /stream/slow HTTP/1.1\r\nHost: rtms\r\n")
    refused = [await connect(cluster, 1, "127.0.0.3") for _ in range(10)]
    for reader, _ in refused:
        status, headers, body = await response(reader)
        assert status == 429 and body["error"]["code"] == "too_many_connections"
        assert int(headers["retry-after"]) >= 1
    # Someone else still gets a stream meanwhile.
    async with client_session(cluster.ca_file, source="127.0.0.13") as http:
        other = await Viewer(
            f"{rtms(cluster, 1)}/stream/{unique('x')}?redirected=1", http
        ).connect()
        assert other.status == 200
        await other.close()
    await bystander.check("slow heads")
    # The held ones get 408 at the deadline, and are closed.
    for reader, _ in held:
        status, _, body = await response(reader, timeout=HEAD_TIMEOUT + 10)
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert await asyncio.wait_for(reader.read(), 5) == b""
    print(f"408 after {time.monotonic() - started:.1f} s (head_timeout {HEAD_TIMEOUT} s)")
    # A TCP connection that never starts TLS is closed at the same deadline.
    host, port = rtms(cluster, 1).rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.3", 0))
    assert await asyncio.wait_for(reader.read(), HEAD_TIMEOUT + 10) == b""
    writer.close()

    # Many addresses at once: past 100 connections not streaming yet, 503 node_busy.
    async def slow_head(source: str) -> tuple[int, str, int]:
        reader, writer = await connect(cluster, 1, source)
        writer.write(b"GET /stream/slow HTTP/1.1\r\n")
        try:
            status, headers, body = await response(reader, timeout=HEAD_TIMEOUT + 10)
        finally:
            writer.close()
        return status, body["error"]["code"], int(headers.get("retry-after", 0))

    crowd = await asyncio.gather(
        *(slow_head(f"127.0.3.{n % 8 + 1}") for n in range(8 * PER_PEER_PENDING))
    )
    codes: dict[Any, int] = {}
    for status, code, retry_after in crowd:
        codes[(status, code)] = codes.get((status, code), 0) + 1
        if status == 503:
            assert retry_after >= 1
    print("160 slow heads from 8 addresses:", codes)
    assert codes.get((503, "node_busy"), 0) >= 160 - 100
    assert set(codes) <= {(503, "node_busy"), (408, "request_timeout")}
    after = await health(session, cluster, 1)
    assert after["head_timeouts"] >= PER_PEER_PENDING and after["unattached"] <= 5
    await bystander.check("crowd of slow heads")


async def test_one_address_holds_a_bounded_number_of_streams(
    cluster: Cluster, session: aiohttp.ClientSession, bystander: Bystander
) -> None:
    video = unique("hoard")
    path = f"/stream/{video}?redirected=1"
    streams = []
    for _ in range(STREAMS_PER_ADDRESS + 10):  # they read the answer's head, then nothing
        reader, writer = await connect(cluster, 1, "127.0.0.4", rcvbuf=4096)
        writer.write(request(path))
        status, headers, body = await response(reader)
        streams.append((status, headers, body, writer))
    accepted = [s for s in streams if s[0] == 200]
    refused = [s for s in streams if s[0] != 200]
    assert len(accepted) == STREAMS_PER_ADDRESS and len(refused) == 10
    for status, headers, body, _ in refused:
        assert status == 429 and body["error"]["code"] == "too_many_streams"
        assert int(headers["retry-after"]) >= 1
    await bystander.check("hoarded streams")
    # Behind a trusted proxy (127.0.9.0/24), the client is the X-Forwarded-For hop.
    reader, writer = await connect(cluster, 1, "127.0.9.1")
    writer.write(request(path, {"X-Forwarded-For": "127.0.0.4"}))  # the hoarder, via the proxy
    assert (await response(reader))[0] == 429
    reader, writer = await connect(cluster, 1, "127.0.9.1")
    writer.write(request(path, {"X-Forwarded-For": "198.51.100.20"}))
    assert (await response(reader))[0] == 200
    writer.close()
    reader, writer = await connect(cluster, 1, "127.0.0.14")  # not a proxy: its header is ignored
    writer.write(request(path, {"X-Forwarded-For": "127.0.0.4"}))
    assert (await response(reader))[0] == 200
    writer.close()
    for *_, stream in accepted:
        stream.close()
    for _ in range(100):  # once they are gone the address may stream again
        reader, writer = await connect(cluster, 1, "127.0.0.4")
        writer.write(request(path))
        status = (await response(reader))[0]
        writer.close()
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200


async def test_new_videos_per_address_are_rate_limited(
    cluster: Cluster, session: aiohttp.ClientSession, bystander: Bystander
) -> None:
    before = await health(session, cluster, 1)
    answers = []
    async with client_session(cluster.ca_file, source="127.0.0.5") as http:
        for n in range(JOINS + 5):  # random new videos, as fast as it can
            url = f"{rtms(cluster, 1)}/stream/{unique(f'rnd{n}')}?redirected=1"
            async with http.get(url) as answer:
                body = None if answer.status == 200 else await answer.json()
                answers.append((answer.status, answer.headers.get("Retry-After"), body))
        await bystander.check("random videos")
        # A video the node hosts already is no new join: still served.
        url = f"{rtms(cluster, 1)}/stream/{bystander.video}?redirected=1"
        async with http.get(url) as answer:
            assert answer.status == 200
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == JOINS and statuses.count(429) == 5, statuses
    for status, retry_after, body in answers:
        if status == 429:
            assert body["error"]["code"] == "too_many_joins" and int(retry_after or 0) >= 1
    after = await health(session, cluster, 1)
    assert after["channels_created"] - before["channels_created"] <= JOINS + 1
    refused = after["requests_refused"]["too_many_joins"]
    assert refused - before["requests_refused"].get("too_many_joins", 0) == 5


@pytest.mark.parametrize("bystander", [2], indirect=True)
async def test_new_videos_per_node_are_rate_limited(
    cluster: Cluster, session: aiohttp.ClientSession, bystander: Bystander
) -> None:
    """Many addresses, each within its own limit, together past the node's."""
    attempts = NODE_CREATIONS + 100
    before = await health(session, cluster, 2)
    # 50 at a time: under the cap on connections not streaming yet, so what
    # refuses them is the node's rate of new videos.
    gate = asyncio.Semaphore(50)

    async def join(n: int, http: aiohttp.ClientSession) -> tuple[int, str | None, Any]:
        url = f"{rtms(cluster, 2)}/stream/{unique(f'flood{n}')}?redirected=1"
        async with gate, http.get(url) as answer:
            body = None if answer.status == 200 else await answer.json()
            return answer.status, answer.headers.get("Retry-After"), body

    sessions = [client_session(cluster.ca_file, source=f"127.0.4.{a + 1}") for a in range(30)]
    try:
        attack = asyncio.gather(*(join(n, sessions[n % 30]) for n in range(attempts)))
        await asyncio.sleep(0.2)
        await bystander.check("flood of new videos")
        answers = await attack
    finally:
        for http in sessions:
            await http.close()
    statuses = [status for status, _, _ in answers]
    print("new videos on one node:", {s: statuses.count(s) for s in set(statuses)})
    assert statuses.count(503) >= 30 and set(statuses) <= {200, 503}
    for status, retry_after, body in answers:
        if status == 503:
            assert body["error"]["code"] == "node_busy" and int(retry_after or 0) >= 1
    after = await health(session, cluster, 2)
    assert after["channels_refused"] - before["channels_refused"] >= 30
    await bystander.check("after the flood")


async def test_far_back_resumes_share_store_reads_and_get_exactly_what_they_missed(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, bystander: Bystander
) -> None:
    video = unique("resume")
    url = f"{rtms(cluster, 1)}/stream/{video}?redirected=1"
    live = await Viewer(url, session).connect()  # the node hosts the video, its ring fills
    token = bystander.token
    posted = await asyncio.gather(*(api.post(video, f"c{n}", token) for n in range(120)))
    epoch = posted[0]["epoch"]
    await live.wait_for(120, timeout=30)
    before = await health(session, cluster, 1)
    resumers = 20
    # From seq 10: 110 events, 94 of them older than the ring, in pages of 20 (1-20 .. 101-120).
    viewers = [
        Viewer(url, session, headers={"Last-Event-ID": f"{epoch}-10"}) for _ in range(resumers)
    ]
    storm = asyncio.gather(*(v.connect() for v in viewers))
    await bystander.check("resume storm")
    await storm
    for viewer in viewers:
        got = await viewer.wait_for(110)
        assert [int(e.id.split("-")[1]) for e in got if e.id] == list(range(11, 121))
    after = await health(session, cluster, 1)
    reads = after["replay_reads"] - before["replay_reads"]
    shared = after["replay_shared"] - before["replay_shared"]
    pages = 6
    print(f"{resumers} resumers x {pages} pages: {reads} store reads, {shared} shared")
    assert reads < resumers * pages // 2 and shared > 0
    # They are live: the next comment reaches each once.
    nxt = await api.post(video, "after the storm", token)
    for viewer in viewers:
        got = await viewer.wait_for(111)
        assert got[-1].json()["id"] == nxt["id"] and len(got) == 111
    # Further back than replay_limit (100) store events: a reset, no replay, then live.
    far = await Viewer(url, session, headers={"Last-Event-ID": f"{epoch}-1"}).connect()
    (event,) = await far.wait_for(1, kind="reset")
    assert event.json() == {"reason": "too_far_behind", "epoch": epoch}
    last = await api.post(video, "live again", token)
    got = await far.wait_for(1)
    assert [e.json()["id"] for e in got] == [last["id"]]
    final = await health(session, cluster, 1)
    assert final["replay_resets"] == after["replay_resets"] + 1
    assert final["replay_reads"] == after["replay_reads"]
    for viewer in (*viewers, far, live):
        await viewer.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_viewer_page_reloads_history_when_too_far_behind(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession, browser: Browser
) -> None:
    """The page's stream comes back 120 events later: `reset` (too_far_behind), history reloaded."""
    video = unique("far")
    token = await api.register(unique("poster"))
    await api.post(video, "first", token)
    resets = sum([(await health(session, cluster, i))["replay_resets"] for i in (1, 2)])
    errors: list[str] = []
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    texts = page.locator("#comments .comment .text")
    await page.goto(f"{cluster.services['comment-1'].url}/?v={video}")
    await expect(page.locator("#status")).to_have_text("live", timeout=15000)
    await expect(texts).to_have_text(["first"])
    # The network goes away; 120 comments are posted before it is back.
    await context.set_offline(True)
    await page.evaluate("stream && stream._es && stream._es.onerror()")
    await expect(page.locator("#status")).to_have_text("reconnecting")
    await asyncio.gather(*(api.post(video, f"c{n}", token) for n in range(120)))
    await context.set_offline(False)
    await expect(page.locator("#status")).to_have_text("live", timeout=30000)
    # It was told to reload: "first" is gone with the old list, the newest are there.
    # The newest by seq (the 120 posts went in at once, so not necessarily c119).
    (newest,) = (await api.page(video, limit=1))["items"]
    exact = re.compile(f"^{newest['text']}$")
    await expect(texts.filter(has_text=exact)).to_have_count(1, timeout=15000)
    await expect(texts.filter(has_text="first")).to_have_count(0, timeout=15000)
    await api.post(video, "live again", token)
    await expect(texts.filter(has_text="live again")).to_have_count(1, timeout=10000)
    after = sum([(await health(session, cluster, i))["replay_resets"] for i in (1, 2)])
    assert after == resets + 1
    assert errors == []
