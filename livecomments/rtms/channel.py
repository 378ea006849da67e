"""One video on this node: the order of its events, the ring, and the writes to its viewers.

A :class:`Channel` applies a video's sequenced events in seq order. :meth:`Channel.offer`
takes one event and answers what became of it: applied (:data:`APPLIED`), held
early until the seqs before it arrive (:data:`EARLY`: a gap), not applied until
Redis confirms it (:data:`UNCONFIRMED`: another epoch, or far ahead), or already
seen (:data:`DUPLICATE`). The channel calls nothing outside itself: whoever
offered the event acts on the answer (the hub asks recovery to fill the gap or
confirm the epoch). An applied event's frame goes into the ring (recent frames,
for resume) and into the caller's ``frames``, which pacing adds to the outbox.

:meth:`Channel.flush` writes the outbox. Frames arrive already encoded: a burst
is joined once and the same bytes are written to every viewer's transport, with
no task and no await per viewer. The viewers too slow for it are handed back,
not dropped here: the node's count of viewers is the hub's.

The per-video state of pacing (:mod:`.pacing`) and of recovery (:mod:`.recovery`)
is kept here too, as plain slots, so the per-event path reads one object.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson

from livecomments.kernel import events
from livecomments.kernel.pb import livecomments_pb2 as pb

HEARTBEAT = b": hb\n\n"
MAX_AHEAD = 1024  # a seq further ahead of the last delivered one is confirmed with Redis

# What became of an offered event (Channel.offer).
APPLIED = 0  # the next seq: in the ring and in `frames` (with any it let through)
EARLY = 1  # beyond a gap: held in `pending` until the gap closes
UNCONFIRMED = 2  # another epoch, or far ahead: not applied until Redis confirms it
DUPLICATE = 3  # delivered already, held already, or from an epoch before the video's

_NOBODY: tuple[Viewer, ...] = ()


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


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

    def close(self) -> None:
        """Nothing more is written to it: a replay waiting for it to drain stops waiting."""
        self.closed = True
        self.resume_writing()

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


def reset_frame(reason: str, epoch: int | None) -> bytes:
    return events.sse_frame("reset", orjson.dumps({"reason": reason, "epoch": epoch}))


def viewers_frame(count: int) -> bytes:
    """``event: viewers``: the video's viewers on every node (no id: an aggregate)."""
    return events.sse_frame("viewers", orjson.dumps({"count": count}))


