"""Every Lua script compiles in a real Redis (the unit tests check the files without one)."""

from __future__ import annotations

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
