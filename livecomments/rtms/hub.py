"""Viewers of each video and the fan-out to them.

A :class:`Channel` is one video on this node: its viewers, the last seq it has
delivered, a ring of recent frames for resume, and frames waiting for a missing
seq. Frames arrive already encoded; a burst is joined once and the same bytes
are written to every viewer's transport, with no task and no await per viewer.

Viral mode: a video whose local fan-out demand (viewers x events/s) passes a
threshold is flushed at most once per ``viral_window`` (0.25 s) instead of per
``coalesce_window`` (5 ms); see :class:`Hub`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

import orjson

from livecomments.kernel import events
from livecomments.kernel.errors import LiveCommentsError, Unavailable
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.rates import Rate
from livecomments.kernel.stream import Position, stream_url
from livecomments.rtms.limits import Bucket, Refused
from livecomments.rtms.replay import Frames, ReplayPages
from livecomments.rtms.wire import Refusals

log = logging.getLogger(__name__)

HEARTBEAT = b": hb\n\n"
# Time constant of a channel's decayed event rate: long enough that one gRPC
# batch does not read as a storm, short enough to follow a video within seconds.
RATE_TAU = 1.0
VIRAL_EXIT = 0.5  # leave viral mode below this fraction of the threshold
FENCE_BATCH = 1000  # most seqs one gap fill fences at once
MAX_HELD = 1024  # events of an unconfirmed epoch held per video; the store fills the rest
MAX_AHEAD = 1024  # a seq further ahead of the last delivered one is confirmed with Redis


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


class Backend(Protocol):
    """What the hub needs from the outside world (store, Redis, ZooKeeper)."""

    async def head(self, video_id: str) -> tuple[int, int | None]: ...
    async def fetch(self, video_id: str, lo: int, hi: int) -> list[dict[str, Any]]: ...
    async def host(self, video_id: str) -> None: ...
    async def unhost(self, video_id: str) -> None: ...
    async def fence(self, video_id: str, seqs: list[int]) -> None: ...
    async def heads(self, video_ids: list[str]) -> dict[str, Position | None]: ...


class Viewer:
    """One stream. ``paused`` follows the transport's flow control (see ``SSEProtocol``)."""

    __slots__ = ("_drained", "channel", "closed", "paused", "transport")

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.channel: Channel | None = None
        self.closed = False
        self.paused = False  # its buffer is above the high-water mark
        self._drained: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drained(self, timeout: float) -> bool:
        """Until the buffer is below the low-water mark: False if it is not within ``timeout``."""
        while self.paused and not self.closed:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except TimeoutError:
                return False
        return not self.closed


def _abort_unflushed(transports: list[Transport]) -> None:
    for transport in transports:
        if transport.get_write_buffer_size():
            transport.abort()


def _size(frames: Frames) -> int:
    return sum(len(frame) for _, frame in frames)


def reset_frame(reason: str, epoch: int | None) -> bytes:
    return events.sse_frame("reset", orjson.dumps({"reason": reason, "epoch": epoch}))


class Channel:
    __slots__ = (
        "epoch",
        "fill_to",
        "filling",
        "flush_handle",
        "idle_handle",
        "last_flush",
        "last_seq",
        "outbox",
        "pending",
        "rate",
        "rate_at",
        "ring",
        "seen_head",
        "sent_epoch",
        "sent_seq",
        "video_id",
        "viewers",
        "viral",
        "window",
    )

    def __init__(
        self,
        video_id: str,
        last_seq: int,
        epoch: int | None,
        ring_size: int,
        window: float = 0.005,
    ) -> None:
        self.video_id = video_id
        self.viewers: set[Viewer] = set()
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=ring_size)
        self.last_seq = last_seq
        self.epoch = epoch
        # seq -> (frame, seq of the comment it changes or 0), waiting for a gap to close
        self.pending: dict[int, tuple[bytes, int]] = {}
        self.filling: asyncio.Task[None] | None = None
        self.fill_to = 0  # fill from the store up to here even without a later event
        self.idle_handle: asyncio.TimerHandle | None = None
        self.outbox: list[bytes] = []  # accepted, not yet written to the viewers
        self.flush_handle: asyncio.Handle | None = None
        self.last_flush = 0.0
        self.window = window  # the coalescing window now in force (normal or viral)
        # Everything up to (sent_epoch, sent_seq) was written to the viewers; the
        # outbox holds what came after.
        self.sent_seq = last_seq
        self.sent_epoch = epoch
        self.rate = 0.0  # events/s, exponentially decayed (RATE_TAU), as of rate_at
        self.rate_at = 0.0
        self.viral = False
        self.seen_head = 0  # the video's head at the last reconcile (see Hub.reconcile)

    def rate_now(self, now: float) -> float:
        """The decayed event rate at ``now`` (no event since ``rate_at``)."""
        return self.rate * math.exp((self.rate_at - now) / RATE_TAU)


