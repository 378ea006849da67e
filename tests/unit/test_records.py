"""Znode records: what writers encode, readers decode, and garbage reads as defaults."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from livecomments.coord.client import ZK
from livecomments.coord.intents import Snapshot
from livecomments.coord.mirror import NodeDirectory
from livecomments.coord.placement import Policy, rendezvous
from livecomments.coord.records import (
    CommentWorker,
    Dispatcher,
    Drain,
    Move,
    Pin,
    RebalanceRequest,
    RtmsNode,
    busy_floor,
    busy_videos,
    json_object,
    worth_publishing,
)
from livecomments.kernel import settings as cfg

GARBAGE = [None, b"", b"not json", b"[1, 2]", b'"text"', b"42", b"\xff\xfe", b"{"]


def test_records_round_trip() -> None:
    report = RtmsNode(
        sse_url="https://rtms-1:8443",
        grpc="10.0.0.1:7001",
        boot="a1b2c3",
        connections=3,
        videos=2,
        draining=True,
        viewers_by_video={"a": 2, "b": 1},
        viral_videos=("a",),
    )
    move: Move = {"video": "a", "from": "rtms-1", "to": ["rtms-2"], "viewers": 2}
    for record in (
        report,
        Dispatcher(grpc="10.0.0.2:7000", metrics="http://10.0.0.2:9751/metrics"),
        CommentWorker(17, "https://c1.example.com", "http://10.0.0.3:9752/metrics"),
        Pin(nodes=("rtms-2", "rtms-1"), by="ann@ops", at="2025-01-01T00:00:00+00:00"),
        Drain(by="ann@ops", at="2025-01-01T00:00:00+00:00"),
        RebalanceRequest(at="2025-01-01T00:00:00+00:00", by="ann@ops", plan=(move,)),
    ):
        assert type(record).decode(record.encode()) == record
    assert CommentWorker.decode(b"17") == CommentWorker(worker_id=17)  # as earlier versions wrote
    assert CommentWorker.decode(b"") == CommentWorker()  # a lease being taken


def test_payloads_keep_their_json_keys() -> None:
    """What is already in ZooKeeper, and what operators' scripts read, stays readable."""
    assert orjson.loads(Pin(("n1",), "me", "now").encode()) == {
        "nodes": ["n1"],
        "by": "me",
        "at": "now",
    }
    assert orjson.loads(Drain("me", "now").encode()) == {"by": "me", "at": "now"}
    assert orjson.loads(Dispatcher("h:1").encode()) == {"grpc": "h:1", "metrics": None}
    assert set(orjson.loads(RtmsNode().encode())) == {
        "sse_url",
        "grpc",
        "metrics",
        "boot",
        "connections",
        "videos",
        "draining",
        "viewers_by_video",
        "viral_videos",
    }
    assert Pin(("n1",), "me", "now").to_json() == {"nodes": ("n1",), "by": "me", "at": "now"}


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_decodes_to_the_defaults(data: bytes | None) -> None:
    assert json_object(data) == {}
    assert RtmsNode.decode(data) == RtmsNode()
    assert Dispatcher.decode(data) == Dispatcher()
    assert Pin.decode(data) == Pin()
    assert Drain.decode(data) == Drain()
    assert RebalanceRequest.decode(data) == RebalanceRequest()


def test_fields_of_the_wrong_type_read_as_their_defaults() -> None:
    report = RtmsNode.decode(
        orjson.dumps(
            {
                "sse_url": 5,
                "grpc": ["x"],
                "connections": True,  # a bool is not a count
                "videos": "2",
                "draining": "yes",  # only true is true
                "viewers_by_video": {"a": 3, "b": "many", "c": None},
                "viral_videos": ["a", 7, None],
                "newer_field": {"from": "a newer node"},
            }
        )
    )
    assert report == RtmsNode(viewers_by_video={"a": 3, "b": 0, "c": 0}, viral_videos=("a",))
    assert RtmsNode.decode(b'{"viewers_by_video": [1], "viral_videos": "ab"}') == RtmsNode()
    assert Pin.decode(b'{"nodes": ["n1", 2, null], "by": 1}') == Pin(nodes=("n1",))
    assert Pin.decode(b'{"nodes": "n1"}') == Pin()
    assert Drain.decode(b'{"by": "me", "at": 0}') == Drain(by="me")
    request = RebalanceRequest.decode(b'{"plan": [{"video": "v"}, 3, "x"], "at": "t"}')
    assert request.at == "t" and request.by is None
    assert [dict(move) for move in request.plan] == [{"video": "v"}]  # kept as written
    assert CommentWorker.decode(b"\xff1") == CommentWorker()
    assert CommentWorker.decode(b'{"worker_id": true, "url": 3}') == CommentWorker()


def test_a_directory_view_decodes_each_change_once() -> None:
    """The mirrors' typed views (no ZooKeeper here: the watch answers are fed by hand)."""
    directory = NodeDirectory(ZK("127.0.0.1:1", "/unit"), "/unit/nodes/rtms")
    directory._children.add("n1")
    directory._store("n1", (b'{"sse_url": "https://n1", "connections": 2}', None))
    view = directory.view(RtmsNode.from_json)
    assert view["n1"] == RtmsNode(sse_url="https://n1", connections=2)
    assert directory.view(RtmsNode.from_json) is view  # one view per record type, shared
    directory._store("n2", (b"garbage", None))
    assert view["n2"] == RtmsNode() and directory.nodes["n2"] == {}
    directory._forget("n1")
    assert "n1" not in view and "n1" not in directory.nodes


