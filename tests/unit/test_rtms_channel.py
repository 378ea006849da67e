"""An RTMS channel on its own: the order it applies a video's events in, its ring, its writes."""

from __future__ import annotations

import re
from typing import Any

from livecomments.kernel import events
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.rtms.channel import (
    APPLIED,
    DUPLICATE,
    EARLY,
    MAX_AHEAD,
    UNCONFIRMED,
    Channel,
    Viewer,
)

EPOCH = 5


def event(seq: int, epoch: int = EPOCH, target: int = 0, text: str = "hi") -> pb.Event:
    kind = "comment.updated" if target else "comment"
    body = b'{"seq":%d,"text":"%s"}' % (target or seq, text.encode())
    frame = events.sse_frame(kind, body, events.event_id(epoch, seq))
    return pb.Event(video_id="v", seq=seq, epoch=epoch, frame=frame, target_seq=target)


def stored(seq: int) -> dict[str, Any]:
    return {
        "_id": 1000 + seq, "video_id": "v", "seq": seq, "epoch": EPOCH, "user_id": 1,
        "author": "a", "text": "x", "created_at_ms": 0,
    }  # fmt: skip


def seqs(frames: list[bytes] | bytes) -> list[int]:
    data = frames if isinstance(frames, bytes) else b"".join(frames)
    return [int(s) for s in re.findall(rb"^id: \d+-(\d+)$", data, re.M)]


def ring_seqs(channel: Channel) -> list[int]:
    return [seq for seq, _ in channel.ring]


class Transport:
    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def test_the_next_seq_is_applied_to_the_ring_and_the_frames() -> None:
    channel = Channel("v", 10, EPOCH, ring_size=16)
    frames: list[bytes] = []
    assert channel.offer(event(11), frames) == APPLIED
    assert channel.offer(event(12), frames) == APPLIED
    assert seqs(frames) == [11, 12] and channel.last_seq == 12
    assert ring_seqs(channel) == [11, 12]
    assert channel.offer(event(12), frames) == DUPLICATE
    assert channel.offer(event(3), frames) == DUPLICATE
    assert seqs(frames) == [11, 12]


def test_an_early_event_waits_for_the_gap_and_goes_out_in_order() -> None:
    channel = Channel("v", 0, EPOCH, ring_size=16)
    frames: list[bytes] = []
    assert channel.offer(event(3), frames) == EARLY
    assert channel.offer(event(3), frames) == DUPLICATE  # held already
    assert channel.offer(event(2), frames) == EARLY
    assert frames == [] and channel.last_seq == 0 and ring_seqs(channel) == []
    assert channel.offer(event(1), frames) == APPLIED  # and lets the held ones through
    assert seqs(frames) == [1, 2, 3] and channel.last_seq == 3 and channel.pending == {}
    assert ring_seqs(channel) == [1, 2, 3]


def test_the_ring_keeps_the_last_events() -> None:
    channel = Channel("v", 0, EPOCH, ring_size=3)
    for seq in range(1, 6):
        channel.offer(event(seq), [])
    assert ring_seqs(channel) == [3, 4, 5]


def test_another_epoch_or_a_far_jump_waits_for_redis() -> None:
    channel = Channel("v", 10, EPOCH, ring_size=16)
    frames: list[bytes] = []
    assert channel.offer(event(11, epoch=EPOCH + 1), frames) == UNCONFIRMED
    assert channel.offer(event(11, epoch=EPOCH - 1), frames) == DUPLICATE  # a straggler
    far = 10 + MAX_AHEAD + 1
    assert channel.offer(event(10 + MAX_AHEAD), frames) == EARLY  # near enough
    assert channel.offer(event(far), frames) == UNCONFIRMED
    assert channel.offer(event(far), frames, confirmed=True) == EARLY
    assert frames == [] and channel.last_seq == 10
    # A video with no comments when the channel started has no epoch: its first one waits.
    assert Channel("w", 0, None, ring_size=16).offer(event(1), frames) == UNCONFIRMED


def test_the_store_fills_a_gap_stepping_over_voids_only() -> None:
    channel = Channel("v", 0, EPOCH, ring_size=16)
    frames: list[bytes] = []
    channel.offer(event(4), frames)
    void = {"_id": 9, "video_id": "v", "seq": 2, "epoch": EPOCH, "void": True}
    assert channel.apply_stored([stored(1), void, stored(3)], frames) == (2, 1)
    assert channel.last_seq == 3 and ring_seqs(channel) == [1, 3]
    channel.drain(frames)
    assert seqs(frames) == [1, 3, 4] and channel.last_seq == 4
    # Beyond a hole the store still has: nothing is applied.
    behind = Channel("v", 0, EPOCH, ring_size=16)
    assert behind.apply_stored([stored(2), stored(3)], frames) == (0, 0)
    assert behind.last_seq == 0


def test_a_changed_comment_replays_in_its_new_state() -> None:
    channel = Channel("v", 0, EPOCH, ring_size=16)
    frames: list[bytes] = []
    channel.offer(event(1, text="before"), frames)
    channel.offer(event(2), frames)
    channel.offer(event(3, target=1, text="after"), frames)
    assert ring_seqs(channel) == [1, 2, 3]
    first = channel.ring[0][1]
    assert first.startswith(b"id: 5-1\nevent: comment.updated\n") and b"after" in first
    assert seqs(frames) == [1, 2, 3]  # live viewers got the change as it came


def test_a_new_epoch_starts_over_and_tells_viewers_to_reload() -> None:
    channel = Channel("v", 10, EPOCH, ring_size=16)
    frames: list[bytes] = []
    channel.offer(event(11), frames)
    channel.offer(event(13), frames)
    channel.restart(EPOCH + 1, 1, frames)
    assert b"event: reset" in frames[-1] and b"epoch_changed" in frames[-1]
    assert (channel.epoch, channel.last_seq) == (EPOCH + 1, 0)
    assert ring_seqs(channel) == [] and channel.pending == {}
    assert channel.offer(event(1, epoch=EPOCH + 1), frames) == APPLIED


async def test_a_flush_writes_the_outbox_once_to_every_viewer_and_hands_back_the_slow() -> None:
    channel = Channel("v", 0, EPOCH, ring_size=16)
    fast = [Transport(), Transport(buffered=100)]
    slow = Transport(buffered=101)
    viewers = [Viewer(transport) for transport in [*fast, slow]]
    channel.viewers.update(viewers)
    frames: list[bytes] = []
    for seq in (1, 2):
        channel.offer(event(seq), frames)
    channel.outbox.extend(frames)
    assert list(channel.flush(limit=100)) == [viewers[2]]
    for transport in fast:
        assert transport.writes == [b"".join(frames)]
    assert slow.writes == [] and channel.outbox == []
    assert (channel.sent_epoch, channel.sent_seq) == (EPOCH, 2) and channel.last_flush > 0
    assert list(channel.flush(limit=100)) == [] and len(fast[0].writes) == 1  # nothing new


def test_a_joiner_waits_for_the_viral_window_unless_it_has_part_of_it() -> None:
    channel = Channel("v", 10, EPOCH, ring_size=16)
    channel.outbox.append(event(11).frame)
    channel.last_seq = 11
    assert not channel.joins_mid_window(None)  # normal mode: flush first
    channel.viral = True
    assert channel.joins_mid_window(None) and channel.joins_mid_window(10)
    assert not channel.joins_mid_window(11)  # it has the outbox's seq 11 already
    channel.sent_epoch = EPOCH - 1  # the outbox starts a new epoch
    assert not channel.joins_mid_window(None)
