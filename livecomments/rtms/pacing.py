"""When a channel's outbox goes out to its viewers: coalescing, and viral mode.

Delivery modes, per video:

- *normal*: at most one write per viewer per ``coalesce_window`` (5 ms). An
  event for a quiet video goes out on the next loop turn.
- *viral*: at most one write per viewer per ``viral_window`` (0.25 s), all
  events of the window in seq order in that one write. A video enters it when
  the deliveries/s it demands from this node, local viewers x events/s, reach
  ``viral_deliveries``, and leaves below half of that (hysteresis, so a video
  near the line does not flap). 0 turns viral mode off.

One threshold on the product rather than one on viewers and one on the rate:
what the node pays is one send per viewer per write (~6 us on the benchmark
box), so the product is the cost, whatever mix of viewers and comments makes
it. A few viewers of a busy video cost little whatever the rate, many viewers
of a quiet one too. The window also costs nothing on a quiet video: an event
after a pause still goes out at once; only events closer together than the
window wait, and they then share a write.

:class:`Pacing` only decides when: at that time the loop calls the ``flush`` it
was given (the hub's), which has the channel write its outbox.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from livecomments.kernel.logs import about
from livecomments.rtms.channel import Channel
from livecomments.rtms.stats import Stats

log = logging.getLogger(__name__)

# Time constant of a channel's decayed event rate: long enough that one gRPC
# batch does not read as a storm, short enough to follow a video within seconds.
RATE_TAU = 1.0
VIRAL_EXIT = 0.5  # leave viral mode below this fraction of the threshold


def rate_now(channel: Channel, now: float) -> float:
    """The channel's decayed event rate at ``now`` (no event since ``rate_at``)."""
    return channel.rate * math.exp((channel.rate_at - now) / RATE_TAU)


class Pacing:
    """The coalescing windows of every channel, and the channels in viral mode."""

    def __init__(
        self,
        flush: Callable[[Channel], None],
        stats: Stats,
        *,
        coalesce_window: float = 0.005,
        viral_deliveries: float = 100_000,
        viral_window: float = 0.25,
    ) -> None:
        self._flush = flush
        self._stats = stats
        self.window = coalesce_window
        self._viral_deliveries = viral_deliveries
        self._viral_window = viral_window
        self.viral: dict[str, Channel] = {}  # the channels in viral mode

    def queue(self, channel: Channel, frames: list[bytes]) -> None:
        """Coalesce: at most one write per viewer per window, whatever the event rate.

        An event for a quiet video goes out on the next loop turn; while events
        keep coming, they wait for the window to end and share one write (one
        send per viewer is what fan-out costs, so fewer sends is the lever).
        """
        channel.outbox.extend(frames)
        loop = asyncio.get_running_loop()
        now = loop.time()
        # O(1) per batch and video: the decayed rate, then the mode it calls for.
        channel.rate = rate_now(channel, now) + len(frames) / RATE_TAU
        channel.rate_at = now
        self.judge(channel, now)
        if channel.flush_handle is None:
            self._schedule(channel, loop, now)

    def _schedule(self, channel: Channel, loop: asyncio.AbstractEventLoop, now: float) -> None:
        wait = channel.window - (now - channel.last_flush)
        if wait <= 0:
            channel.flush_handle = loop.call_soon(self._flush, channel)
        else:
            channel.flush_handle = loop.call_later(wait, self._flush, channel)

    # -- viral mode ---------------------------------------------------------

    def judge(self, channel: Channel, now: float) -> None:
        """Enter viral mode at ``viral_deliveries``/s, leave below half of it."""
        threshold = self._viral_deliveries
        if threshold <= 0:
            return
        rate = rate_now(channel, now)
        demand = len(channel.viewers) * rate
        if channel.viral:
            if demand < threshold * VIRAL_EXIT:
                self._set_viral(channel, False, rate, now)
        elif demand >= threshold:
            self._set_viral(channel, True, rate, now)

    def _set_viral(self, channel: Channel, on: bool, rate: float, now: float) -> None:
        channel.viral = on
        viewers = len(channel.viewers)
        if on:
            channel.window = self._viral_window
            self.viral[channel.video_id] = channel
            self._stats.viral_entered += 1
            log.info(
                "%s: viral mode on (%d viewers x %.1f events/s = %.0f deliveries/s"
                " >= %.0f): one write per viewer every %.0f ms",
                channel.video_id, viewers, rate, viewers * rate,
                self._viral_deliveries, self._viral_window * 1000,
                extra=about(channel.video_id),
            )  # fmt: skip
            return
        channel.window = self.window
        self.viral.pop(channel.video_id, None)
        self._stats.viral_left += 1
        log.info(
            "%s: viral mode off (%d viewers x %.1f events/s = %.0f deliveries/s < %.0f)",
            channel.video_id, viewers, rate, viewers * rate,
            self._viral_deliveries * VIRAL_EXIT,
            extra=about(channel.video_id),
        )  # fmt: skip
        if channel.flush_handle is not None:
            # A flush set for the end of a viral window: bring it forward.
            channel.flush_handle.cancel()
            channel.flush_handle = None
            self._schedule(channel, asyncio.get_running_loop(), now)

    def viral_videos(self) -> dict[str, int]:
        """Videos in viral mode, with the deliveries/s each demands of this node.

        Judges them again first, so a video whose comments stopped leaves viral
        mode here (the load report calls this every few seconds) without
        waiting for its next event, and without a timer per video.
        """
        if not self.viral:
            return {}
        now = asyncio.get_running_loop().time()
        for channel in list(self.viral.values()):
            self.judge(channel, now)
        return {
            video: round(len(channel.viewers) * rate_now(channel, now))
            for video, channel in self.viral.items()
        }

    def forget(self, channel: Channel) -> None:
        """A channel that retires: no flush set for it, and out of viral mode."""
        if channel.flush_handle is not None:
            channel.flush_handle.cancel()
            channel.flush_handle = None
        if channel.viral:
            now = asyncio.get_running_loop().time()
            self._set_viral(channel, False, rate_now(channel, now), now)
