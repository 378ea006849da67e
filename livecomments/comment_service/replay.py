"""Chat replay: a video's comments by their offset from the moment it went live.

A video's start is ``live_at`` in its ``videos`` document: set by staff, or else
the time of its first comment, remembered the first time it is needed so that
offsets never move under a viewer.

A comment is replayed at the time viewers first saw it: when it was posted, or,
for a comment held for review, when it was approved (it took its seq then).
Deleted comments, change markers and voids are left out; edits show their
latest text, which is what the stored comment holds.

Times are not indexed (a post pays two index entries, ``_id`` and
``(video_id, seq)``, and no more). They rise with ``seq``, roughly: a comment's
time is taken a little before its seq, and replicas' clocks differ a little. So
with ``MARGIN_MS`` bounding that disorder (for seqs ``a < b``,
``time(a) <= time(b) + MARGIN_MS``), a binary search over seq, each probe a
small bounded range of the ``(video_id, seq)`` index, finds a seq before which
nothing can be at or after the range's start; the range is then read forward by
seq in bounded batches: a request reads a range of at most ``scan_cap`` seqs and
says where to go on.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livecomments.kernel import events
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.store import Store

MARGIN_MS = 30_000  # how far a time may run against the seq order (see above)
PROBE_WINDOW = 8  # seqs one search probe may read (voids are stepped over)
SCAN_BATCH = 200  # documents per read of a range
SCAN_CAP = 2000  # seqs one request reads at most
FIRST_WINDOW = 64  # seqs read at a time looking for a video's first comment
STAFF = "staff"
FIRST_COMMENT = "first_comment"

Doc = dict[str, Any]


EPOCH = events.EPOCH
MS = dt.timedelta(milliseconds=1)


def event_ms(doc: Doc) -> int | None:
    """When viewers saw a stored event: its approval, else its creation (ms since the epoch)."""
    for ms_key, at_key in (("approved_at_ms", "approved_at"), ("created_at_ms", "created_at")):
        ms = doc.get(ms_key)
        if isinstance(ms, int):
            return ms
        at = doc.get(at_key)
        if isinstance(at, dt.datetime):
            return events.epoch_ms(at)
    return None


@dataclass(frozen=True, slots=True)
class Start:
    """When a video went live, and who said so (``STAFF`` or ``FIRST_COMMENT``)."""

    at: dt.datetime
    source: str

    @property
    def ms(self) -> int:
        return events.epoch_ms(self.at)

    def json(self, video_id: str) -> dict[str, Any]:
        return {
            "video_id": video_id,
            "started_at": events.iso(self.at),
            "started_at_ms": self.ms,
            "source": self.source,
        }


def _start(doc: Doc) -> Start | None:
    at = doc.get("live_at")
    if not isinstance(at, dt.datetime):
        return None
    return Start(at, str(doc.get("live_at_source") or STAFF))


@dataclass(slots=True)
class Page:
    """A replay page: items in seq order, and the seq to continue after (None: done)."""

    items: list[dict[str, Any]]
    next_after: int | None
    closed: bool  # the range is wholly in the past: nothing can join it any more


class Replay:
    """Video starts, and ranges of a video's comments by offset from its start."""

    def __init__(
        self,
        store: Store,
        sequencer: Sequencer,
        *,
        margin_ms: int = MARGIN_MS,
        scan_cap: int = SCAN_CAP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sequencer = sequencer
        self._margin = margin_ms
        self._cap = scan_cap
        self._clock = clock
        # What the searches and reads cost, since start (/healthz).
        self.searches = 0
        self.probes = 0
        self.documents_read = 0

    # -- the start ------------------------------------------------------------------

    async def start(self, video_id: str) -> Start | None:
        """The video's start; derived from its first comment (and remembered) when
        staff set none; None when it has neither."""
        known = _start(await self._store.video_settings(video_id))
        if known is not None:
            return known
        first = await self._first_comment(video_id)
        at_ms = event_ms(first) if first is not None else None
        if at_ms is None:
            return None
        at = EPOCH + at_ms * MS
        doc = await self._store.set_live_at(
            video_id, at, {"live_at_source": FIRST_COMMENT}, only_if_absent=True
        )
        return _start(doc) or Start(at, FIRST_COMMENT)

    async def set_start(self, video_id: str, at: dt.datetime, by: int) -> Start:
        """Staff say when the video went live (replacing any start, derived or not)."""
        at = at.astimezone(dt.UTC).replace(microsecond=at.microsecond // 1000 * 1000)
        doc = await self._store.set_live_at(
            video_id, at, {"live_at_source": STAFF, "live_at_by": by}, only_if_absent=False
        )
        return _start(doc) or Start(at, STAFF)

    async def _first_comment(self, video_id: str) -> Doc | None:
        """The lowest-seq comment (not a change marker, not a void)."""
        upper = await self._upper(video_id)
        for lo in range(1, upper + 1, FIRST_WINDOW):
            hi = min(upper, lo + FIRST_WINDOW - 1)
            doc = await self._store.first_by_seq(video_id, lo, hi, comments_only=True)
            if doc is not None:
                return doc
        return None

    async def _upper(self, video_id: str) -> int:
        """The highest seq taken (Redis's counter), or stored when Redis has no counter."""
        head = await self._sequencer.head(video_id)
        if head is not None:
            return head.seq
        return await self._store.max_seq(video_id)

    # -- ranges ---------------------------------------------------------------------

    async def page(
        self,
        video_id: str,
        start: Start,
        *,
        from_ms: int,
        to_ms: int | None,
        after: int | None,
        limit: int,
    ) -> Page:
        """The comments seen from ``from_ms`` up to (not including) ``to_ms`` after the
        start (``to_ms`` None: to the end), in seq order, at most ``limit``; from the
        seq after ``after`` when given (the cursor: no search), else searched for.

        The page ends with a ``next_after`` (ask again with it, same range) when it is
        full or read ``scan_cap`` seqs; without one when the range is done, or
        when what follows is not stored yet (the present: ask again later, after
        the last item).
        """
        now_ms = int(self._clock() * 1000)
        lo_ms = start.ms + from_ms
        hi_ms = start.ms + to_ms if to_ms is not None else None
        closed = hi_ms is not None and hi_ms + self._margin < now_ms
        upper = await self._upper(video_id)
        if after is None:
            expected = await self._seek(video_id, lo_ms - self._margin, upper)
        else:
            expected = after + 1
        # Every seq below ``expected`` is accounted for; reads go on from ``read_from``.
        items: list[dict[str, Any]] = []
        read_from, spanned = expected, 0
        while read_from <= upper:
            batch_hi = min(upper, read_from + min(SCAN_BATCH, self._cap - spanned) - 1)
            docs = await self._store.comments_by_seq(video_id, read_from, batch_hi)
            spanned += batch_hi - read_from + 1
            self.documents_read += len(docs)
            for doc in docs:
                at_seq, t = int(doc["seq"]), event_ms(doc)
                if at_seq > expected and not self._settled(t, now_ms):
                    return Page(items, None, closed)  # a seq before it is still being written
                expected = at_seq + 1
                if doc.get("void") or t is None:
                    continue
                if hi_ms is not None and t >= hi_ms + self._margin:
                    return Page(items, None, closed)  # nothing later can be in range
                if t < lo_ms or (hi_ms is not None and t >= hi_ms) or not _replayed(doc):
                    continue
                item = events.comment_json(doc)
                item["offset_ms"] = t - start.ms
                items.append(item)
                if len(items) == limit:
                    return Page(items, at_seq, closed)
            read_from = batch_hi + 1
            if spanned >= self._cap and read_from <= upper:
                return Page(items, expected - 1, closed)
        # The end of what is taken; a gap before it (seqs still being written) or not.
        return Page(items, None, closed)

    def _settled(self, t: int | None, now_ms: int) -> bool:
        """Whether a gap before an event of time ``t`` is for good: a writer that took
        a seq before it took it before ``t + margin``, and is either done or was
        fenced (a void) within seconds. A void's time is its fencing, later still."""
        return t is not None and t < now_ms - 2 * self._margin

    async def _seek(self, video_id: str, target_ms: int, upper: int) -> int:
        """The lowest seq ``s`` in ``1..upper + 1`` found with a time at or after
        ``target_ms``: every seq below it has a time below ``target_ms + margin``.

        A probe reads the first event (not a void) of a window of ``PROBE_WINDOW``
        seqs; one with no time, or none, sends the search left (it starts earlier,
        never later). At most ``ceil(log2(upper + 1)) + 1`` probes.
        """
        self.searches += 1
        lo, hi = 1, upper + 1
        while lo < hi:
            mid = (lo + hi) // 2
            doc = await self._store.first_by_seq(video_id, mid, min(hi - 1, mid + PROBE_WINDOW - 1))
            self.probes += 1
            t = event_ms(doc) if doc is not None else None
            if doc is None or t is None or t >= target_ms:
                hi = mid
            else:
                lo = int(doc["seq"]) + 1
        return lo


def _replayed(doc: Doc) -> bool:
    """A comment that is still there (not a change marker, not a tombstone)."""
    status = doc.get("status", events.STATUS_VISIBLE)
    return not doc.get("marker") and status == events.STATUS_VISIBLE
