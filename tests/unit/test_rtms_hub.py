"""An RTMS hub in-process: a viewer that resumes ahead of the node's channel.

A node that starts hosting a video starts at its *settled* head: below the seqs
still in flight, whose outbox entries the comment service removes a moment after
the dispatch that delivered them. A viewer that another node already sent such a
seq (it moved here from there) is ahead of the new channel. The channel fills
what lies between from the store later; none of it may reach that viewer again,
and a ``moved`` event must never name an id behind what the viewer has.
"""

from __future__ import annotations

from typing import Any

import pytest

from livecomments.kernel import events
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.stream import Position
from livecomments.rtms.channel import Viewer
from livecomments.rtms.hub import Hub
from livecomments.rtms.limits import Refused
from tests.hub_doubles import FlowTransport, flow_viewer

EPOCH = 7


def stored(seq: int) -> dict[str, Any]:
    return {
        "_id": 1000 + seq, "video_id": "v", "seq": seq, "epoch": EPOCH, "user_id": 1,
        "author": "a", "text": "x", "created_at_ms": 0,
    }  # fmt: skip


def event(seq: int) -> pb.Event:
    return events.comment_event(stored(seq))


class Backend:
    """Seqs 1..``taken`` handed out and stored; the settled head is ``settled``."""

    def __init__(self, settled: int, taken: int, *, store_down: bool = False) -> None:
        self.settled, self.taken, self.store_down = settled, taken, store_down
        self.fetches: list[tuple[int, int]] = []

    async def head(self, video_id: str) -> Position | None:
        return Position(EPOCH, self.settled)

    async def heads(self, video_ids: list[str]) -> dict[str, Position | None]:
        return {video_id: Position(EPOCH, self.taken) for video_id in video_ids}

    async def fetch(self, video_id: str, lo: int, hi: int) -> list[dict[str, Any]]:
        self.fetches.append((lo, hi))
        if self.store_down:
            raise Unavailable("store: connection refused")
        return [stored(s) for s in range(lo, min(hi, self.taken) + 1)]

    async def fence(self, video_id: str, seqs: list[int]) -> None:
        pass

    async def stored_head(self, video_id: str) -> int:
        return self.taken

    async def host(self, video_id: str) -> None:
        pass

    async def unhost(self, video_id: str) -> None:
        pass


def viewer() -> tuple[Viewer, FlowTransport]:
    return flow_viewer(high=1 << 30)  # a reader that keeps up: it never pauses


def hub(backend: Backend) -> Hub:
    # No coalescing wait and no reorder wait: every step below is awaited, not slept on.
    return Hub(backend, reorder_window=0, coalesce_window=0, gap_deadline=0.2)


async def filled(hub: Hub) -> None:
    """Until the channel's gap fill is done and what it applied is written."""
    channel = hub.channels["v"]
    if channel.filling is not None:
        await channel.filling
    hub.flush(channel)


async def test_a_viewer_ahead_of_a_new_channel_never_gets_what_it_has_twice() -> None:
    # Seq 12 was delivered to the viewer by another node; its outbox entry is still
    # there, so this node's channel starts at the settled head, 11.
    backend = Backend(settled=11, taken=12)
    node = hub(backend)
    moving, transport = viewer()
    await node.attach(moving, "v", Position(EPOCH, 12), b"HEAD\n")
    assert moving.channel is node.channels["v"]
    # The next comment: this node fills 12 from the store for its channel, and
    # the viewer gets 13 only.
    backend.taken = 13
    node.deliver([event(13)])
    await filled(node)
    assert transport.seqs() == [13]
    await node.stop()


async def test_a_move_never_names_an_id_behind_what_the_viewer_has() -> None:
    backend = Backend(settled=11, taken=12)
    node = hub(backend)
    moving, transport = viewer()
    await node.attach(moving, "v", Position(EPOCH, 12), b"HEAD\n")
    # Moved on again before any new comment: it has 12, so the move says 12.
    assert node.move("v", "https://elsewhere", "rebalance") == 1
    moved = transport.moved()
    assert moved["last_event_id"] == f"{EPOCH}-12"
    assert moved["url"].endswith(f"&last_event_id={EPOCH}-12")
    assert transport.seqs() == []
    await node.stop()


async def test_a_viewer_ahead_of_a_channel_that_waits_on_a_gap() -> None:
    backend = Backend(settled=10, taken=10)
    node = hub(backend)
    first, first_transport = viewer()
    await node.attach(first, "v", None)
    # 11 and 12 are stored but 11's dispatch is late: 12 waits for the gap here,
    # while another node sent both to a viewer that now comes to this one.
    backend.taken = 12
    node.deliver([event(12)])
    second, second_transport = viewer()
    await node.attach(second, "v", Position(EPOCH, 12))
    node.deliver([event(11)])  # the late one: a duplicate by now
    backend.taken = 13
    node.deliver([event(13)])
    await filled(node)
    assert first_transport.seqs() == [11, 12, 13]
    assert second_transport.seqs() == [13]
    await node.stop()


async def test_a_resume_beyond_every_seq_handed_out_waits_for_nothing() -> None:
    backend = Backend(settled=5, taken=5)
    node = hub(backend)
    forged, _ = viewer()
    await node.attach(forged, "v", Position(EPOCH, 10**12))
    assert forged.channel is node.channels["v"] and backend.fetches == []
    assert node.channels["v"].fill_to == 0  # no fill runs after a seq nobody took
    await node.stop()


async def test_a_node_that_cannot_catch_up_refuses_the_viewer_for_now() -> None:
    backend = Backend(settled=11, taken=12, store_down=True)
    node = hub(backend)
    behind, transport = viewer()
    with pytest.raises(Refused) as refused:
        await node.attach(behind, "v", Position(EPOCH, 12), b"HEAD\n")
    assert refused.value.status == 503 and refused.value.code == "catching_up"
    assert "Retry-After" in refused.value.headers
    assert transport.data == b"" and behind.channel is None and node.viewer_count == 0
    await node.stop()
