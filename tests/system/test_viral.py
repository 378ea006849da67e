"""Viral mode: a video whose viewers x events/s pass a threshold is written every 0.25 s.

Unit tests drive the hub with fake transports (every write recorded with the
loop time it happened at); the last test runs the real cluster with a threshold
low enough that a handful of viewers and a few comments per second trip it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from typing import Any

import aiohttp
import pytest

from livecomments.cli.cluster import Cluster
from livecomments.kernel import events
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.stream import Position
from livecomments.rtms.channel import Channel, Viewer
from livecomments.rtms.hub import Hub
from livecomments.rtms.pacing import RATE_TAU
from tests.support import Api, cli, unique
from tests.support import Viewer as SSEViewer

EPOCH = 7
VIDEO = "v1"
COALESCE = 0.005  # the default window, kept in normal mode
VIRAL_WINDOW = 0.2
SLACK = 0.001  # a timer may fire this much early (clock resolution and float rounding)

# The integration test: 3 viewers per node x ~20 comments/s = ~60 deliveries/s >= 20.
CLUSTER_ENV = {
    "LIVECOMMENTS_VIRAL_DELIVERIES": "20",
    "LIVECOMMENTS_VIRAL_WINDOW": "0.25",
    "LIVECOMMENTS_LOAD_REPORT_INTERVAL": "0.5",  # so `livecomments nodes` sees it in time
}


class FakeTransport:
    """Records each write with the loop time it was made at."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append((asyncio.get_running_loop().time(), data))

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def seqs(self) -> list[int]:
        return [seq for _, data in self.writes for seq in seqs_in(data)]

    def event_writes(self) -> list[tuple[float, list[int]]]:
        """The writes that carried events (not the response head), with their seqs."""
        return [(at, seqs_in(data)) for at, data in self.writes if seqs_in(data)]


def seqs_in(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"^id: \d+-(\d+)$", data, re.M)]


class FakeBackend:
    async def head(self, video_id: str) -> Position | None:
        return Position(EPOCH, 0)

    async def fetch(self, video_id: str, lo: int, hi: int) -> list[dict[str, Any]]:
        return []

    async def host(self, video_id: str) -> None:
        pass

    async def unhost(self, video_id: str) -> None:
        pass


def event(seq: int) -> pb.Event:
    frame = events.sse_frame("comment", b'{"seq":%d}' % seq, events.event_id(EPOCH, seq))
    return pb.Event(video_id=VIDEO, seq=seq, epoch=EPOCH, frame=frame)


def make_hub(threshold: float) -> Hub:
    return Hub(
        FakeBackend(),
        coalesce_window=COALESCE,
        viral_deliveries=threshold,
        viral_window=VIRAL_WINDOW,
    )


async def watch(hub: Hub, count: int) -> list[FakeTransport]:
    transports = [FakeTransport() for _ in range(count)]
    for transport in transports:
        await hub.attach(Viewer(transport), VIDEO, None, b"HEAD\n")
    return transports


def gaps(transport: FakeTransport) -> list[float]:
    times = [at for at, _ in transport.event_writes()]
    return [b - a for a, b in itertools.pairwise(times)]


async def stream(hub: Hub, first: int, count: int, every: float) -> None:
    for seq in range(first, first + count):
        hub.deliver([event(seq)])
        await asyncio.sleep(every)


# -- unit tests of the hub --------------------------------------------------------------


