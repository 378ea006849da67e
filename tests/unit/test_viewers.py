"""Reading a video's viewers hash: only live nodes, only their current life (no Redis)."""

from __future__ import annotations

import socket

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.viewers import ViewerCounts, add_up, per_node

LIVE = {"n1": "boot1", "n2": "boot2"}


def test_only_live_nodes_in_their_current_life_count() -> None:
    fields = {
        b"n1": b"boot1 10",
        b"n2": b"boot2 5",
        b"n3": b"boot3 100",  # n3's session ended: it died
        b"n4": b"x 7",
    }
    assert add_up(fields, LIVE.get) == 15
    assert add_up(fields, LIVE.get, exclude="n1") == 5
    # n2 restarted with the same id: what its earlier life wrote does not count.
    assert add_up({b"n2": b"boot0 40"}, LIVE.get) == 0
    # HGETALL as a script returns it: a flat list.
    assert add_up([b"n1", b"boot1 10", b"n2", b"boot2 5"], LIVE.get) == 15
    assert per_node(fields, LIVE.get) == {"n1": 10, "n2": 5}


def test_garbage_in_the_hash_counts_nothing() -> None:
    for value in (b"", b"boot1", b"boot1 ", b"boot1 -3", b"boot1 1.5", b" 4", b"boot1 many"):
        assert add_up({b"n1": value}, LIVE.get) == 0, value
    assert add_up([b"n1"], LIVE.get) == 0  # a list cut short


async def test_an_unreachable_redis_gives_no_count_rather_than_an_error() -> None:
    """A first page is still served when Redis is down: without its viewer count."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    redis = Redis(port=port, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
    try:
        assert await ViewerCounts(redis, Keys("t:"), LIVE.get).total("v") is None
    finally:
        await redis.aclose()