def write_all(viewers: Iterable[Viewer], data: bytes, limit: int, slow: list[Viewer]) -> None:
    """Write ``data`` to each viewer within ``limit``; the others go to ``slow``."""
    for viewer in viewers:
        transport = viewer.transport
        if transport.get_write_buffer_size() > limit:
            slow.append(viewer)
        else:
            transport.write(data)


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
        "stamps",
        "video_id",
        "viewers",
        "viewers_told",
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
        self.viewers_told = -1  # the viewer total last sent to them (-1: none yet)
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=ring_size)
        self.last_seq = last_seq
        self.epoch = epoch
        # seq -> (frame, seq of the comment it changes or 0), waiting for a gap to close
        self.pending: dict[int, tuple[bytes, int]] = {}
        self.outbox: list[bytes] = []  # accepted, not yet written to the viewers
        # The accept times (ms) of the outbox's events applied in order: the hub
        # observes their latency once per event when the outbox is written.
        self.stamps: list[int] = []
        # Everything up to (sent_epoch, sent_seq) was written to the viewers, at
        # last_flush; the outbox holds what came after.
        self.sent_seq = last_seq
        self.sent_epoch = epoch
        self.last_flush = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None  # the hub's: retire when idle
        # Pacing's (pacing.py): when the outbox goes out.
        self.flush_handle: asyncio.Handle | None = None
        self.window = window  # the coalescing window now in force (normal or viral)
        self.rate = 0.0  # events/s, exponentially decayed (pacing.RATE_TAU), as of rate_at
        self.rate_at = 0.0
        self.viral = False
        # Recovery's (recovery.py): filling a gap, and the head it last saw.
        self.filling: asyncio.Task[None] | None = None
        self.fill_to = 0  # fill from the store up to here even without a later event
        self.seen_head = 0  # the video's head at the last reconcile

    # -- ordering -----------------------------------------------------------

    def offer(self, event: pb.Event, frames: list[bytes], confirmed: bool = False) -> int:
        """Apply ``event`` in seq order, or hold it; see the module's docstring.

        ``confirmed``: Redis handed out its seq already, however far ahead it is.
        """
        if event.epoch != self.epoch:
            if self.epoch is not None and event.epoch < self.epoch:
                return DUPLICATE  # a straggler from before the counter was re-created
            # A new epoch resets the video for every viewer, so the wire's word is
            # not enough: the event waits until Redis says the epoch is current.
            return UNCONFIRMED
        seq = event.seq
        if seq <= self.last_seq or seq in self.pending:
            return DUPLICATE
        if seq == self.last_seq + 1:
            self._accept(seq, event.frame, frames, event.target_seq)
            if event.created_at_ms:  # its latency is observed when the outbox is written
                self.stamps.append(event.created_at_ms)
            self.drain(frames)
            return APPLIED
        if seq - self.last_seq > MAX_AHEAD and not confirmed:
            # Far ahead: once the gap was skipped, every real event would be a
            # "duplicate". Redis must have handed that seq out already.
            return UNCONFIRMED
        self.pending[seq] = (event.frame, event.target_seq)
        return EARLY

    def drain(self, frames: list[bytes]) -> None:
        """Apply the held events that follow on from the last seq now."""
        pending = self.pending
        while pending:
            entry = pending.pop(self.last_seq + 1, None)
            if entry is None:
                break
            self._accept(self.last_seq + 1, entry[0], frames, entry[1])

    def apply_stored(self, docs: list[dict[str, Any]], frames: list[bytes]) -> tuple[int, int]:
        """Apply stored comments that follow on from the last seq; (applied, voids stepped over)."""
        applied = skipped = 0
        for doc in docs:
            if doc["seq"] != self.last_seq + 1:
                continue  # delivered meanwhile, or beyond a hole the store still has
            frame = events.replay_frame(doc)
            if frame is None:  # a void (fenced, never acknowledged): step over it
                skipped += 1
                self.last_seq = doc["seq"]
            else:
                applied += 1
                self._accept(doc["seq"], frame, frames, doc.get("target_seq") or 0)
        return applied, skipped

    def restart(self, epoch: int, seq: int, frames: list[bytes]) -> None:
        """The video's counter was re-created: start over at ``seq`` of ``epoch``.

        Seqs may repeat in the new epoch, so the ring and the held events go, and
        viewers are told to reload history.
        """
        frames.append(reset_frame("epoch_changed", epoch))
        self.last_seq = seq - 1
        self.ring.clear()
        self.pending.clear()
        self.epoch = epoch

    def _accept(self, seq: int, frame: bytes, frames: list[bytes], target: int = 0) -> None:
        self.last_seq = seq
        self.ring.append((seq, frame))
        frames.append(frame)
        if target:
            self._patch_ring(target, frame)

    def _patch_ring(self, target: int, frame: bytes) -> None:
        """A changed comment replays in its new state: resume never shows deleted text."""
        ring = self.ring
        if not ring or target < ring[0][0] or self.epoch is None:
            return
        for index, (seq, _) in enumerate(ring):
            if seq == target:
                patched = events.retarget(frame, self.epoch, target)
                if patched is not None:
                    ring[index] = (target, patched)
                return
            if seq > target:
                return

    # -- writing ------------------------------------------------------------

    def flush(self, limit: int) -> Sequence[Viewer]:
        """Write the outbox to every viewer now (a flush pacing set for later is spent).

        Returns the viewers whose buffer was past ``limit``: they were not written to.
        """
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.outbox:
            return _NOBODY
        data = b"".join(self.outbox)
        self.outbox.clear()
        self.sent_seq, self.sent_epoch = self.last_seq, self.epoch
        self.last_flush = asyncio.get_running_loop().time()
        slow: list[Viewer] = []
        write_all(self.viewers, data, limit, slow)
        return slow

    def joins_mid_window(self, have: int | None) -> bool:
        """Whether a viewer may join a viral video without cutting its window short.

        Viral videos are the ones people flock to: flushing for every joiner
        would turn a 0.25 s window back into one write per join. Instead the
        joiner gets what was written so far and then the outbox with everyone
        else. Not when it already has part of the outbox (it has everything up
        to ``have``, beyond the last write) or the outbox starts a new epoch: then flush.
        """
        return (
            self.viral
            and bool(self.outbox)
            and self.sent_epoch == self.epoch
            and (have is None or have <= self.sent_seq)
        )
