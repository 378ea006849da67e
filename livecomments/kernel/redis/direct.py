"""A Lua script on a connection of its own, for the scripts every post runs.

A post's admission and its settle are one EVALSHA each. Through ``Redis.evalsha``
a call also pays redis-py's per-command machinery: a pool checkout and checkin,
the retry wrapper, the response callbacks. That was about 40 µs of the comment
service's CPU per call (of ~150 µs; a bare connection, hiredis parsing, ~110).
:class:`DirectScript` keeps one connection of the client's pool (so the same
address, credentials, TLS and Sentinel discovery), sends the EVALSHA on it and
reads the answer. Its callers already send one call at a time (``Batcher``); a
lock keeps it so for any other caller.

Failures are redis-py's exceptions, as from ``Redis.evalsha``. A script Redis
does not know (a restart, ``SCRIPT FLUSH``) is loaded and the call sent again. A
connection that fails is dropped and the next call opens another. Before each call
the connection is checked as the pool checks it (closed by Redis while idle, or
unread bytes): then a new one is opened. A failed call is never sent again, so a
script never runs twice for one call.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

from livecomments.kernel.metrics import Histograms
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.timed import TimedRedis


class DirectScript:
    def __init__(self, redis: Redis, name: str, latency: Histograms | None = None) -> None:
        self._pool = redis.connection_pool
        self._source = scripts.source(name)
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self._label = "script:" + name
        self._latency = latency
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        async with self._lock:
            started = time.perf_counter()
            try:
                return await self._call(keys, args)
            finally:
                if self._latency is not None:
                    self._latency.observe(time.perf_counter() - started, self._label)

    async def _call(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        conn = await self._connection()
        try:
            try:
                return await self._run(conn, "EVALSHA", self._sha, keys, args)
            except NoScriptError:
                return await self._run(conn, "EVAL", self._source, keys, args)
        except (ConnectionError, TimeoutError, OSError):
            await self._drop(conn)
            raise
        except asyncio.CancelledError:
            # The answer may still come: this connection cannot be trusted to be in step.
            await self._drop(conn)
            raise

    async def _run(
        self, conn: AbstractConnection, command: str, script: str, keys: Sequence[Any],
        args: Sequence[Any],
    ) -> Any:  # fmt: skip
        packed = conn.pack_command(command, script, len(keys), *keys, *args)
        await conn.send_packed_command(packed, check_health=False)
        return await conn.read_response()

    async def _connection(self) -> AbstractConnection:
        """The connection, or a new one if Redis closed it while idle (as the pool checks)."""
        conn = self._conn
        if conn is not None:
            try:
                if not await conn.can_read():
                    return conn
            except ConnectionError:
                pass
            await self._drop(conn)
        fresh: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await fresh.connect()  # type: ignore[no-untyped-call]
        self._conn = fresh
        return fresh

    async def _drop(self, conn: AbstractConnection) -> None:
        if self._conn is conn:
            self._conn = None
        await conn.disconnect(nowait=True)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.disconnect()


class DirectScripts:
    """The direct scripts of one client, each made once and closed together."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts: dict[str, DirectScript] = {}

    def __call__(self, name: str) -> DirectScript:
        script = self._scripts.get(name)
        if script is None:
            latency = self._redis.latency if isinstance(self._redis, TimedRedis) else None
            script = self._scripts[name] = DirectScript(self._redis, name, latency)
        return script

    async def close(self) -> None:
        for script in self._scripts.values():
            await script.close()
