"""The videos this node hosts and their viewers, and the wiring of the pieces that serve them.

One event, in a straight line (each step returns before the next is taken):

1. :meth:`Hub.deliver` takes a batch from the gRPC side and finds each event's
   :class:`~livecomments.rtms.channel.Channel` (an unhosted video's events are
   counted, not kept).
2. ``Channel.offer`` orders it: the next seq is applied (into the ring and the
   batch's frames, with the held ones it lets through), a later one is held
   early, another epoch's or a far jump's is not applied; it says which.
3. ``Pacing.queue`` (:mod:`.pacing`) adds the batch's frames to the channel's
   outbox and decides when it goes out: the next loop turn, or the end of the
   coalescing (5 ms) or viral (0.25 s) window. A timer calls :meth:`Hub.flush` then.
4. :meth:`Hub.flush` has ``Channel.flush`` join the outbox once and write the
   same bytes to every viewer's transport; the viewers too slow for it come
   back to the hub, which drops them (they resume with their last event id).

A gap (step 2 held an event early): the hub hands the channel to
``Recovery.fill`` (:mod:`.recovery`), whose task reads the store (and fences the
seqs it still lacks after a deadline), applies what it finds through the channel
(``apply_stored``, ``drain``) and goes on at step 3. Another epoch, or a far
jump: ``Recovery.hold`` asks Redis, offers the confirmed events to the channel
again (step 2) and goes on at step 3. ``reconcile`` and ``catch_up`` find the
gaps that no later event showed, and fill them the same way.

A viewer: :meth:`Hub.attach` hosts the video if it must (ZooKeeper, and the head
it starts at). A viewer further on than the channel (it comes from another node,
and the channel started at the settled head or waits on a gap) waits for
``Recovery.reach`` to fill the channel up to its last event id, so nothing the
channel applies up to there is written to it again. ``Resume.replay`` reads what
the viewer missed from the ring or the store, and the hub writes it and adds the
viewer to the channel with no await in between. So a live viewer has the
channel's events up to its last seq and nothing beyond: the id ``moved`` names.
:meth:`Hub.detach` takes it out; a channel left without viewers retires after
``host_grace``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson

from livecomments.kernel import events
from livecomments.kernel.errors import LiveCommentsError, Unavailable
from livecomments.kernel.logs import about, sane_request_id
from livecomments.kernel.metrics import Histogram
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.rates import Rate
from livecomments.kernel.stream import Position, stream_url
from livecomments.rtms.channel import (
    APPLIED,
    DUPLICATE,
    EARLY,
    HEARTBEAT,
    UNCONFIRMED,
    Channel,
    Transport,
    Viewer,
    viewers_frame,
    write_all,
)
from livecomments.rtms.limits import Bucket, Refused
from livecomments.rtms.pacing import Pacing
from livecomments.rtms.recovery import Recovery, Resume, Sources
from livecomments.rtms.stats import Stats
from livecomments.rtms.wire import Refusals

log = logging.getLogger(__name__)


class Backend(Sources, Protocol):
    """What the hub needs from the outside world (store, Redis, ZooKeeper).

    A new channel starts at ``head``, or at ``stored_head`` (the store's highest
    seq) when Redis has no counter for the video.
    """

    async def stored_head(self, video_id: str) -> int: ...
    async def host(self, video_id: str) -> None: ...
    async def unhost(self, video_id: str) -> None: ...


RETRY_CATCHING_UP = 1.0  # s: a node behind a resuming viewer's id (Recovery.reach)
UNHOSTED = -1  # an event for a video this node does not host (next to Channel.offer's verdicts)
_OUTCOMES = {APPLIED: "applied", EARLY: "held_for_gap", UNCONFIRMED: "held_for_epoch"}


def _log_event(event: pb.Event, channel: Channel | None, verdict: int) -> None:
    """The node's line of a comment's trip: once per event (a duplicate only at DEBUG)."""
    request_id = sane_request_id(event.request_id) or ""  # from the wire: never reflected as is
    fields = {
        "video_id": event.video_id,
        "comment_id": str(event.comment_id),
        "request_id": request_id,
        "seq": event.seq,
    }
    if channel is None:
        log.info(
            "event not hosted here: video %s comment %s seq %d request %s",
            event.video_id, event.comment_id, event.seq, request_id, extra=fields,
        )  # fmt: skip
        return
    outcome = _OUTCOMES.get(verdict)
    if outcome is None:
        log.debug(
            "duplicate event: video %s comment %s seq %d request %s",
            event.video_id, event.comment_id, event.seq, request_id, extra=fields,
        )  # fmt: skip
        return
    viewers = len(channel.viewers)
    log.info(
        "event delivered: video %s comment %s seq %d to %d local viewers (%s) request %s",
        event.video_id, event.comment_id, event.seq, viewers, outcome, request_id,
        extra={**fields, "viewers": viewers, "outcome": outcome},
    )  # fmt: skip


def _ahead(channel: Channel, resume: Position) -> bool:
    """Whether a viewer resuming from ``resume`` has seqs of the channel's epoch it lacks."""
    if resume.seq <= channel.last_seq:
        return False
    return channel.epoch is None or resume.epoch in (0, channel.epoch)