async def test_below_threshold_one_write_per_coalesce_window_as_before() -> None:
    hub = make_hub(threshold=1e9)
    (transport,) = await watch(hub, 1)
    hub.deliver([event(1)])
    await asyncio.sleep(0)
    assert transport.event_writes()[-1][1] == [1]  # a quiet video's event: the next loop turn
    hub.deliver([event(2)])
    hub.deliver([event(3)])
    channel = hub.channels[VIDEO]
    assert isinstance(channel.flush_handle, asyncio.TimerHandle)
    assert channel.flush_handle.when() <= channel.last_flush + COALESCE + SLACK
    await asyncio.sleep(0)
    assert len(transport.event_writes()) == 1  # 2 and 3 wait for the window, together
    await asyncio.sleep(COALESCE * 4)
    assert transport.event_writes()[-1][1] == [2, 3]

    await stream(hub, 4, 100, 0.001)
    await asyncio.sleep(COALESCE * 4)
    assert transport.seqs() == list(range(1, 104))
    assert min(gaps(transport)) >= COALESCE - SLACK
    assert not channel.viral and hub.viral_videos() == {}
    assert max(gaps(transport)) < VIRAL_WINDOW / 2  # not batching like viral mode


async def test_above_threshold_one_write_per_viral_window_with_all_events_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = make_hub(threshold=1000)
    transports = await watch(hub, 10)
    caplog.set_level(logging.INFO, logger="livecomments.rtms.pacing")
    # 200 events at once read as 200 events/s (RATE_TAU 1 s): 10 x 200 >= 1000.
    hub.deliver([event(seq) for seq in range(1, 201)])
    channel = hub.channels[VIDEO]
    assert channel.viral and set(hub.viral_videos()) == {VIDEO}
    assert "v1: viral mode on" in caplog.text
    await asyncio.sleep(0)
    started = time.monotonic()
    await stream(hub, 201, 100, 0.01)  # ~100 events/s on top: it stays viral
    await asyncio.sleep(VIRAL_WINDOW * 1.5)
    elapsed = time.monotonic() - started
    assert channel.viral
    for transport in transports:
        assert transport.seqs() == list(range(1, 301))  # each event once, in order
        writes = transport.event_writes()
        assert writes[0][1] == list(range(1, 201))  # after a pause: at once, in one write
        assert min(gaps(transport)) >= VIRAL_WINDOW - SLACK
        assert len(writes) <= elapsed / VIRAL_WINDOW + 2
    # Every viewer got the same bytes in the same writes.
    sent = [[data for _, data in t.writes[1:]] for t in transports]
    assert all(data == sent[0] for data in sent)


