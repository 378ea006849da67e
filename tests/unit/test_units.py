"""Pure functions: ids, event ids, placement, settings, text validation."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from livecomments.comment_service.validation import comment_text
from livecomments.coord.paths import Paths, hosted_bucket
from livecomments.coord.placement import Policy, place, rendezvous
from livecomments.coord.records import Pin, RtmsNode
from livecomments.kernel import settings as cfg
from livecomments.kernel.errors import ValidationError
from livecomments.kernel.events import event_id, sse_frame
from livecomments.kernel.ids import Snowflake, parse_id, timestamp_ms, valid_video_id
from livecomments.kernel.stream import Position, stream_url


def test_snowflakes_are_unique_increasing_and_carry_their_time() -> None:
    gen = Snowflake(7)
    ids = [gen.next_id() for _ in range(20000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(0 < i < 1 << 63 for i in ids)
    assert abs(timestamp_ms(ids[0]) - timestamp_ms(ids[-1])) < 5000
    assert (ids[0] >> 12) & 1023 == 7
    with pytest.raises(ValueError):
        Snowflake(1024)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12-34", (12, 34)),
        ("0-1", (0, 1)),
        ("abc", None),
        ("1-", None),
        ("-1", None),
        ("1-2-3", None),
        ("٣-٤", None),
        ("9" * 30 + "-1", None),
        ("", None),
        (None, None),
    ],
)
def test_event_ids(raw: str | None, expected: tuple[int, int] | None) -> None:
    assert Position.parse(raw) == expected
    if expected:
        assert Position.parse(event_id(*expected)) == Position(*expected)
        assert str(Position(*expected)) == raw


def test_stream_url_carries_the_position() -> None:
    assert stream_url("http://h:1", "v1") == "http://h:1/stream/v1?redirected=1"
    assert (
        stream_url("http://h:1", "v1", Position(3, 9))
        == "http://h:1/stream/v1?redirected=1&last_event_id=3-9"
    )


def test_sse_frame_shape() -> None:
    assert sse_frame("comment", b'{"a":1}', "1-2") == b'id: 1-2\nevent: comment\ndata: {"a":1}\n\n'


def test_ids_and_video_ids() -> None:
    assert parse_id("123") == 123
    assert parse_id("0") is None and parse_id("-1") is None and parse_id(12) is None
    assert parse_id("9" * 20) is None and parse_id("١٢") is None
    assert valid_video_id("abc_DEF-09") and not valid_video_id("a/b") and not valid_video_id("")
    assert not valid_video_id("x" * 65) and not valid_video_id("a b")


def test_rendezvous_is_stable_and_moves_only_what_it_must() -> None:
    nodes = [f"n{i}" for i in range(5)]
    videos = [f"v{i}" for i in range(2000)]
    before = {v: rendezvous(v, nodes)[0] for v in videos}
    assert before == {v: rendezvous(v, list(reversed(nodes)))[0] for v in videos}
    counts = {n: list(before.values()).count(n) for n in nodes}
    assert min(counts.values()) > 2000 / 5 * 0.7  # spread, roughly evenly
    after = {v: rendezvous(v, nodes[:-1])[0] for v in videos}
    moved = [v for v in videos if before[v] != after[v]]
    assert all(before[v] == "n4" for v in moved)  # only the removed node's videos move
    assert rendezvous("v7", nodes, 3)[0] == before["v7"] and len(rendezvous("v7", nodes, 3)) == 3


def test_settings_from_env_and_flags() -> None:
    env = {
        "LIVECOMMENTS_PORT": "9000",
        "LIVECOMMENTS_CORS_ORIGINS": "https://a, https://b",
        "LIVECOMMENTS_HEARTBEAT_INTERVAL": "2.5",
    }
    loaded = cfg.load(cfg.RTMSSettings, {"node_id": "x", "port": None}, env)
    assert (loaded.port, loaded.node_id, loaded.heartbeat_interval) == (9000, "x", 2.5)
    assert loaded.cors_origins == ("https://a", "https://b")
    assert cfg.load(cfg.RTMSSettings, {"port": 1}, env).port == 1
    with pytest.raises(ValueError):
        cfg.load(cfg.RTMSSettings, None, {"LIVECOMMENTS_PORT": "many"})


def test_znode_paths_refuse_escapes() -> None:
    paths = Paths("/lc")
    assert paths.hosted_by("v1", "n1") == f"/lc/hosted/{hosted_bucket('v1')}/v1/n1"
    assert hosted_bucket("v1") == f"{zlib.crc32(b'v1') % 256:02x}"  # stable across processes
    for bad in ("..", "a/b", "", "x" * 200):
        with pytest.raises(ValueError):
            paths.hosted_video(bad)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "empty_text"),
        ("  \t ", "empty_text"),
        ("a\tb", "invalid_characters"),
        ("a\u0000b", "invalid_characters"),
        ("x" * 501, "text_too_long"),
        (5, "invalid_type"),
        ("a\u202eb", "invalid_characters"),
    ],
)
def test_comment_text_rejects(text: object, code: str) -> None:
    with pytest.raises(ValidationError) as info:
        comment_text(text, 500)
    assert info.value.code == code


def test_comment_text_normalises() -> None:
    assert comment_text("  cafe\u0301  ", 500) == "caf\u00e9"
    assert comment_text("é" * 500, 500) == "é" * 500


def test_placement_pins_drains_and_spread() -> None:
    nodes = {f"n{i}": RtmsNode(sse_url=f"https://n{i}") for i in range(1, 5)}
    policy = Policy(min_spread=1, spread_viewers=100, max_spread=3)
    (home,) = place("v", nodes, {}, (), policy)
    assert home == rendezvous("v", nodes)[0]
    # A pin wins while one of its nodes is alive and not draining ...
    other = next(n for n in nodes if n != home)
    assert place("v", nodes, {"v": Pin(nodes=(other,))}, (), policy) == [other]
    # ... and falls back to hashing when none is.
    assert place("v", nodes, {"v": Pin(nodes=(other,))}, {other}, policy)[0] != other
    assert place("v", nodes, {"v": Pin(nodes=("gone",))}, (), policy) == [home]
    # Draining nodes and excluded nodes take nothing new.
    assert home not in place("v", nodes, {}, {home}, policy)
    assert home not in place("v", nodes, {}, (), policy, exclude={home})
    # Viewers over all nodes' reports spread the video, best node first, up to max_spread.
    busy = {n: replace(info, viewers_by_video={"v": 90}) for n, info in nodes.items()}  # 360
    spread = place("v", busy, {}, (), policy)
    assert spread == rendezvous("v", nodes, 3) and spread[0] == home
    assert place("v", nodes, {}, (), Policy(min_spread=2)) == rendezvous("v", nodes, 2)
    assert place("v", {}, {}, (), policy) == []


async def test_batcher_groups_what_arrives_during_a_call() -> None:
    import asyncio

    from livecomments.kernel.batching import Batcher

    calls: list[list[int]] = []
    in_flight = 0

    async def run(items: list[int]) -> list[int | BaseException]:
        nonlocal in_flight
        in_flight += 1
        assert in_flight == 1, "one call at a time"
        calls.append(items)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return [ValueError(i) if i == 3 else i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run, max_batch=4)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(7)), return_exceptions=True)
    # All 7 queue before the worker first runs: batches of at most 4, one call at a time.
    assert calls == [[0, 1, 2, 3], [4, 5, 6]]
    assert results[:3] == [0, 10, 20] and isinstance(results[3], ValueError)
    assert results[4:] == [40, 50, 60]

    async def broken(items: list[int]) -> list[int | BaseException]:
        raise RuntimeError("down")

    failing: Batcher[int, int] = Batcher(broken)
    outcome = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcome)


async def test_a_batcher_with_calls_in_flight_does_not_hold_items_behind_a_slow_call() -> None:
    import asyncio

    from livecomments.kernel.batching import Batcher

    slow = asyncio.Event()
    calls: list[list[int]] = []
    busy = 0
    most = 0

    async def run(items: list[int]) -> list[int | BaseException]:
        nonlocal busy, most
        calls.append(items)
        busy += 1
        most = max(most, busy)
        if 0 in items:
            await slow.wait()  # a far node: this call does not end until told
        else:
            await asyncio.sleep(0)
        busy -= 1
        return items[:]

    batcher: Batcher[int, int] = Batcher(run, in_flight=2)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the slow call is in flight
    # Items behind it go out on the second call meanwhile, in the batches they form.
    assert await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3))) == [1, 2, 3]
    assert await batcher.submit(4) == 4
    assert not first.done() and calls == [[0], [1, 2, 3], [4]] and most == 2
    slow.set()
    assert await first == 0
    # What is submitted in one turn of the loop still goes together, in one call.
    slow.clear()
    many = [asyncio.ensure_future(batcher.submit(i)) for i in (0, 5, 6, 7, 8)]
    await asyncio.sleep(0.01)
    assert calls[-1] == [0, 5, 6, 7, 8] and most == 2
    slow.set()
    assert await asyncio.gather(*many) == [0, 5, 6, 7, 8]


def test_a_service_raises_its_open_files_limit_to_the_hard_one() -> None:
    """Every viewer is a socket: a soft limit of 1024 under a high hard one (what a
    container runtime may leave) is raised at start."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from livecomments.cli.runtime import raise_open_files_limit\n"
        "raise_open_files_limit()\n"
        "now, hard2 = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "print(now == hard2 and now > 256)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out


def test_the_local_cluster_uses_the_settings_defaults_so_the_cli_finds_it(tmp_path: Path) -> None:
    """`livecomments up` runs the default namespace: the CLI, run with no settings,
    reads the same ZooKeeper root, database and Redis keys (the viewer counts)."""
    from livecomments.cli.cluster import Backends, Cluster
    from livecomments.kernel import settings as cfg

    backends = Backends("127.0.0.1:1", "redis://127.0.0.1:2/0", "mongodb://127.0.0.1:3", {}, [1])
    env = Cluster(tmp_path, backends, tls=False, grpc_tls=False).base_env()
    defaults = cfg.BackendSettings()
    assert env["LIVECOMMENTS_ZK_ROOT"] == defaults.zk_root
    assert env["LIVECOMMENTS_MONGO_DB"] == defaults.mongo_db
    assert env["LIVECOMMENTS_REDIS_PREFIX"] == defaults.redis_prefix
    other = Cluster(tmp_path, backends, namespace="t7", tls=False, grpc_tls=False).base_env()
    assert other["LIVECOMMENTS_REDIS_PREFIX"] == "t7:" and other["LIVECOMMENTS_ZK_ROOT"] == "/t7"
