"""Per-video sequence numbers from Redis, with an epoch that marks re-creation.

``seq`` comes from one INCR, so it is contiguous per video. If the counter is
lost (Redis restarted without persistence), the next writer re-seeds it from
the store's highest seq and starts a new epoch; viewers resuming with an id of
the old epoch are told to reload. The unique ``(video_id, seq)`` index in the
store is the last line of defence: a seq handed out twice cannot be stored twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel.errors import Unavailable
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.stream import Position

if TYPE_CHECKING:
    from livecomments.kernel.store import Store


class Sequencer:
    def __init__(
        self, redis: Redis, prefix: str, store: Store | None = None, *, outbox: bool = False
    ) -> None:
        self._redis = redis
        self._keys = Keys(prefix)
        self._store = store
        self.outbox_key = self._keys.outbox() if outbox else None
        self._next = scripts.register(redis, "sequencer_next")
        self._seed = scripts.register(redis, "sequencer_seed")
        self._advance = scripts.register(redis, "sequencer_advance")
        self._settled_head = scripts.register(redis, "sequencer_settled_head")

    def keys(self, video_id: str) -> list[str]:
        """The video's counter and epoch keys (for scripts that take a seq themselves)."""
        return [self._keys.seq(video_id), self._keys.epoch(video_id)]

    async def next(self, video_id: str) -> Position:
        """The position of the next event of ``video_id`` (entered in the outbox too)."""
        keys = self.keys(video_id)
        if self.outbox_key:
            keys.append(self.outbox_key)
        try:
            for _ in range(3):
                seq, epoch = await self._next(keys=keys, args=[video_id])
                if seq > 0:
                    return Position(int(epoch), int(seq))
                if self._store is None:
                    raise Unavailable("sequencer has no store to seed from")
                highest = await self._store.max_seq(video_id)
                await self._seed(keys=keys, args=[highest, time.time_ns() // 1_000_000])
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        raise Unavailable("could not seed the sequence counter")

    async def advance(self, video_id: str, taken: int) -> None:
        """Make sure the next seq handed out is above ``taken``."""
        try:
            await self._advance(keys=self.keys(video_id)[:1], args=[taken])
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    async def head(self, video_id: str) -> Position | None:
        """The last assigned seq and its epoch, or None when the video has no counter."""
        return (await self.heads([video_id]))[video_id]

    async def heads(self, video_ids: list[str]) -> dict[str, Position | None]:
        """``head()`` of many videos in one round trip."""
        keys = [key for video_id in video_ids for key in self.keys(video_id)]
        if not keys:
            return {}
        try:
            values = await self._redis.mget(keys)
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        heads: dict[str, Position | None] = {}
        for i, video_id in enumerate(video_ids):
            seq, epoch = values[2 * i], values[2 * i + 1]
            heads[video_id] = None if epoch is None else Position(int(epoch), int(seq or 0))
        return heads

    async def settled_head(self, video_id: str, scan: int = 1024) -> Position | None:
        """The position up to which every seq is stored or was given up.

        The head minus what is still in flight (the outbox has it: taken, not yet
        stored and dispatched), looking at most ``scan`` seqs below the head. A
        node that starts hosting a video starts here, so what is in flight
        reaches it by dispatch or by a gap fill, not never. None: no counter.
        """
        keys = [*self.keys(video_id), self._keys.outbox()]
        try:
            settled, epoch, _head = await self._settled_head(keys=keys, args=[video_id, scan])
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        if int(settled) < 0:
            return None
        return Position(int(epoch), int(settled))
