"""The pure parts of the multi-node scaling benchmark (bench/scale.py) and the viewers'
header and `moved` handling (bench/viewers.py): who watches what, what is posted when,
and the summary arithmetic."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bench.scale import (
    HOT,
    fit_two,
    hosting_per_comment,
    linear_fit,
    ratios_to_first,
    schedule,
    split_viewers,
)
from bench.viewers import Gen, Viewer, _header


def test_half_the_viewers_watch_the_hot_video_the_rest_spread_evenly() -> None:
    assign = split_viewers(6000, 200)
    counts = Counter(assign)
    assert counts[HOT] == 3000
    assert sorted(set(assign) - {HOT}) == list(range(1, 201))
    assert {n for v, n in counts.items() if v != HOT} == {15}
    # Any generator's contiguous share has both kinds.
    assert Counter(v == HOT for v in assign[1000:1010]) == {True: 5, False: 5}


def test_without_small_videos_everyone_watches_the_hot_one() -> None:
    assert split_viewers(5, 0) == [HOT] * 5


def test_the_schedule_is_two_open_loop_streams_alternating_over_the_posters() -> None:
    plan = schedule(20, 20, 2.0, 3, 2)
    assert len(plan) == 80
    assert [due for due, _, _ in plan] == sorted(due for due, _, _ in plan)
    hot = [(due, who) for due, v, who in plan if v == HOT]
    assert [due for due, _ in hot] == pytest.approx([k / 20 for k in range(40)])
    assert Counter(who for _, who in hot) == {0: 20, 1: 20}
    small = [v for _, v, _ in plan if v != HOT]
    assert Counter(small) == {1: 14, 2: 13, 3: 13}


def test_hosting_nodes_per_comment_weights_each_video_by_its_comments() -> None:
    # 20 comments to the hot video on 6 nodes, 20 to small ones on 1 node each.
    assert hosting_per_comment([20, 10, 10], [6, 1, 1]) == pytest.approx(3.5)
    assert hosting_per_comment([0, 0], [6, 1]) is None


def test_linear_fit_recovers_a_line_and_refuses_one_point() -> None:
    a, b = linear_fit([1.0, 1.5, 2.5, 3.5], [0.5 + 0.2 * x for x in (1.0, 1.5, 2.5, 3.5)]) or (0, 0)
    assert (a, b) == (pytest.approx(0.5), pytest.approx(0.2))
    assert linear_fit([2.0, 2.0], [1.0, 3.0]) is None


def test_ratios_to_the_first_step() -> None:
    assert ratios_to_first([4.0, 5.0, None, 6.0]) == [1.0, 1.25, None, 1.5]
    assert ratios_to_first([None, 1.0]) == [None, None]


def test_a_redirects_location_is_read_from_the_head() -> None:
    head = b"HTTP/1.1 307 Temporary Redirect\r\nLOCATION: http://127.0.0.1:9/stream/v?redirected=1"
    assert _header(head, b"location") == "http://127.0.0.1:9/stream/v?redirected=1"
    assert _header(head, b"retry-after") is None


class _Transport:
    def close(self) -> None:
        pass


async def test_a_moved_event_is_followed_as_the_same_viewer() -> None:
    gen, followed = Gen(), []
    gen.on_moved = lambda viewer, url, last: followed.append((viewer, url, last))
    ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    viewer = Viewer(gen, 0, ready, port=8801)
    viewer.connection_made(_Transport())
    viewer.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
    viewer.data_received(
        b'id: 1-1\nevent: comment\ndata: {"text":"1 a"}\n\n'
        b'event: moved\ndata: {"reason":"drain","url":"http://127.0.0.1:8802/stream/v'
        b'?redirected=1&last_event_id=1-1","last_event_id":"1-1"}\n\n'
    )
    assert gen.events == 1 and gen.by_port == {8801: 1} and gen.moved == 1
    assert viewer.closing  # the node closes it: not counted as a disconnect
    ((who, url, last),) = followed
    assert who is viewer and last == "1-1" and url.endswith("last_event_id=1-1")
    ready2: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    again = Viewer(gen, 0, ready2, port=8802, inherit=viewer)
    assert (again.last_seq, again.unique) == (1, 1)


def test_fit_two_separates_the_cost_per_comment_from_the_cost_per_delivery() -> None:
    # 1.2 ms per comment received, 13 us per delivery, over nodes of different sizes.
    rows = [(c, d, c * 1.2e-3 + d * 13e-6) for c, d in ((400, 1e5), (420, 5e4), (410, 2e4))]
    a, b = fit_two(rows) or (0.0, 0.0)
    assert (a, b) == (pytest.approx(1.2e-3), pytest.approx(13e-6))
    assert fit_two([(1.0, 2.0, 3.0), (2.0, 4.0, 6.0)]) is None  # collinear: no answer
