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


class TimedRedis(Redis):
    """``Redis`` with every command timed into ``latency`` (made by :meth:`connect`)."""

    latency: Histograms | None = None

    @classmethod
    def connect(
        cls, url: str, latency: Histograms, *, max_connections: int = 100, **options: Any
    ) -> TimedRedis:
        """``from_url``, timing every command into ``latency``.

        The pool waits for a free connection (up to the socket timeout) when all
        ``max_connections`` are busy: a burst of concurrent calls (the first posts
        of many new videos each seed their counter) queues for a moment instead of
        failing with redis-py's "Too many connections".
        """
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=options.get("socket_timeout") or 5.0,
            **options,
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