async def test_hysteresis_enter_at_threshold_leave_at_half(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = make_hub(threshold=1000)
    caplog.set_level(logging.INFO, logger="livecomments.rtms.pacing")
    viewers = [Viewer(FakeTransport()) for _ in range(10)]
    for viewer in viewers:
        await hub.attach(viewer, VIDEO, None)
    hub.deliver([event(seq) for seq in range(1, 201)])  # ~200 events/s x 10 = 2000
    channel = hub.channels[VIDEO]
    assert channel.viral
    for viewer in viewers[4:]:
        hub.detach(viewer)
    hub.deliver([event(201)])
    assert channel.viral  # 4 x ~200 = ~800: below the threshold, above half of it
    assert 500 <= hub.viral_videos()[VIDEO] < 1000
    hub.detach(viewers[3])
    hub.detach(viewers[2])
    hub.deliver([event(202)])
    assert not channel.viral and hub.viral_videos() == {}  # 2 x ~200 < 500
    assert channel.window == COALESCE
    # Back up to 4 viewers: ~800 again, above the exit line, but not viral again.
    for _ in range(2):
        await hub.attach(Viewer(FakeTransport()), VIDEO, Position(EPOCH, 202))
    hub.deliver([event(203)])
    assert not channel.viral
    for _ in range(6):
        await hub.attach(Viewer(FakeTransport()), VIDEO, Position(EPOCH, 203))
    hub.deliver([event(204)])
    assert channel.viral  # 10 x ~200 >= 1000
    assert (hub.stats.viral_entered, hub.stats.viral_left) == (2, 1)
    assert caplog.text.count("viral mode on") == 2 and caplog.text.count("viral mode off") == 1


async def test_leaving_viral_mode_when_comments_stop(caplog: pytest.LogCaptureFixture) -> None:
    hub = make_hub(threshold=1000)
    (transport,) = await watch(hub, 1)
    caplog.set_level(logging.INFO, logger="livecomments.rtms.pacing")
    hub.deliver([event(seq) for seq in range(1, 2001)])  # 1 viewer x ~2000 events/s
    channel = hub.channels[VIDEO]
    assert channel.viral
    await asyncio.sleep(0)
    hub.deliver([event(2001)])
    # A flush set for the end of the viral window...
    assert isinstance(channel.flush_handle, asyncio.TimerHandle)
    assert channel.flush_handle.when() >= channel.last_flush + VIRAL_WINDOW - SLACK
    # ...and then nothing for a while: the rate decays below half the threshold
    # (2000 x e^(-t/RATE_TAU) < 500 after ~1.4 s). No event comes to notice it;
    # the load report's call does, and brings the pending flush forward.
    channel.rate_at -= 2 * RATE_TAU  # as if two time constants had passed
    assert hub.viral_videos() == {}
    called = asyncio.get_running_loop().time()  # on a busy machine, well after last_flush
    assert not channel.viral and channel.window == COALESCE
    assert "v1: viral mode off" in caplog.text
    assert isinstance(channel.flush_handle, asyncio.TimerHandle)
    # Brought forward to the normal window: due at most COALESCE after the call (a busy
    # machine may run the call well after last_flush; the viral window would be 0.2 s).
    assert channel.flush_handle.when() <= called + COALESCE + SLACK
    await asyncio.sleep(COALESCE * 4)
    assert transport.seqs() == list(range(1, 2002))
    # Normal mode again: 5 ms windows.
    await stream(hub, 2002, 50, 0.001)
    await asyncio.sleep(COALESCE * 4)
    assert transport.seqs() == list(range(1, 2052))
    assert not channel.viral
    assert min(gaps(transport)[-10:]) >= COALESCE - SLACK
    assert max(gaps(transport)[-10:]) < VIRAL_WINDOW / 2


async def test_viewers_joining_mid_window_miss_nothing_and_get_nothing_twice() -> None:
    hub = make_hub(threshold=500)
    (early,) = await watch(hub, 1)
    hub.deliver([event(seq) for seq in range(1, 1001)])  # 1 x ~1000/s: viral, flushed now
    await asyncio.sleep(0)
    channel: Channel = hub.channels[VIDEO]
    assert channel.viral and channel.sent_seq == 1000
    hub.deliver([event(seq) for seq in range(1001, 1011)])  # waits for the window
    assert channel.outbox and channel.flush_handle is not None
    writes_before = len(early.writes)

    resumed, fresh, ahead = FakeTransport(), FakeTransport(), FakeTransport()
    await hub.attach(Viewer(resumed), VIDEO, Position(EPOCH, 990), b"HEAD\n")
    await hub.attach(Viewer(fresh), VIDEO, None, b"HEAD\n")
    # Joining did not cut the window short for the others.
    assert len(early.writes) == writes_before and channel.outbox
    assert resumed.seqs() == list(range(991, 1001)) and fresh.seqs() == []
    hub.deliver([event(1011)])
    # This one already has events of the outbox (it comes from a node that wrote
    # them sooner): the outbox goes out now, so nobody gets anything twice.
    await hub.attach(Viewer(ahead), VIDEO, Position(EPOCH, 1005), b"HEAD\n")
    assert not channel.outbox and len(early.writes) == writes_before + 1
    hub.deliver([event(1012)])
    await asyncio.sleep(VIRAL_WINDOW * 1.5)
    assert early.seqs() == list(range(1, 1013))
    assert resumed.seqs() == list(range(991, 1013))
    assert fresh.seqs() == list(range(1001, 1013))  # what was not yet written when it came
    assert ahead.seqs() == list(range(1006, 1013))


async def test_viral_mode_off_with_zero() -> None:
    hub = make_hub(threshold=0)
    await watch(hub, 100)
    hub.deliver([event(seq) for seq in range(1, 10001)])
    assert not hub.channels[VIDEO].viral and hub.viral_videos() == {}


async def test_joining_mid_window_in_normal_mode_flushes_first_as_before() -> None:
    hub = make_hub(threshold=1e9)
    (early,) = await watch(hub, 1)
    hub.deliver([event(1)])
    await asyncio.sleep(0)
    hub.deliver([event(2)])
    late = FakeTransport()
    await hub.attach(Viewer(late), VIDEO, Position(EPOCH, 0), b"HEAD\n")
    assert early.seqs() == [1, 2] and late.seqs() == [1, 2]
    await asyncio.sleep(COALESCE * 4)
    assert early.seqs() == [1, 2] and late.seqs() == [1, 2]


# -- the real cluster -------------------------------------------------------------------


async def health(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(base + "/healthz") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_viewers_of_a_viral_video_get_every_event_once_in_order(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    video = unique("viral")
    tokens = [await api.register(unique("fan")) for _ in range(4)]
    nodes = [cluster.services[name].url for name in ("rtms-1", "rtms-2")]
    viewers = [
        await SSEViewer(f"{node}/stream/{video}", session).connect()
        for node in nodes
        for _ in range(3)
    ]
    posted: list[int] = []
    viral_seen: set[str] = set()
    late: list[SSEViewer] = []
    resumed_from = 0
    cli_viral: set[str] = set()

    async def poster(token: str, count: int) -> None:
        for n in range(count):
            body = await api.post(video, f"wow {n}", token)
            posted.append(int(body["seq"]))
            await asyncio.sleep(0.15)

    try:
        posting = asyncio.gather(*(poster(token, 25) for token in tokens))  # ~25/s for ~4 s
        for _ in range(40):
            await asyncio.sleep(0.1)
            for i, node in enumerate(nodes):
                if video in (await health(session, node))["viral"]:
                    viral_seen.add(f"rtms-{i + 1}")
            if len(posted) >= 30 and not late:
                # Joins in the middle of viral windows: one resuming from an event
                # it saw, one fresh.
                last = viewers[0].last_id
                assert last is not None
                for node in nodes:
                    url = f"{node}/stream/{video}?last_event_id={last}"
                    late.append(await SSEViewer(url, session).connect())
                resumed_from = int(last.rsplit("-", 1)[1])
            if viral_seen == {"rtms-1", "rtms-2"} and cli_viral != viral_seen:
                _, doc, _ = await cli(cluster, "nodes")  # what operators see
                cli_viral |= {r["node"] for r in doc["rtms"] if video in r["viral_videos"]}
            if posting.done():
                break
        await posting
        assert viral_seen == {"rtms-1", "rtms-2"}
        assert cli_viral == {"rtms-1", "rtms-2"}
        assert len(posted) == 100
        for viewer in viewers:
            got = await viewer.wait_for(100, timeout=15)
            assert [e.seq for e in got] == list(range(1, 101))
        for viewer in late:
            got = await viewer.wait_for(100 - resumed_from, timeout=15)
            assert [e.seq for e in got] == list(range(resumed_from + 1, 101))
        # Writes are batched: events arrive in a few bursts per 0.25 s, not one by one.
        arrivals = sorted({round(e.received_at, 2) for e in viewers[0].of("comment")})
        assert len(arrivals) < 60
        # Comments stopped: the nodes leave viral mode (judged on /healthz).
        for _ in range(100):
            states = [await health(session, node) for node in nodes]
            if all(video not in s["viral"] for s in states):
                break
            await asyncio.sleep(0.1)
        assert all(s["viral_left"] >= 1 for s in states), states
        await asyncio.sleep(0.5)
        for viewer in viewers:
            assert len(viewer.of("comment")) == 100  # nothing twice after the wait either
    finally:
        for viewer in viewers + late:
            await viewer.close()
    for name in ("rtms-1", "rtms-2"):
        log = cluster.services[name].proc.log_path.read_text(errors="replace")
        assert f"{video}: viral mode on" in log and f"{video}: viral mode off" in log