class Stats:
    __slots__ = (
        "accepted",
        "channels_created",
        "channels_failed",
        "channels_refused",
        "duplicates",
        "gap_fenced",
        "gap_filled",
        "gap_skipped",
        "moved",
        "reconciled",
        "replay_resets",
        "slow_dropped",
        "unhosted",
        "viral_entered",
        "viral_left",
    )

    def __init__(self) -> None:
        self.accepted = self.duplicates = self.unhosted = 0
        self.gap_filled = self.gap_skipped = self.slow_dropped = self.moved = 0
        self.gap_fenced = self.reconciled = 0
        self.viral_entered = self.viral_left = 0
        self.channels_created = self.channels_failed = self.channels_refused = 0
        self.replay_resets = 0  # resumes answered with `reset` (too_far_behind)


class Hub:
    """Every video hosted on this node, and the fan-out of their events.

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
    """

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
        self._window = coalesce_window
        self._viral_deliveries = viral_deliveries
        self._viral_window = viral_window
        self._ring_size = ring_size
        self._host_grace = host_grace
        self._max_buffer = max_viewer_buffer
        self._reorder_window = reorder_window
        self._gap_deadline = gap_deadline
        self._replay_limit = replay_limit
        self._write_timeout = write_timeout
        # Frames written to a viewer outside the broadcast (replay, `moved`) go in
        # writes of at most half the buffer bound, each only when the buffer is
        # below the other half (the transport's high-water mark, set by the listener).
        self.write_budget = max(1, max_viewer_buffer // 2)
        self._max_channels = max_channels
        self._creations = Bucket(Rate.parse(channel_limit))
        self.channels: dict[str, Channel] = {}
        self.viral: dict[str, Channel] = {}  # the channels in viral mode
        self._joining: dict[str, asyncio.Future[Channel]] = {}
        # Videos whose znode is being removed (retired, or a failed creation rolled
        # back): hosting one again waits for that, or the removal could win.
        self._retiring: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.viewer_count = 0
        self.stats = Stats()
        self.refusals = Refusals()  # events refused from the wire (wire.py, epochs)
        self._held: dict[Channel, list[pb.Event]] = {}  # other epoch or far ahead: to confirm
        self.pages = ReplayPages(backend.fetch, self._spawn, page_size=replay_page)

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
            last_seq, epoch = await self._backend.head(video_id)
            channel = Channel(video_id, last_seq, epoch, self._ring_size, self._window)
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
            log.warning("cannot host %s: %s", video_id, exc)
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
            loop.call_later(delay, lambda: self._spawn(self._catch_up(channel)))
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
            log.warning("unhosting %s failed: %s", video_id, exc)
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
            replay = await self._replay(viewer, channel, resume, head)
        except BaseException:
            self._maybe_idle(channel)
            raise
        if replay is None or viewer.closed or self.channels.get(video_id) is not channel:
            if not viewer.closed:  # the channel retired during a long replay: come back
                self._drop(viewer, "retired while replaying")
            self._maybe_idle(channel)
            return
        frames, have = replay
        if self._joins_mid_window(channel, have):
            # The outbox reaches this viewer with the others at the window's end,
            # so the replay stops where the last write stopped.
            sent = channel.sent_seq
            viewer.transport.write(b"".join(f for s, f in frames if s <= sent))
        else:
            # What is accepted but not yet written is in the ring, so in the replay:
            # write it to the others now, so this viewer does not get it twice.
            self._flush(channel)
            viewer.transport.write(b"".join(f for _, f in frames))
        viewer.channel = channel
        channel.viewers.add(viewer)
        self.viewer_count += 1

    @staticmethod
    def _joins_mid_window(channel: Channel, have: int | None) -> bool:
        """Whether a viewer may join a viral video without cutting its window short.

        Viral videos are the ones people flock to: flushing for every joiner
        would turn a 0.25 s window back into one write per join. Instead the
        joiner gets what was written so far and then the outbox with everyone
        else. Not when it already has part of the outbox (it has everything up
        to ``have``, beyond the last write) or the outbox starts a new epoch: then flush.
        """
        return (
            channel.viral
            and bool(channel.outbox)
            and channel.sent_epoch == channel.epoch
            and (have is None or have <= channel.sent_seq)
        )

    def detach(self, viewer: Viewer) -> None:
        viewer.closed = True
        viewer.resume_writing()  # a replay waiting for it to drain stops waiting
        channel, viewer.channel = viewer.channel, None
        if channel is not None and viewer in channel.viewers:
            channel.viewers.discard(viewer)
            self.viewer_count -= 1
            self._maybe_idle(channel)

    def _drop(self, viewer: Viewer, why: str) -> None:
        """Abort a viewer that cannot take what it is owed; it resumes with its last event id."""
        self.stats.slow_dropped += 1
        log.info("dropping a viewer: %s", why)
        self.detach(viewer)
        viewer.transport.abort()

    async def _replay(
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
            out.append((0, reset_frame("epoch_changed", channel.epoch)))
            return out, None
        start_epoch = channel.epoch
        # The viewer was written everything up to `written`; `out` holds what follows, to `cursor`.
        written = cursor = seq
        budget = self.write_budget
        while True:
            if start_epoch is not None and channel.epoch != start_epoch:
                # The counter was re-created while we replayed: reload, then live.
                out.append((0, reset_frame("epoch_changed", channel.epoch)))
                return out, None
            if cursor >= channel.last_seq:
                return out, written
            ring_start = channel.ring[0][0] if channel.ring else channel.last_seq + 1
            if ring_start - 1 - cursor > self._replay_limit:
                # Further back than we replay from the store: the client reloads
                # history instead (Centrifugo's `recovered: false`).
                self.stats.replay_resets += 1
                out.append((0, reset_frame("too_far_behind", channel.epoch)))
                return out, None
            if cursor + 1 >= ring_start:
                tail = [entry for entry in channel.ring if entry[0] > cursor]
                if not viewer.paused and _size(out) + _size(tail) <= budget:
                    out.extend(tail)
                    return out, written
                # More than one write: send this much, let the viewer drain, look again.
                out.extend(tail)
                cursor = channel.last_seq
            else:
                # Older than the ring: the store, one aligned page at a time.
                _, page_end = self.pages.span(cursor + 1)
                need = min(page_end, ring_start - 1)
                page = await self.pages.frames(channel.video_id, cursor + 1, need, channel.last_seq)
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
            self._drop(viewer, "it did not read what it was owed")
            return False
        return not viewer.closed

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
        if channel.filling is not None:
            channel.filling.cancel()
        if channel.flush_handle is not None:
            channel.flush_handle.cancel()
            channel.flush_handle = None
        if channel.viral:
            now = asyncio.get_running_loop().time()
            self._set_viral(channel, False, channel.rate_now(now), now)
        await self._unhost(channel.video_id)

    # -- events -------------------------------------------------------------

    def deliver(self, batch: Iterable[pb.Event]) -> tuple[int, int, int]:
        """Take a batch of events; returns (accepted, duplicates, unhosted)."""
        accepted = duplicates = unhosted = 0
        out: dict[Channel, list[bytes]] = {}
        for event in batch:
            channel = self.channels.get(event.video_id)
            if channel is None:
                unhosted += 1
                continue
            frames = out.setdefault(channel, [])
            if event.seq == 0:  # unsequenced (aggregates): no ordering, no resume
                frames.append(event.frame)
                accepted += 1
            elif self._offer(channel, event, frames):
                accepted += 1
            else:
                duplicates += 1
        for channel, frames in out.items():
            if frames:
                self._queue(channel, frames)
        self.stats.accepted += accepted
        self.stats.duplicates += duplicates
        self.stats.unhosted += unhosted
        return accepted, duplicates, unhosted

    def _offer(
        self, channel: Channel, event: pb.Event, frames: list[bytes], confirmed: bool = False
    ) -> bool:
        if event.epoch != channel.epoch:
            if channel.epoch is not None and event.epoch < channel.epoch:
                return False  # a straggler from before the counter was re-created
            # A new epoch resets the video for every viewer, so the wire's word is
            # not enough: hold the event until Redis says the epoch is current.
            return self._hold(channel, event)
        seq = event.seq
        if seq <= channel.last_seq or seq in channel.pending:
            return False
        if seq == channel.last_seq + 1:
            self._accept(channel, seq, event.frame, frames, event.target_seq)
            self._drain(channel, frames)
        elif seq - channel.last_seq > MAX_AHEAD and not confirmed:
            # Far ahead: once the gap was skipped, every real event would be a
            # "duplicate". Redis must have handed that seq out already.
            return self._hold(channel, event)
        else:
            channel.pending[seq] = (event.frame, event.target_seq)
            self._request_fill(channel)
        return True

    def _hold(self, channel: Channel, event: pb.Event) -> bool:
        """Keep ``event`` (another epoch, or far ahead) until :meth:`_confirm_epoch`
        has asked Redis."""
        held = self._held.get(channel)
        if held is None:
            held = self._held[channel] = []
            self._spawn(self._confirm_epoch(channel))
        if len(held) >= MAX_HELD:
            self.refusals.add("epoch", event)
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
        current: int | None = None
        head = 0
        try:
            for attempt in range(3):
                try:
                    # The raw head (not where a new channel starts): seqs in flight count.
                    raw = (await self._backend.heads([channel.video_id])).get(channel.video_id)
                    head, current = (raw.seq, raw.epoch) if raw is not None else (0, None)
                    break
                except LiveCommentsError as exc:
                    await asyncio.sleep(0.1 * (attempt + 1))
                    if attempt == 2:
                        # Unconfirmed: dropped (counted with the refusals). The next
                        # event of that epoch asks again, and its reset sends viewers
                        # to the store's history, which has these events.
                        log.warning("epoch check for %s failed: %s", channel.video_id, exc)
        finally:  # whatever happens, the next other-epoch event starts a new check
            held = sorted(self._held.pop(channel, ()), key=lambda e: e.seq)
        if self.channels.get(channel.video_id) is not channel:
            return
        frames: list[bytes] = []
        refused: dict[str, list[pb.Event]] = {"epoch": [], "seq": []}
        for event in held:
            if current is None or event.epoch != current:
                refused["epoch"].append(event)
                continue
            if event.seq > head:
                refused["seq"].append(event)  # a seq Redis never handed out
                continue
            if channel.epoch is not None and event.epoch != channel.epoch:
                if event.epoch < channel.epoch:
                    continue
                frames.append(reset_frame("epoch_changed", event.epoch))
                channel.last_seq = event.seq - 1
                channel.ring.clear()
                channel.pending.clear()
            channel.epoch = event.epoch
            # Counted as accepted when it was held.
            self._offer(channel, event, frames, confirmed=True)
        for reason, events_ in refused.items():
            if events_:
                self.refusals.add(reason, events_[0], n=len(events_))
        if frames:
            self._queue(channel, frames)

    def _accept(
        self, channel: Channel, seq: int, frame: bytes, frames: list[bytes], target: int = 0
    ) -> None:
        channel.last_seq = seq
        channel.ring.append((seq, frame))
        frames.append(frame)
        if target:
            self._patch_ring(channel, target, frame)

    @staticmethod
    def _patch_ring(channel: Channel, target: int, frame: bytes) -> None:
        """A changed comment replays in its new state: resume never shows deleted text."""
        ring = channel.ring
        if not ring or target < ring[0][0] or channel.epoch is None:
            return
        for index, (seq, _) in enumerate(ring):
            if seq == target:
                patched = events.retarget(frame, channel.epoch, target)
                if patched is not None:
                    ring[index] = (target, patched)
                return
            if seq > target:
                return

    def _drain(self, channel: Channel, frames: list[bytes]) -> None:
        pending = channel.pending
        while pending:
            entry = pending.pop(channel.last_seq + 1, None)
            if entry is None:
                break
            self._accept(channel, channel.last_seq + 1, entry[0], frames, entry[1])

    def _queue(self, channel: Channel, frames: list[bytes]) -> None:
        """Coalesce: at most one write per viewer per window, whatever the event rate.

        An event for a quiet video goes out on the next loop turn; while events
        keep coming, they wait for the window to end and share one write (one
        send per viewer is what fan-out costs, so fewer sends is the lever).
        """
        channel.outbox.extend(frames)
        loop = asyncio.get_running_loop()
        now = loop.time()
        # O(1) per batch and video: the decayed rate, then the mode it calls for.
        channel.rate = channel.rate_now(now) + len(frames) / RATE_TAU
        channel.rate_at = now
        self._judge(channel, now)
        if channel.flush_handle is None:
            self._schedule(channel, loop, now)

    def _schedule(self, channel: Channel, loop: asyncio.AbstractEventLoop, now: float) -> None:
        wait = channel.window - (now - channel.last_flush)
        if wait <= 0:
            channel.flush_handle = loop.call_soon(self._flush, channel)
        else:
            channel.flush_handle = loop.call_later(wait, self._flush, channel)

    def _flush(self, channel: Channel) -> None:
        if channel.flush_handle is not None:
            channel.flush_handle.cancel()
            channel.flush_handle = None
        if not channel.outbox:
            return
        data = b"".join(channel.outbox)
        channel.outbox.clear()
        channel.sent_seq, channel.sent_epoch = channel.last_seq, channel.epoch
        channel.last_flush = asyncio.get_running_loop().time()
        self._broadcast(channel, data)

    # -- viral mode ---------------------------------------------------------

    def _judge(self, channel: Channel, now: float) -> None:
        """Enter viral mode at ``viral_deliveries``/s, leave below half of it."""
        threshold = self._viral_deliveries
        if threshold <= 0:
            return
        rate = channel.rate_now(now)
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
            self.stats.viral_entered += 1
            log.info(
                "%s: viral mode on (%d viewers x %.1f events/s = %.0f deliveries/s"
                " >= %.0f): one write per viewer every %.0f ms",
                channel.video_id, viewers, rate, viewers * rate,
                self._viral_deliveries, self._viral_window * 1000,
            )  # fmt: skip
            return
        channel.window = self._window
        self.viral.pop(channel.video_id, None)
        self.stats.viral_left += 1
        log.info(
            "%s: viral mode off (%d viewers x %.1f events/s = %.0f deliveries/s < %.0f)",
            channel.video_id, viewers, rate, viewers * rate,
            self._viral_deliveries * VIRAL_EXIT,
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
            self._judge(channel, now)
        return {
            video: round(len(channel.viewers) * channel.rate_now(now))
            for video, channel in self.viral.items()
        }

    @staticmethod
    def _write_all(viewers: Iterable[Viewer], data: bytes, limit: int, slow: list[Viewer]) -> None:
        """Write ``data`` to each viewer within ``limit``; the others go to ``slow``."""
        for viewer in viewers:
            transport = viewer.transport
            if transport.get_write_buffer_size() > limit:
                slow.append(viewer)
            else:
                transport.write(data)

    def _broadcast(self, channel: Channel, data: bytes) -> None:
        slow: list[Viewer] = []
        self._write_all(channel.viewers, data, self._max_buffer, slow)
        for viewer in slow:
            # It resumes with its Last-Event-ID when it reconnects.
            self.stats.slow_dropped += 1
            log.info("dropping slow viewer of %s", channel.video_id)
            self.detach(viewer)
            viewer.transport.abort()

    # -- gaps ---------------------------------------------------------------

    def _request_fill(self, channel: Channel, upto: int = 0) -> None:
        channel.fill_to = max(channel.fill_to, upto)
        if channel.filling is None or channel.filling.done():
            channel.filling = self._spawn(self._fill(channel))

    @staticmethod
    def _gap_end(channel: Channel) -> int:
        """The highest seq known to be missing (<= last_seq when nothing is)."""
        if channel.pending:
            return min(channel.pending) - 1
        return channel.fill_to

    def _apply(self, channel: Channel, docs: list[dict[str, Any]], frames: list[bytes]) -> None:
        for doc in docs:
            if doc["seq"] != channel.last_seq + 1:
                continue  # delivered meanwhile, or beyond a hole the store still has
            frame = events.replay_frame(doc)
            if frame is None:  # a void (fenced, never acknowledged): step over it
                self.stats.gap_skipped += 1
                channel.last_seq = doc["seq"]
            else:
                self.stats.gap_filled += 1
                self._accept(channel, doc["seq"], frame, frames, doc.get("target_seq") or 0)

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
        while self.channels.get(channel.video_id) is channel:
            frames: list[bytes] = []
            self._drain(channel, frames)
            hi = self._gap_end(channel)
            fenced = False
            if hi > channel.last_seq:
                before = channel.last_seq
                docs: list[dict[str, Any]] | None = None
                try:
                    docs = await self._backend.fetch(channel.video_id, before + 1, hi)
                except LiveCommentsError as exc:
                    log.warning("gap fill for %s failed: %s", channel.video_id, exc)
                self._apply(channel, docs or [], frames)
                if channel.last_seq > before:
                    deadline = time.monotonic() + self._gap_deadline
                elif time.monotonic() > deadline and docs is not None:
                    fenced = await self._fence(channel, before, hi, docs)
                self._drain(channel, frames)
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
            head = (await self._backend.heads([channel.video_id])).get(channel.video_id)
        except LiveCommentsError as exc:
            log.warning("reading the head of %s failed: %s", channel.video_id, exc)
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
            self._gap_deadline,
        )  # fmt: skip
        try:
            await self._backend.fence(channel.video_id, lacking)
        except LiveCommentsError as exc:
            log.warning("fencing %s failed: %s", channel.video_id, exc)
            return False
        self.stats.gap_fenced += len(lacking)
        return True

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
            channel = self.channels.get(video_id)
            if channel is None or head is None:
                continue
            epoch, seq = head
            if channel.epoch is None:
                channel.epoch = epoch  # the video had no comments when we started hosting it
            if epoch != channel.epoch:
                channel.seen_head = 0  # a new epoch arrives with its events
                continue
            if channel.last_seq < channel.seen_head:
                self._request_fill(channel, channel.seen_head)
                filled += 1
            channel.seen_head = seq
        self.stats.reconciled += filled
        return filled

    async def _catch_up(self, channel: Channel) -> None:
        """Fill what was sequenced before the dispatchers started routing to us."""
        if self.channels.get(channel.video_id) is not channel:
            return
        try:
            head = await self._backend.head(channel.video_id)
        except LiveCommentsError:
            return
        if head[1] is None:
            return  # Redis has no counter yet: nothing was sequenced since we started
        if channel.epoch is None:
            channel.epoch = head[1]  # the video had no comments when we started hosting it
        if head[1] == channel.epoch and head[0] > channel.last_seq:
            self._request_fill(channel, head[0])

    # -- housekeeping -------------------------------------------------------

    def heartbeat(self) -> None:
        """One pass over every viewer; called by one timer, not one per connection.

        A viewer whose buffer is already at the bound is dropped instead: a
        client that stopped reading must not grow its buffer by heartbeats.
        """
        limit = self._max_buffer - len(HEARTBEAT)
        slow: list[Viewer] = []
        for channel in self.channels.values():
            self._write_all(channel.viewers, HEARTBEAT, limit, slow)
        for viewer in slow:
            self._drop(viewer, "its buffer is full at a heartbeat")

    def move(self, video_id: str, base_url: str | None, reason: str) -> int:
        """Send the video's viewers elsewhere with a ``moved`` event, and close them.

        The URL carries the last event id they got, so following it they miss
        nothing (the new node replays from there) and see nothing twice. The
        frame is the same for every viewer of the video: encoded once.
        """
        channel = self.channels.get(video_id)
        if channel is None or not channel.viewers:
            return 0
        self._flush(channel)  # they have everything up to last_seq before they go
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
            self._flush(channel)
            if channel.idle_handle is not None:
                channel.idle_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
