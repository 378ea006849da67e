"""RTMS pacing on its own: when a channel's outbox goes out, and when a video is viral."""

from __future__ import annotations

import asyncio
import math

from livecomments.rtms.channel import Channel, Viewer
from livecomments.rtms.pacing import RATE_TAU, Pacing, rate_now
from livecomments.rtms.stats import Stats

WINDOW = 0.005
VIRAL_WINDOW = 0.2
THRESHOLD = 1000.0
SLACK = 0.001  # a timer may fire this much early (clock resolution and float rounding)


class Transport:
    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def setup(
    viewers: int = 1, threshold: float = THRESHOLD
) -> tuple[Pacing, Channel, list[Channel], Stats]:
    flushed: list[Channel] = []
    stats = Stats()
    pacing = Pacing(
        flushed.append, stats, coalesce_window=WINDOW, viral_deliveries=threshold,
        viral_window=VIRAL_WINDOW,
    )  # fmt: skip
    channel = Channel("v", 0, 1, ring_size=16, window=WINDOW)
    channel.viewers.update(Viewer(Transport()) for _ in range(viewers))
    return pacing, channel, flushed, stats


def at_rate(channel: Channel, rate: float, now: float) -> None:
    channel.rate, channel.rate_at = rate, now


async def test_a_quiet_video_goes_out_on_the_next_loop_turn() -> None:
    pacing, channel, flushed, _ = setup()
    pacing.queue(channel, [b"a"])
    assert channel.outbox == [b"a"] and channel.flush_handle is not None
    assert not isinstance(channel.flush_handle, asyncio.TimerHandle)
    await asyncio.sleep(0)
    assert flushed == [channel]


async def test_events_within_the_window_wait_for_its_end_and_share_it() -> None:
    pacing, channel, flushed, _ = setup()
    channel.last_flush = asyncio.get_running_loop().time()  # just written
    pacing.queue(channel, [b"a"])
    handle = channel.flush_handle
    assert isinstance(handle, asyncio.TimerHandle)
    assert abs(handle.when() - (channel.last_flush + WINDOW)) <= SLACK
    pacing.queue(channel, [b"b"])
    assert channel.flush_handle is handle and channel.outbox == [b"a", b"b"]
    await asyncio.sleep(WINDOW * 4)
    assert flushed == [channel]


def test_the_rate_is_decayed_with_rate_tau() -> None:
    _, channel, _, _ = setup()
    at_rate(channel, 100.0, 10.0)
    assert rate_now(channel, 10.0) == 100.0
    assert math.isclose(rate_now(channel, 10.0 + RATE_TAU), 100.0 / math.e)


def test_viral_mode_enters_at_the_threshold_and_leaves_below_half_of_it() -> None:
    pacing, channel, _, stats = setup(viewers=10)
    now = 100.0

    def judged(rate: float) -> bool:
        at_rate(channel, rate, now)
        pacing.judge(channel, now)
        return channel.viral

    assert not judged(99.0)  # 10 x 99 < 1000
    assert judged(100.0) and channel.window == VIRAL_WINDOW and pacing.viral == {"v": channel}
    assert judged(50.0)  # 500: not below half the threshold
    assert not judged(49.0) and channel.window == WINDOW and pacing.viral == {}
    assert not judged(99.0)  # back above the exit line, below the threshold: stays normal
    assert (stats.viral_entered, stats.viral_left) == (1, 1)
    channel.viewers.clear()  # demand is viewers x rate: no viewers, no demand
    assert not judged(1e9)


def test_zero_turns_viral_mode_off() -> None:
    pacing, channel, _, stats = setup(viewers=100, threshold=0)
    at_rate(channel, 1e9, 1.0)
    pacing.judge(channel, 1.0)
    assert not channel.viral and stats.viral_entered == 0


async def test_leaving_viral_mode_brings_the_pending_flush_forward() -> None:
    pacing, channel, flushed, _ = setup()
    now = asyncio.get_running_loop().time()
    at_rate(channel, 2000.0, now)
    channel.last_flush = now
    pacing.queue(channel, [b"a"])
    assert channel.viral and isinstance(channel.flush_handle, asyncio.TimerHandle)
    assert channel.flush_handle.when() >= now + VIRAL_WINDOW - SLACK
    assert set(pacing.viral_videos()) == {"v"}
    channel.rate_at -= 2 * RATE_TAU  # the comments stopped two time constants ago
    assert pacing.viral_videos() == {} and not channel.viral
    assert channel.flush_handle.when() <= now + WINDOW + SLACK
    await asyncio.sleep(WINDOW * 4)
    assert flushed == [channel]


async def test_a_retired_channel_has_no_flush_set_and_is_not_viral() -> None:
    pacing, channel, flushed, stats = setup()
    at_rate(channel, 2000.0, asyncio.get_running_loop().time())
    channel.last_flush = channel.rate_at
    pacing.queue(channel, [b"a"])
    assert channel.viral and channel.flush_handle is not None
    pacing.forget(channel)
    assert channel.flush_handle is None and not channel.viral and pacing.viral == {}
    assert stats.viral_left == 1
    await asyncio.sleep(VIRAL_WINDOW * 1.5)
    assert flushed == []
