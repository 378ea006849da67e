"""Every Lua script compiles in a real Redis (the unit tests check the files without one)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from livecomments.cli.cluster import Backends
from livecomments.kernel.redis import scripts


async def test_every_script_compiles_in_redis(backends: Backends) -> None:
    redis = Redis.from_url(backends.redis_url)
    try:
        for name in scripts.names():
            script = scripts.register(redis, name)
            assert await redis.script_load(scripts.source(name)) == script.sha, name
    finally:
        await redis.aclose()


async def test_a_direct_script_survives_flushes_and_dropped_connections(backends: Backends) -> None:
    """The hot path's scripts (``direct.py``): loaded again after SCRIPT FLUSH, a new
    connection after Redis dropped the old one while idle, a failure raised (not
    retried) when the connection dies during the call."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from livecomments.kernel.metrics import Histograms
    from livecomments.kernel.redis.direct import DirectScripts
    from livecomments.kernel.redis.timed import TimedRedis

    latency = Histograms()
    redis = TimedRedis.connect(backends.redis_url, latency, socket_timeout=2.0)
    direct = DirectScripts(redis)
    script = direct("sequencer_settled_head")
    assert direct("sequencer_settled_head") is script  # one per name
    keys = ["lc-direct:seq", "lc-direct:epoch", "lc-direct:outbox"]
    try:
        await redis.delete(*keys[:2])
        first = await script(keys=keys, args=["vid", 5])
        await redis.script_flush()
        assert await script(keys=keys, args=["vid", 5]) == first  # NOSCRIPT: sent as EVAL
        # Redis closes the idle connection: the next call opens another.
        await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await script(keys=keys, args=["vid", 5]) == first
        # The connection dies while a call waits for its answer: that call fails.
        blocker = direct("sequencer_next")
        await redis.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # holds scripts
        call = asyncio.ensure_future(blocker(keys=[*keys[:2], ""], args=["vid"]))
        await asyncio.sleep(0.1)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        with pytest.raises(RedisConnectionError):
            await call
        assert await script(keys=keys, args=["vid", 5]) == first  # and the next one works
        assert ("script:sequencer_settled_head",) in latency.by  # timed like any command
    finally:
        await direct.close()
        await redis.delete(*keys)
        await redis.aclose()
