"""Making a stream whole again: a channel's, from the store and Redis, and a resuming viewer's.

:class:`Recovery` is what a channel turns to when :meth:`Channel.offer` cannot
apply an event: a gap is filled from the store (and fenced when the store still
lacks a seq after a deadline), an event of another epoch or far ahead is held
until Redis confirms it, and a channel that stayed behind the video's head
(``reconcile``, ``catch_up``) or behind a viewer resuming into it (``reach``) is
filled too. What it applies goes back through the channel (``drain``,
``apply_stored``, ``offer``) and on to pacing's ``queue``; it never calls back
into the hub (its tasks only run in the hub's task set).

:class:`Resume` is what a viewer is owed when it comes back with a
``Last-Event-ID``: the frames since then, from the channel's ring or from store
pages (:class:`~livecomments.rtms.replay.ReplayPages`), written within the
per-viewer buffer bound before it joins the live set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.logs import about
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.stream import Position
from livecomments.rtms.channel import EARLY, Channel, Viewer, reset_frame
from livecomments.rtms.replay import Fetch, Frames, ReplayPages
from livecomments.rtms.stats import Stats
from livecomments.rtms.wire import Refusals

log = logging.getLogger(__name__)

FENCE_BATCH = 1000  # most seqs one gap fill fences at once
MAX_HELD = 1024  # events of an unconfirmed epoch held per video; the store fills the rest

Spawn = Callable[[Awaitable[Any]], asyncio.Task[Any]]
Queue = Callable[[Channel, list[bytes]], None]


class Sources(Protocol):
    """Where a video's stream is read again: Redis (its head) and the store.

    ``head`` is the video's head below the seqs still in flight (where a new
    channel starts), ``heads`` the last positions handed out; either is None for
    a video Redis has no counter for.
    """

    async def head(self, video_id: str) -> Position | None: ...
    async def heads(self, video_ids: list[str]) -> dict[str, Position | None]: ...
    async def fetch(self, video_id: str, lo: int, hi: int) -> list[dict[str, Any]]: ...
    async def fence(self, video_id: str, seqs: list[int]) -> None: ...


def _size(frames: Frames) -> int:
    return sum(len(frame) for _, frame in frames)


class Recovery:
    """Gaps, fences, unconfirmed epochs and missed deliveries of every hosted channel.

    ``hosted`` is the hub's registry, read only: a task whose channel is no
    longer in it (retired meanwhile) stops. ``queue`` is pacing's.
    """

    def __init__(
        self,
        sources: Sources,
        hosted: Mapping[str, Channel],
        queue: Queue,
        spawn: Spawn,
        stats: Stats,
        refusals: Refusals,
        *,
        reorder_window: float = 0.05,
        gap_deadline: float = 3.0,
    ) -> None:
        self._sources = sources
        self._hosted = hosted
        self._queue = queue
        self._spawn = spawn
        self._stats = stats
        self._refusals = refusals
        self._reorder_window = reorder_window
        self._gap_deadline = gap_deadline
        self._held: dict[Channel, list[pb.Event]] = {}  # other epoch or far ahead: to confirm

    def forget(self, channel: Channel) -> None:
        """A channel that retires: stop filling it."""
        if channel.filling is not None:
            channel.filling.cancel()

    # -- gaps ---------------------------------------------------------------

    def fill(self, channel: Channel, upto: int = 0) -> asyncio.Task[None]:
        """Fill the channel's gap from the store, up to ``upto`` at least (one task at a time).

        Returns that task: it ends once the channel has no gap left and ``upto``.
        """
        channel.fill_to = max(channel.fill_to, upto)
        if channel.filling is None or channel.filling.done():
            channel.filling = self._spawn(self._fill(channel))
        return channel.filling

    @staticmethod
    def _gap_end(channel: Channel) -> int:
        """The highest seq known to be missing (<= last_seq when nothing is)."""
        if channel.pending:
            return min(channel.pending) - 1
        return channel.fill_to

    async def _fill(self, channel: Channel) -> None:
        """Fetch missing seqs from the store; fence the ones it still lacks after a deadline.

        A seq the store lacks may belong to a writer that is only late (slow,
        paused), and that writer may still answer 201. So a node never just skips
        it: after ``gap_deadline`` without progress it *fences* the missing seqs
        (``Store.fence``: a void at each, under the unique index). A late writer
        then loses the race and takes another seq; a writer that won has its
        comment in the store, and the next fetch delivers it. Either way the
        node steps over voids only, and never over a stored seq behind a hole.
        """
        await asyncio.sleep(self._reorder_window)
        deadline = time.monotonic() + self._gap_deadline
        delay = self._reorder_window
        while self._hosted.get(channel.video_id) is channel:
            frames: list[bytes] = []
            channel.drain(frames)
            hi = self._gap_end(channel)
            fenced = False
            if hi > channel.last_seq:
                before = channel.last_seq
                docs: list[dict[str, Any]] | None = None
                try:
                    docs = await self._sources.fetch(channel.video_id, before + 1, hi)
                except LiveCommentsError as exc:
                    video_id = channel.video_id
                    log.warning("gap fill for %s failed: %s", video_id, exc, extra=about(video_id))
                filled, skipped = channel.apply_stored(docs or [], frames)
                self._stats.gap_filled += filled
                self._stats.gap_skipped += skipped
                if channel.last_seq > before:
                    deadline = time.monotonic() + self._gap_deadline
                elif time.monotonic() > deadline and docs is not None:
                    fenced = await self._fence(channel, before, hi, docs)
                channel.drain(frames)
            if frames:
                self._queue(channel, frames)
            if self._gap_end(channel) <= channel.last_seq:
                return
            if fenced:
                continue  # read the voids (or the late comments that beat them) at once
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _fence(
        self, channel: Channel, before: int, hi: int, docs: list[dict[str, Any]]
    ) -> bool:
        """Fence the seqs in ``before+1..hi`` the store lacks (at most FENCE_BATCH)."""
        try:  # only seqs a writer really took: never a future one a forged event named
            head = (await self._sources.heads([channel.video_id])).get(channel.video_id)
        except LiveCommentsError as exc:
            video_id = channel.video_id
            log.warning("reading the head of %s failed: %s", video_id, exc, extra=about(video_id))
            return False
        if head is None or head.epoch != channel.epoch:
            return False
        have = {doc["seq"] for doc in docs}
        top = min(hi, head.seq)
        lacking = [s for s in range(before + 1, top + 1) if s not in have][:FENCE_BATCH]
        if not lacking:
            return False
        log.warning(
            "%s: seq %s still missing from the store after %.1f s; fencing",
            channel.video_id, lacking if len(lacking) < 8 else f"{lacking[0]}..{lacking[-1]}",
            self._gap_deadline, extra=about(channel.video_id),
        )  # fmt: skip
        try:
            await self._sources.fence(channel.video_id, lacking)
        except LiveCommentsError as exc:
            log.warning(
                "fencing %s failed: %s", channel.video_id, exc, extra=about(channel.video_id)
            )
            return False
        self._stats.gap_fenced += len(lacking)
        return True

    # -- epochs -------------------------------------------------------------

    def hold(self, channel: Channel, event: pb.Event) -> bool:
        """Keep ``event`` (another epoch, or far ahead) until :meth:`_confirm_epoch`
        has asked Redis; False if too many are held already (refused)."""
        held = self._held.get(channel)
        if held is None:
            held = self._held[channel] = []
            self._spawn(self._confirm_epoch(channel))
        if len(held) >= MAX_HELD:
            self._refusals.add("epoch", event)
            return False
        held.append(event)
        return True

    async def _confirm_epoch(self, channel: Channel) -> None:
        """Adopt the held events' epoch if it is the video's current one and their
        seqs were handed out (at most the head); drop the rest.

        One Redis read per epoch change, big jump (or forgery), none while the
        epochs match and seqs follow on. On a new epoch the counter was
        re-created: seqs may repeat, so the channel starts over at the first held
        event and viewers are told to reload history.
        """
        head: Position | None = None
        try:
            for attempt in range(3):
                try:
                    # The raw head (not where a new channel starts): seqs in flight count.
                    head = (await self._sources.heads([channel.video_id])).get(channel.video_id)
                    break
                except LiveCommentsError as exc:
                    await asyncio.sleep(0.1 * (attempt + 1))
                    if attempt == 2:
                        # Unconfirmed: dropped (counted with the refusals). The next
                        # event of that epoch asks again, and its reset sends viewers
                        # to the store's history, which has these events.
                        video_id = channel.video_id
                        log.warning(
                            "epoch check for %s failed: %s", video_id, exc, extra=about(video_id)
                        )
        finally:  # whatever happens, the next other-epoch event starts a new check
            held = sorted(self._held.pop(channel, ()), key=lambda e: e.seq)
        if self._hosted.get(channel.video_id) is not channel:
            return
        frames: list[bytes] = []
        refused: dict[str, list[pb.Event]] = {"epoch": [], "seq": []}
        for event in held:
            if head is None or event.epoch != head.epoch:
                refused["epoch"].append(event)
                continue
            if event.seq > head.seq:
                refused["seq"].append(event)  # a seq Redis never handed out
                continue
            if channel.epoch is None:
                channel.epoch = event.epoch  # the video had no comments when we started hosting it
            elif event.epoch != channel.epoch:
                if event.epoch < channel.epoch:
                    continue
                channel.restart(event.epoch, event.seq, frames)
            # Counted as accepted when it was held.
            if channel.offer(event, frames, confirmed=True) == EARLY:
                self.fill(channel)
        for reason, events_ in refused.items():
            if events_:
                self._refusals.add(reason, events_[0], n=len(events_))
        if frames:
            self._queue(channel, frames)

    # -- missed deliveries --------------------------------------------------

    def reconcile(self, heads: dict[str, Position | None]) -> int:
        """Compare hosted videos with their heads; fill those that stayed behind.

        ``heads`` is the last assigned position per video, read in one batch
        (``RTMSServer`` calls this every ``reconcile_interval``). A head a little
        ahead is normal (seqs in flight); a video still behind the head seen at
        the previous look missed a delivery (the dispatcher skipped or lost this
        node, and no later comment came to show the gap): fill it from the store.
        Returns how many videos were sent to fill.
        """
        filled = 0
        for video_id, head in heads.items():
            channel = self._hosted.get(video_id)
            if channel is None or head is None:
                continue
            if channel.epoch is None:
                channel.epoch = head.epoch  # the video had no comments when we started hosting it
            if head.epoch != channel.epoch:
                channel.seen_head = 0  # a new epoch arrives with its events
                continue
            if channel.last_seq < channel.seen_head:
                self.fill(channel, channel.seen_head)
                filled += 1
            channel.seen_head = head.seq
        self._stats.reconciled += filled
        return filled

    async def catch_up(self, channel: Channel) -> None:
        """Fill what was sequenced before the dispatchers started routing to us."""
        if self._hosted.get(channel.video_id) is not channel:
            return
        try:
            head = await self._sources.head(channel.video_id)
        except LiveCommentsError:
            return
        if head is None:
            return  # Redis has no counter yet: nothing was sequenced since we started
        if channel.epoch is None:
            channel.epoch = head.epoch  # the video had no comments when we started hosting it
        if head.epoch == channel.epoch and head.seq > channel.last_seq:
            self.fill(channel, head.seq)

    async def reach(self, channel: Channel, resume: Position) -> bool:
        """Fill the channel up to ``resume``, which a viewer about to join it already has.

        Another node wrote the viewer every event up to there (it moved here, or
        its node went away), and this channel may be behind that: it started at
        the video's settled head (``Sources.head``: below the seqs still in
        flight, which includes one already delivered whose outbox entry is not
        removed yet), or it waits on a gap. What it applies up to ``resume`` goes
        to its other viewers; the joiner must never be written any of it, so it
        joins once the channel has ``resume``. Those seqs were stored before
        they were dispatched, so one read of the store usually does it.

        Only up to the seq Redis last handed out: a made-up id waits for nothing
        (and sets no fill going after seqs nobody took). True when the viewer may
        join now; False if the channel did not get there within ``gap_deadline``
        (or Redis could not be asked), for the viewer to come back later.
        """
        video_id = channel.video_id
        if channel.last_seq >= resume.seq:
            return True
        try:
            head = (await self._sources.heads([video_id])).get(video_id)
        except LiveCommentsError as exc:
            log.warning("reading the head of %s failed: %s", video_id, exc, extra=about(video_id))
            return False
        if head is None or resume.epoch not in (0, head.epoch):
            return True  # nothing more of the viewer's epoch: a new one resets every viewer
        if channel.epoch is None:
            channel.epoch = head.epoch  # the video had no comments when we started hosting it
        elif channel.epoch != head.epoch:
            return True  # the counter was re-created: the new epoch resets every viewer
        target = min(resume.seq, head.seq)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._gap_deadline
        while channel.last_seq < target and self._hosted.get(video_id) is channel:
            left = deadline - loop.time()
            if left <= 0:
                log.info(
                    "%s: not caught up with a resuming viewer at %s (at %d)",
                    video_id, resume, channel.last_seq, extra=about(video_id),
                )  # fmt: skip
                return False
            # One that failed or was cancelled is started again by the next turn.
            await asyncio.wait({self.fill(channel, target)}, timeout=left)
        return True


def _count_resume(stats: Stats, from_store: bool) -> None:
    if from_store:
        stats.resumed_store += 1
    else:
        stats.resumed_ring += 1


class Resume:
    """What a resuming viewer is owed, read from the ring or the store, written within bounds.

    They go in writes of at most ``write_budget`` (half the per-viewer buffer
    bound), each only when the buffer is below the other half (the transport's
    high-water mark, set by the listener).
    """

    def __init__(
        self,
        fetch: Fetch,
        spawn: Spawn,
        stats: Stats,
        *,
        write_budget: int,
        replay_limit: int = 1000,
        replay_page: int = 200,
        write_timeout: float = 10.0,
    ) -> None:
        self._stats = stats
        self.write_budget = write_budget
        self._replay_limit = replay_limit
        self._write_timeout = write_timeout
        self.pages = ReplayPages(fetch, spawn, page_size=replay_page)

    async def replay(
        self, viewer: Viewer, channel: Channel, resume: Position | None, head: bytes
    ) -> tuple[Frames, int | None] | None:
        """What ``viewer`` is owed before it goes live, and the seq it will then have.

        Returns the last frames (``head`` first if nothing was written yet) for
        the caller to write and join the live set with no await in between, or
        None if the viewer was dropped. Events older than the ring come from the
        store page by page (``ReplayPages``); whatever is longer than one write
        (``write_budget``) is written on the way, each write waiting until the
        viewer's buffer has room, so no viewer ever holds more than the bound.
        """
        out: Frames = [(0, head)] if head else []  # (seq, frame); 0: not sequenced
        if resume is None:
            return out, None
        epoch, seq = resume
        # Epoch 0 is "whatever epoch the video had": a viewer moved off a node
        # before the video's first event knew no epoch yet.
        if channel.epoch is not None and epoch not in (0, channel.epoch):
            self._stats.resumed_epoch += 1
            out.append((0, reset_frame("epoch_changed", channel.epoch)))
            return out, None
        start_epoch = channel.epoch
        stats, from_store = self._stats, False
        # The viewer was written everything up to `written`; `out` holds what follows, to `cursor`.
        written = cursor = seq
        budget = self.write_budget
        while True:
            if start_epoch is not None and channel.epoch != start_epoch:
                # The counter was re-created while we replayed: reload, then live.
                stats.resumed_epoch += 1
                out.append((0, reset_frame("epoch_changed", channel.epoch)))
                return out, None
            if cursor >= channel.last_seq:
                _count_resume(stats, from_store)
                return out, written
            ring_start = channel.ring[0][0] if channel.ring else channel.last_seq + 1
            if ring_start - 1 - cursor > self._replay_limit:
                # Further back than we replay from the store: the client reloads
                # history instead (Centrifugo's `recovered: false`).
                self._stats.replay_resets += 1
                out.append((0, reset_frame("too_far_behind", channel.epoch)))
                return out, None
            if cursor + 1 >= ring_start:
                tail = [entry for entry in channel.ring if entry[0] > cursor]
                if not viewer.paused and _size(out) + _size(tail) <= budget:
                    out.extend(tail)
                    _count_resume(stats, from_store)
                    return out, written
                # More than one write: send this much, let the viewer drain, look again.
                out.extend(tail)
                cursor = channel.last_seq
            else:
                # Older than the ring: the store, one aligned page at a time.
                _, page_end = self.pages.span(cursor + 1)
                need = min(page_end, ring_start - 1)
                page = await self.pages.frames(channel.video_id, cursor + 1, need, channel.last_seq)
                from_store = True
                out.extend(entry for entry in page if cursor < entry[0] <= need)
                cursor = need
                if _size(out) < budget:
                    continue
            if not await self._send(viewer, out):
                return None
            out, written = [], cursor

    async def _send(self, viewer: Viewer, frames: Frames) -> bool:
        """Write ``frames`` in writes of at most ``write_budget``, each once there is room."""
        chunk: list[bytes] = []
        size = 0
        for _, frame in frames:
            if chunk and size + len(frame) > self.write_budget:
                if not await self._write(viewer, chunk):
                    return False
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame)
        if chunk and not await self._write(viewer, chunk):
            return False
        return await self._room(viewer)

    async def _write(self, viewer: Viewer, chunk: list[bytes]) -> bool:
        if not await self._room(viewer):
            return False
        viewer.transport.write(b"".join(chunk))
        return True

    async def _room(self, viewer: Viewer) -> bool:
        """Until the viewer's buffer is below the high-water mark; False if it was dropped."""
        if viewer.closed:
            return False
        if viewer.paused and not await viewer.drained(self._write_timeout):
            # Not live yet (the hub's count does not hold it): abort it here.
            # It resumes with its last event id when it reconnects.
            self._stats.slow_dropped += 1
            log.info("dropping a viewer: it did not read what it was owed")
            viewer.close()
            viewer.transport.abort()
            return False
        return not viewer.closed
