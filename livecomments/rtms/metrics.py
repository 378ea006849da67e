"""An RTMS node's metrics, read at scrape time from the counters its pieces keep.

The fan-out keeps plain ints (``Stats``: one add per write batch, never per
viewer) and one histogram observation per event; everything else here (viewers,
channels, the top videos) is read when Prometheus scrapes, not kept up to date.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from livecomments.kernel import metrics as m
from livecomments.rtms.hub import Hub
from livecomments.rtms.sse import SSEListener


def collector(
    hub: Hub, listener: SSEListener, draining: Callable[[], bool]
) -> Callable[[], Iterator[m.Metric]]:
    """What the node's registry calls at each scrape."""

    def collect() -> Iterator[m.Metric]:
        stats = hub.stats
        yield m.gauge(m.RTMS_CONNECTIONS, len(listener.connections))
        yield m.gauge(m.RTMS_UNATTACHED, listener.unattached)
        yield m.gauge(m.RTMS_VIEWERS, hub.viewer_count)
        yield m.gauge(m.RTMS_CHANNELS, len(hub.channels))
        top = heapq.nlargest(
            m.TOP_VIDEOS, ((len(c.viewers), v) for v, c in hub.channels.items() if c.viewers)
        )
        yield m.gauge(m.RTMS_VIDEO_VIEWERS, {(video,): n for n, video in top})
        yield m.gauge(m.RTMS_DRAINING, int(draining()))
        yield m.gauge(m.RTMS_VIRAL_VIDEOS, len(hub.pacing.viral))
        yield m.counter(m.RTMS_ACCEPTED, stats.accepted)
        yield m.counter(m.RTMS_DUPLICATES, stats.duplicates)
        yield m.counter(m.RTMS_UNHOSTED, stats.unhosted)
        yield m.counter(m.RTMS_REFUSED, {(r,): n for r, n in hub.refusals.counts.items()})
        yield m.counter(m.RTMS_DELIVERIES, stats.deliveries)
        yield m.counter(m.RTMS_WRITES, stats.writes)
        yield m.counter(m.RTMS_BYTES, stats.bytes_written)
        yield m.histogram(m.RTMS_LATENCY, hub.latency)
        yield m.counter(m.RTMS_SLOW_DROPS, stats.slow_dropped)
        yield m.counter(m.RTMS_MOVED, stats.moved)
        yield m.counter(
            m.RTMS_RESUMES,
            {
                ("ring",): stats.resumed_ring,
                ("store",): stats.resumed_store,
                ("too_far_behind",): stats.replay_resets,
                ("epoch_changed",): stats.resumed_epoch,
            },
        )
        yield m.counter(m.RTMS_GAP_FILLED, stats.gap_filled)
        yield m.counter(m.RTMS_GAP_SKIPPED, stats.gap_skipped)
        yield m.counter(m.RTMS_GAP_FENCED, stats.gap_fenced)
        yield m.counter(m.RTMS_RECONCILED, stats.reconciled)
        yield m.counter(m.RTMS_REPLAY_READS, hub.pages.reads)
        yield m.counter(m.RTMS_VIRAL_ENTERED, stats.viral_entered)
        yield m.counter(m.RTMS_REQUESTS_REFUSED, {(c,): n for c, n in listener.refused.items()})
        yield m.counter(m.RTMS_HEAD_TIMEOUTS, listener.head_timeouts)
        yield m.counter(
            m.RTMS_CHANNEL_CHANGES,
            {
                ("created",): stats.channels_created,
                ("failed",): stats.channels_failed,
                ("refused",): stats.channels_refused,
            },
        )

    return collect
