"""How many watch a video: its viewers on every RTMS node, kept in Redis.

A node knows its own viewers of a video exactly; the video's total is the sum over
the nodes serving it. Each RTMS node writes its count of every video it serves into
the video's hash ``v:{<video>}:viewers`` (:meth:`Keys.viewers`), a field per node
holding ``<boot> <count>``, every ``viewer_count_interval``; a count is written only
when it changed (or every :data:`REFRESH`, so the hash outlives nobody's interest),
and the same call reads the video's other fields back. The comment service reads
the hash for a first page.

Who counts: a reader adds only the fields of live nodes, and only from this life
of the node. ``live(node)`` is the ``boot`` its ZooKeeper record carries now (None
when it has none: its session ended, it died): a node killed stops counting when
its session ends, and a node restarted with the same id (a StatefulSet pod) does
not count the fields its earlier life left, which then expire (:data:`VIEWERS_TTL`).

Before this, every node put its viewers per video in its ZooKeeper record, rewritten
every few seconds: at 1,000 nodes that made every watching process read 194 records
a second (a third of a core each; ``docs/benchmarks.md``). Redis takes one script
call per node per interval, touching only that node's videos.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys

log = logging.getLogger(__name__)

VIEWERS_TTL = 120.0  # seconds a video's hash lives after its last write
REFRESH = VIEWERS_TTL / 4  # a node rewrites an unchanged count this often
BATCH = 500  # videos per script call: bounds how long one call holds Redis
UNCHANGED, REMOVE = "", "-"  # what the script does with a video besides reading it

Live = Callable[[str], "str | None"]  # a node id -> the boot id of its live record


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def per_node(fields: Mapping[Any, Any] | Sequence[Any], live: Live) -> dict[str, int]:
    """A video's hash (a mapping, or HGETALL's flat list) as viewers per live node: a
    field counts if its boot id is that of the node's live record."""
    pairs = (
        fields.items()
        if isinstance(fields, Mapping)
        else zip(fields[::2], fields[1::2], strict=False)
    )
    counts: dict[str, int] = {}
    for raw_node, raw_value in pairs:
        node = _text(raw_node)
        boot, _, count = _text(raw_value).partition(" ")
        if boot and boot == live(node) and count.isdigit() and int(count):
            counts[node] = int(count)
    return counts


def add_up(fields: Mapping[Any, Any] | Sequence[Any], live: Live, exclude: str = "") -> int:
    """The viewers in a video's hash on live nodes (but ``exclude``)."""
    return sum(n for node, n in per_node(fields, live).items() if node != exclude)


class ViewerCounts:
    """One process's view of the viewers hashes: an RTMS node writes, anyone reads."""

    def __init__(self, redis: Redis, keys: Keys, live: Live) -> None:
        self._redis = redis
        self._keys = keys
        self._live = live
        self._script = scripts.register(redis, "viewers_publish")
        self._written: dict[str, tuple[int, float]] = {}  # video -> (count, monotonic time)

    async def total(self, video_id: str) -> int | None:
        """The video's viewers on every live node; None when Redis cannot say (a
        first page is still served, from the store, without its count)."""
        try:
            fields = await self._redis.hgetall(self._keys.viewers(video_id))
        except RedisError as exc:
            log.warning("viewer count unreadable: %s", exc)
            return None
        return add_up(fields, self._live)

    async def publish(self, node: str, boot: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Write ``node``'s ``counts`` (videos with viewers) where they changed, remove
        the videos it no longer serves, and return each counted video's viewers on the
        *other* live nodes. A failed call raises; what it did not write is tried again
        next time."""
        now = time.monotonic()
        ops: list[tuple[str, str, int]] = []
        for video, count in counts.items():
            last = self._written.get(video)
            if last is None or last[0] != count or now - last[1] >= REFRESH:
                ops.append((video, f"{boot} {count}", count))
            else:
                ops.append((video, UNCHANGED, count))
        ops.extend((video, REMOVE, 0) for video in self._written if video not in counts)
        others: dict[str, int] = {}
        ttl_ms = int(VIEWERS_TTL * 1000)
        for start in range(0, len(ops), BATCH):
            batch = ops[start : start + BATCH]
            replies = await self._script(
                keys=[self._keys.viewers(video) for video, _, _ in batch],
                args=[node, ttl_ms, *(op for _, op, _ in batch)],
            )
            for (video, op, count), fields in zip(batch, replies, strict=True):
                if op == REMOVE:
                    self._written.pop(video, None)
                    continue
                if op != UNCHANGED:
                    self._written[video] = (count, now)
                others[video] = add_up(fields, self._live, exclude=node)
        return others

    async def withdraw(self, node: str, boot: str) -> None:
        """Remove every count ``node`` wrote (it stops)."""
        await self.publish(node, boot, {})


async def by_node(
    redis: Redis, keys: Keys, videos: Sequence[str], live: Live
) -> dict[str, dict[str, int]]:
    """Each video's viewers per live node (for operators: one pipelined read per batch)."""
    out: dict[str, dict[str, int]] = {}
    for start in range(0, len(videos), BATCH):
        batch = videos[start : start + BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for video in batch:
                pipe.hgetall(keys.viewers(video))
            replies = await pipe.execute()
        for video, fields in zip(batch, replies, strict=True):
            if counts := per_node(fields, live):
                out[video] = counts
    return out