async def test_an_rtms_node_publishes_its_advertised_grpc_address_when_it_has_one() -> None:
    from livecomments.rtms.server import RTMSServer

    env = {"LIVECOMMENTS_GRPC_INSECURE": "1", "LIVECOMMENTS_GRPC_HOST": "10.1.2.3",
           "LIVECOMMENTS_GRPC_PORT": "9801"}  # fmt: skip
    for advertise, published in [
        ("", "10.1.2.3:9801"),
        ("proxy.example:19801", "proxy.example:19801"),
    ]:
        settings = cfg.load(
            cfg.RTMSSettings, environ={**env, "LIVECOMMENTS_GRPC_ADVERTISE": advertise}
        )
        node = RTMSServer(settings)  # not started: nothing is dialed
        try:
            assert node._info().grpc == published
        finally:
            await node.redis.aclose()


def test_policy_takes_the_services_settings() -> None:
    settings = cfg.BackendSettings(min_spread=2, spread_viewers=0, max_spread=3)
    assert Policy.from_settings(settings) == Policy(min_spread=2, spread_viewers=1, max_spread=3)


def test_snapshot_plans_moves_off_nodes_not_placed_for_a_video() -> None:
    nodes = ["n1", "n2", "n3"]
    (home,) = rendezvous("v", nodes)
    strays = [n for n in nodes if n != home]
    rtms = {
        n: RtmsNode(sse_url=f"https://{n}", viewers_by_video={"v": 4} if n != home else {})
        for n in nodes
    }
    snap = Snapshot(
        rtms=rtms,
        dispatchers={},
        workers={},
        hosted={"v": [*strays, home, "gone"], "w": [strays[0]]},
        pins={"w": Pin(nodes=(strays[0],))},
        drains={},
        rebalances=[],
        policy=Policy(),
    )
    assert snap.placed("v") == [home] and snap.placed("w") == [strays[0]]
    assert snap.viewers_by_node("v") == {n: 4 for n in strays}
    assert snap.videos() == ["v", "w"]
    # A node that is gone is not in the plan: its /hosted entries vanish with it.
    assert snap.plan() == [{"video": "v", "from": n, "to": [home], "viewers": 4} for n in strays]
    # Counts read from Redis, when the CLI has them, replace the records' busy lists.
    counted = replace(snap, viewers={"v": {strays[0]: 7}})
    assert counted.viewers_by_node("v") == {strays[0]: 7} and counted.viewers_by_node("w") == {}


def test_a_node_rewrites_its_record_only_when_it_says_something_new() -> None:
    base = RtmsNode(
        sse_url="https://n1", grpc="g:1", boot="b1", connections=1000, videos=100,
        viewers_by_video={"hot": 4000},
    )  # fmt: skip
    spread = 5000
    assert worth_publishing(None, base, spread)
    assert not worth_publishing(base, base, spread)
    same = [
        replace(base, connections=1099),  # within 10 %
        replace(base, connections=901),
        replace(base, videos=91),
        replace(base, viewers_by_video={"hot": 4399}),
    ]
    for new in same:
        assert not worth_publishing(base, new, spread), new
    news = [
        replace(base, connections=1200),
        replace(base, connections=0),  # a drain waits for this one
        replace(base, videos=0),
        replace(base, viewers_by_video={"hot": 3500}),
        replace(base, viewers_by_video={"hot": 5000}),  # placement spreads it now
        replace(base, viewers_by_video={"hot": 4000, "new": 600}),
        replace(base, viewers_by_video={}),
        replace(base, draining=True),
        replace(base, boot="b2"),
        replace(base, sse_url="https://n1b"),
        replace(base, viral_videos=("hot",)),
    ]
    for new in news:
        assert worth_publishing(base, new, spread), new
    # Small counts are exact: from 0 or to 0, or by more than a tenth.
    small = replace(base, connections=3)
    assert worth_publishing(small, replace(small, connections=4), spread)
    assert worth_publishing(small, replace(small, connections=0), spread)
    # Crossing a multiple of spread_viewers counts even within 10 %: 4,990 -> 5,010.
    near = replace(base, viewers_by_video={"hot": 4990})
    assert worth_publishing(near, replace(near, viewers_by_video={"hot": 5010}), spread)
    assert not worth_publishing(near, replace(near, viewers_by_video={"hot": 4800}), spread)


def test_busy_videos_start_at_a_tenth_of_the_spread_and_stay_down_to_half() -> None:
    assert busy_floor(5000) == 500
    assert busy_floor(3) == 1 and busy_floor(0) == 1
    counts = {"a": 900, "b": 500, "c": 499, "d": 300, "e": 249}
    assert busy_videos(counts, {}, 500, 10) == {"a": 900, "b": 500}
    listed = {"c": 520, "d": 510, "e": 505}  # listed before: they stay down to 250
    assert busy_videos(counts, listed, 500, 10) == {"a": 900, "b": 500, "c": 499, "d": 300}
    assert list(busy_videos(counts, {}, 500, 1)) == ["a"]  # the busiest, up to the cap