def _abort_unflushed(transports: list[Transport]) -> None:
    for transport in transports:
        if transport.get_write_buffer_size():
            transport.abort()


class Hub:
    """Every video hosted on this node (its channel), and every viewer of them."""

    def __init__(
        self,
        backend: Backend,
        *,
        ring_size: int = 1024,
        host_grace: float = 30.0,
        max_viewer_buffer: int = 256 * 1024,
        reorder_window: float = 0.05,
        gap_deadline: float = 3.0,
        replay_limit: int = 1000,
        coalesce_window: float = 0.005,
        viral_deliveries: float = 100_000,
        viral_window: float = 0.25,
        replay_page: int = 200,
        write_timeout: float = 10.0,
        max_channels: int = 10000,
        channel_limit: str = "200/2",
    ) -> None:
        self._backend = backend
        self._ring_size = ring_size
        self._host_grace = host_grace
        self._max_buffer = max_viewer_buffer
        self._write_timeout = write_timeout
        # Frames written to a viewer outside the broadcast (replay, `moved`) go in
        # writes of at most half the buffer bound (see Resume).
        self.write_budget = max(1, max_viewer_buffer // 2)
        self._max_channels = max_channels
        self._creations = Bucket(Rate.parse(channel_limit))
        self.channels: dict[str, Channel] = {}
        self._joining: dict[str, asyncio.Future[Channel]] = {}
        # Videos whose znode is being removed (retired, or a failed creation rolled
        # back): hosting one again waits for that, or the removal could win.
        self._retiring: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.viewer_count = 0
        self.stats = Stats()
        self.refusals = Refusals()  # events refused from the wire (wire.py, epochs)
        # Accept (comment service) to write (here), once per event: see flush.
        self.latency = Histogram()
        self.pacing = Pacing(
            self.flush,
            self.stats,
            coalesce_window=coalesce_window,
            viral_deliveries=viral_deliveries,
            viral_window=viral_window,
        )
        self.recovery = Recovery(
            backend,
            self.channels,
            self.pacing.queue,
            self._spawn,
            self.stats,
            self.refusals,
            reorder_window=reorder_window,
            gap_deadline=gap_deadline,
        )
        self.resume = Resume(
            backend.fetch,
            self._spawn,
            self.stats,
            write_budget=self.write_budget,
            replay_limit=replay_limit,
            replay_page=replay_page,
            write_timeout=write_timeout,
        )
        self.pages = self.resume.pages

    # -- viewers ------------------------------------------------------------

    def hosts(self, video_id: str) -> bool:
        """Whether this node hosts the video, or is about to (a join costs no creation)."""
        return video_id in self.channels or video_id in self._joining

    async def channel(self, video_id: str) -> Channel:
        """The video's channel, hosting it (ZooKeeper + head seq) on first use.

        The creation belongs to the node, not to the request that started it: it
        runs as a hub task and every joiner awaits it through ``shield``, so a
        viewer that disconnects meanwhile only stops waiting. A failed creation
        answers every joiner with its error and is rolled back.
        """
        # While it is being created the channel already takes events (it is in
        # `channels` before its znode exists), but a joiner waits for the znode.
        joining = self._joining.get(video_id)
        channel = self.channels.get(video_id)
        if channel is not None and joining is None:
            return channel
        if joining is None:
            self._admit_creation()
            joining = self._joining[video_id] = asyncio.get_running_loop().create_future()
            self._spawn(self._create(video_id, joining))
        return await asyncio.shield(joining)

    def _admit_creation(self) -> None:
        """Refuse a new channel when the node hosts too many, or makes them too fast."""
        creating = sum(1 for video in self._joining if video not in self.channels)
        if len(self.channels) + creating >= self._max_channels:
            self.stats.channels_refused += 1
            raise Refused(503, "node_busy", "this node hosts as many videos as it can", 10)
        wait = self._creations.take()
        if wait:
            self.stats.channels_refused += 1
            raise Refused(503, "node_busy", "this node is taking on too many videos now", wait)

    async def _create(self, video_id: str, joining: asyncio.Future[Channel]) -> None:
        channel: Channel | None = None
        hosting = False
        try:
            retiring = self._retiring.get(video_id)
            if retiring is not None:
                await asyncio.shield(retiring)
            # Read the head before announcing ourselves: anything sequenced after
            # it reaches us by dispatch, or by filling the gap from the store.
            head = await self._backend.head(video_id)
            if head is None:
                # No counter in Redis (new video, or Redis lost it): what is stored is
                # history, not news. The epoch is learned from the next event.
                last_seq, epoch = await self._backend.stored_head(video_id), None
            else:
                last_seq, epoch = head.seq, head.epoch
            channel = Channel(video_id, last_seq, epoch, self._ring_size, self.pacing.window)
            self.channels[video_id] = channel
            hosting = True
            await self._backend.host(video_id)
        except BaseException as exc:
            if channel is not None and self.channels.get(video_id) is channel:
                del self.channels[video_id]
            self.stats.channels_failed += 1
            if isinstance(exc, asyncio.CancelledError):  # the node is stopping
                joining.cancel()
                del self._joining[video_id]
                raise
            log.warning("cannot host %s: %s", video_id, exc, extra=about(video_id))
            error = exc if isinstance(exc, LiveCommentsError) else Unavailable(str(exc))
            joining.set_exception(error)
            joining.exception()  # retrieved: the joiners get it through shield
            del self._joining[video_id]
            if hosting:  # the znode may exist: remove it before anyone hosts the video again
                await self._unhost(video_id)
            return
        del self._joining[video_id]
        self.stats.channels_created += 1
        # The dispatchers learn about us a few ms after the znode exists; a
        # comment dispatched in between is caught by looking at the head again.
        loop = asyncio.get_running_loop()
        for delay in (0.3, 1.5):
            loop.call_later(delay, lambda: self._spawn(self.recovery.catch_up(channel)))
        joining.set_result(channel)
        # Every joiner may have gone away: then the channel retires after the grace.
        self._maybe_idle(channel)

    async def _unhost(self, video_id: str) -> None:
        """Remove the video's znode; hosting it again meanwhile waits for this."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = self._retiring.get(video_id)
        self._retiring[video_id] = done
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._backend.unhost(video_id)
        except LiveCommentsError as exc:
            log.warning("unhosting %s failed: %s", video_id, exc, extra=about(video_id))
        finally:
            done.set_result(None)
            if self._retiring.get(video_id) is done:
                del self._retiring[video_id]

    async def attach(
        self, viewer: Viewer, video_id: str, resume: Position | None, head: bytes = b""
    ) -> None:
        """Host the video, write ``head`` and what ``viewer`` missed since ``resume``, go live.

        The response head goes out only once this node hosts the video, so a
        client that sees the stream open is already counted in ZooKeeper.
        """
        channel = await self.channel(video_id)
        if channel.idle_handle is not None:
            channel.idle_handle.cancel()
            channel.idle_handle = None
        try:
            if resume is not None and _ahead(channel, resume):
                # It has events this channel has not applied yet (it comes from a
                # node that was further on): anything the channel applies up to
                # there would reach it twice, so it joins once the channel has it.
                if not await self.recovery.reach(channel, resume):  # counted by its code
                    raise Refused(
                        503, "catching_up", "this node has not caught up with your last event yet",
                        RETRY_CATCHING_UP,
                    )  # fmt: skip
            replay = await self.resume.replay(viewer, channel, resume, head)
        except BaseException:
            self._maybe_idle(channel)
            raise
        if replay is None or viewer.closed or self.channels.get(video_id) is not channel:
            if not viewer.closed:  # the channel retired during a long replay: come back
                self._drop(viewer, "retired while replaying")
            self._maybe_idle(channel)
            return
        frames, have = replay
        if channel.joins_mid_window(have):
            # The outbox reaches this viewer with the others at the window's end,
            # so the replay stops where the last write stopped.
            sent = channel.sent_seq
            viewer.transport.write(b"".join(f for s, f in frames if s <= sent))
        else:
            # What is accepted but not yet written is in the ring, so in the replay:
            # write it to the others now, so this viewer does not get it twice.
            self.flush(channel)
            viewer.transport.write(b"".join(f for _, f in frames))
        if channel.viewers_told >= 0:  # the total the others have; the next one counts this one
            viewer.transport.write(viewers_frame(channel.viewers_told))
        viewer.channel = channel
        channel.viewers.add(viewer)
        self.viewer_count += 1

    def detach(self, viewer: Viewer) -> None:
        viewer.close()
        channel, viewer.channel = viewer.channel, None
        if channel is not None and viewer in channel.viewers:
            channel.viewers.discard(viewer)
            self.viewer_count -= 1
            self._maybe_idle(channel)

    def _drop(self, viewer: Viewer, why: str) -> None:
        """Abort a viewer that cannot take what it is owed; it resumes with its last event id."""
        self.stats.slow_dropped += 1
        video_id = viewer.channel.video_id if viewer.channel is not None else None
        log.info("dropping a viewer of %s: %s", video_id, why, extra=about(video_id))
        self.detach(viewer)
        viewer.transport.abort()

    def _maybe_idle(self, channel: Channel) -> None:
        if channel.viewers or channel.idle_handle is not None:
            return
        loop = asyncio.get_running_loop()
        channel.idle_handle = loop.call_later(
            self._host_grace, lambda: self._spawn(self._retire(channel))
        )

    async def _retire(self, channel: Channel) -> None:
        channel.idle_handle = None
        if channel.viewers or self.channels.get(channel.video_id) is not channel:
            return
        del self.channels[channel.video_id]
        self.recovery.forget(channel)
        self.pacing.forget(channel)
        await self._unhost(channel.video_id)

    # -- events -------------------------------------------------------------

    def deliver(self, batch: Iterable[pb.Event]) -> tuple[int, int, int]:
        """Take a batch of events; returns (accepted, duplicates, unhosted)."""
        accepted = duplicates = unhosted = 0
        recovery = self.recovery
        out: dict[Channel, list[bytes]] = {}
        logged = log.isEnabledFor(logging.INFO)  # a line per event, none per viewer
        for event in batch:
            channel = self.channels.get(event.video_id)
            if channel is None:
                unhosted += 1
                if logged and event.seq:
                    _log_event(event, None, UNHOSTED)
                continue
            frames = out.setdefault(channel, [])
            if event.seq == 0:  # unsequenced (aggregates): no ordering, no resume
                frames.append(event.frame)
                accepted += 1
                continue
            verdict = channel.offer(event, frames)
            if logged:
                _log_event(event, channel, verdict)
            if verdict == APPLIED:
                accepted += 1
            elif verdict == EARLY:
                accepted += 1
                recovery.fill(channel)
            elif verdict == DUPLICATE or not recovery.hold(channel, event):
                duplicates += 1
            else:  # held until Redis confirms it
                accepted += 1
        queue = self.pacing.queue
        for channel, frames in out.items():
            if frames:
                queue(channel, frames)
        self.stats.accepted += accepted
        self.stats.duplicates += duplicates
        self.stats.unhosted += unhosted
        return accepted, duplicates, unhosted

    def flush(self, channel: Channel) -> None:
        """Write the channel's outbox to its viewers now; drop those too slow for it.

        Pacing calls this when the window ends; a joiner, a move and stopping do
        not wait for that. Counts the write once per flush (viewers written x
        events, bytes) and each event's latency once, never per viewer.
        """
        outbox = channel.outbox
        if not outbox:
            channel.flush(self._max_buffer)  # spends a flush set for later
            return
        frames, size, viewers = len(outbox), sum(map(len, outbox)), len(channel.viewers)
        slow = channel.flush(self._max_buffer)
        written = viewers - len(slow)
        stats = self.stats
        stats.writes += written
        stats.deliveries += written * frames
        stats.bytes_written += written * size
        stamps = channel.stamps
        if stamps:
            if written:
                self._observe_latency(stamps)
            stamps.clear()
        for viewer in slow:
            # It resumes with its Last-Event-ID when it reconnects.
            self.stats.slow_dropped += 1
            log.info("dropping slow viewer of %s", channel.video_id, extra=about(channel.video_id))
            self.detach(viewer)
            viewer.transport.abort()

    def _observe_latency(self, stamps: list[int]) -> None:
        """From each event's accept time (the comment service's clock) to now."""
        now_ms = time.time() * 1000
        observe = self.latency.observe
        for stamp in stamps:
            observe(max(0.0, now_ms - stamp) / 1000)

    def viral_videos(self) -> dict[str, int]:
        """Videos in viral mode, with the deliveries/s each demands (see Pacing.viral_videos)."""
        return self.pacing.viral_videos()

    def reconcile(self, heads: dict[str, Position | None]) -> int:
        """Fill the videos that stayed behind their heads (see Recovery.reconcile)."""
        return self.recovery.reconcile(heads)

    # -- housekeeping -------------------------------------------------------

    def heartbeat(self) -> None:
        """One pass over every viewer; called by one timer, not one per connection.

        A viewer whose buffer is already at the bound is dropped instead: a
        client that stopped reading must not grow its buffer by heartbeats.
        """
        limit = self._max_buffer - len(HEARTBEAT)
        slow: list[Viewer] = []
        for channel in self.channels.values():
            write_all(channel.viewers, HEARTBEAT, limit, slow)
        for viewer in slow:
            self._drop(viewer, "its buffer is full at a heartbeat")

    def announce_viewers(self, total: Callable[[str, int], int]) -> int:
        """Tell each video's viewers its viewer total, where it changed since the last time.

        ``total(video_id, here)`` is the video's viewers on every node, given the
        ``here`` on this one. Called by one timer (``viewer_count_interval``), so a
        video's viewers get at most one ``viewers`` event per interval, and none
        while the total stays the same. Returns how many videos were told.
        """
        slow: list[Viewer] = []
        told = 0
        for video_id, channel in self.channels.items():
            if not channel.viewers:
                continue
            count = total(video_id, len(channel.viewers))
            if count == channel.viewers_told:
                continue
            channel.viewers_told = count
            frame = viewers_frame(count)
            write_all(channel.viewers, frame, self._max_buffer - len(frame), slow)
            told += 1
        for viewer in slow:
            self._drop(viewer, "its buffer is full at a viewer count")
        return told

    def move(self, video_id: str, base_url: str | None, reason: str) -> int:
        """Send the video's viewers elsewhere with a ``moved`` event, and close them.

        The URL carries the last event id they got (after the flush, the
        channel's last seq: ``attach`` lets no viewer in that is further on), so
        following it they miss nothing (the new node replays from there) and see
        nothing twice. The
        frame is the same for every viewer of the video: encoded once.
        """
        channel = self.channels.get(video_id)
        if channel is None or not channel.viewers:
            return 0
        self.flush(channel)  # they have everything up to last_seq before they go
        last = Position(channel.epoch or 0, channel.last_seq)
        url = stream_url(base_url, video_id, last) if base_url else None
        body = {"reason": reason, "url": url, "last_event_id": str(last)}
        frame = events.sse_frame("moved", orjson.dumps(body))
        limit = self._max_buffer - len(frame)
        viewers = list(channel.viewers)
        closing: list[Transport] = []
        for viewer in viewers:
            transport = viewer.transport
            if transport.get_write_buffer_size() > limit:
                # Not reading: it follows its last event id when it reconnects.
                self._drop(viewer, "its buffer is full at a move")
                continue
            transport.write(frame)
            self.detach(viewer)
            transport.close()
            closing.append(transport)
        if closing:
            # close() waits for the buffer to drain: one that never does is aborted.
            asyncio.get_running_loop().call_later(self._write_timeout, _abort_unflushed, closing)
        self.stats.moved += len(viewers)
        return len(viewers)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    async def stop(self) -> None:
        for channel in self.channels.values():
            self.flush(channel)
            if channel.idle_handle is not None:
                channel.idle_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
