"""A Redis client that times every command it sends, for ``/metrics``.

Each command's duration goes to a histogram by command name (``get``,
``zadd``); a Lua script run by EVALSHA is named after its file
(``script:outbox_claim``, see ``scripts.py``). Pipelines are sent as one batch
and are not counted. The timing is two clock reads and a bisect per command.
"""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from livecomments.kernel.metrics import Histograms
from livecomments.kernel.redis import scripts


@functools.cache
def _script_names() -> dict[str, str]:
    """The SHA1 Redis knows each script by -> its name."""
    return {
        hashlib.sha1(scripts.source(name).encode()).hexdigest(): name for name in scripts.names()
    }


def operation(args: tuple[Any, ...]) -> str:
    """The label of a command: its name, or ``script:<name>`` for EVALSHA."""
    name = args[0]
    name = (name.decode() if isinstance(name, bytes) else str(name)).lower()
    if name == "evalsha" and len(args) > 1:
        sha = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
        return "script:" + _script_names().get(sha, "unknown")
    return name


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary a set of sentinels names, with the blocking pool's wait for a free
    connection (see :meth:`TimedRedis.connect`). A connection asks the sentinels
    where the primary is when it connects, and is dropped when the server it talks
    to turns out to be a replica (a failover demoted it): the next one asks again."""


def sentinel_addresses(sentinels: tuple[str, ...]) -> list[tuple[str, int]]:
    """``("10.0.0.1:26379", ...)`` as (host, port) pairs; ValueError on a bad one."""
    pairs = []
    for entry in sentinels:
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sentinel is host:port, got {entry!r}")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


class TimedRedis(Redis):
    """``Redis`` with every command timed into ``latency`` (made by :meth:`connect`)."""

    latency: Histograms | None = None

    @classmethod
    def connect(
        cls,
        url: str,
        latency: Histograms | None,
        *,
        max_connections: int = 100,
        sentinels: tuple[str, ...] = (),
        sentinel_master: str = "",
        sentinel_password: str = "",
        **options: Any,
    ) -> TimedRedis:
        """``from_url`` (or, with ``sentinels``, the primary they name as
        ``sentinel_master``), timing every command into ``latency``.

        The pool waits for a free connection (up to the socket timeout) when all
        ``max_connections`` are busy: a burst of concurrent calls (the first posts
        of many new videos each seed their counter) queues for a moment instead of
        failing with redis-py's "Too many connections".
        """
        wait = options.get("socket_timeout") or 5.0
        pool: BlockingConnectionPool
        if sentinels:
            kwargs = {**parse_url(url), **options}
            kwargs.pop("host", None)
            kwargs.pop("port", None)
            if kwargs.pop("connection_class", None) is not None:  # rediss://
                kwargs["ssl"] = True
            timeouts: dict[str, Any] = {
                key: options[key]
                for key in ("socket_timeout", "socket_connect_timeout")
                if key in options
            }
            if sentinel_password:
                timeouts["password"] = sentinel_password
            manager = Sentinel(sentinel_addresses(sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
            pool = BlockingSentinelPool(  # type: ignore[no-untyped-call]
                sentinel_master, manager, max_connections=max_connections, timeout=wait, **kwargs
            )
        else:
            pool = BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=wait, **options
            )
        client = cls.from_pool(pool)
        assert isinstance(client, TimedRedis)
        client.latency = latency
        return client

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        latency = self.latency
        if latency is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            latency.observe(time.perf_counter() - start, operation(args))


def connect(settings: Any, latency: Histograms | None = None, **options: Any) -> TimedRedis:
    """The client a process's settings (``BackendSettings``) describe: ``redis_url``,
    or the primary its sentinels name."""
    return TimedRedis.connect(
        settings.redis_url,
        latency,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
        **options,
    )
