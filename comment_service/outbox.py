"""The outbox: every sequenced event is dispatched at least once, even if its writer dies.

The sequencer enters ``{video}|{seq}`` in a Redis sorted set in the same step
that hands out the seq, scored by time. The writer removes it once a
dispatcher has taken the event, in the call that adds the event to the
recent-comments cache (``recent.py``: "settled"). Every replica sweeps entries older than
``age``: it leases them (re-scores them to now, so the other replicas skip
them for a while), reads the events from the store and dispatches them again.
RTMS nodes drop what they already have by seq, so a second dispatch shows
nothing twice. An entry whose seq never reached the store was never
acknowledged (the writer died between the seq and the insert): it is dropped,
and RTMS nodes skip that seq after their gap deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from comment_service.dispatch import DispatchClient
from comment_service.recent import RecentCache
from livecomments import events
from livecomments.errors import LiveCommentsError
from livecomments.sequencer import outbox_key
from livecomments.store import Store

log = logging.getLogger(__name__)

# KEYS[1] the outbox. ARGV: entries older than this (ms), how many, lease (ms).
_CLAIM = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
                       'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]) - tonumber(ARGV[1]), member)
end
return due
"""


class Outbox:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        store: Store,
        dispatcher: DispatchClient,
        recent: RecentCache,
        *,
        age: float = 2.0,
        interval: float = 1.0,
        batch: int = 500,
    ) -> None:
        self._redis = redis
        self._key = outbox_key(prefix)
        self._store = store
        self._dispatcher = dispatcher
        self._recent = recent
        self._age_ms = int(age * 1000)
        self._interval = interval
        self._batch = batch
        self._claim = redis.register_script(_CLAIM)
        self._task: asyncio.Task[None] | None = None
        self.redispatched = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except (LiveCommentsError, RedisError) as exc:
                log.warning("outbox sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Dispatch what is overdue; how many events were sent again."""
        lease_ms = 5000  # retried after this long if this replica dies mid-sweep
        claimed = await self._claim(keys=[self._key], args=[self._age_ms, self._batch, lease_ms])
        if not claimed:
            return 0
        wanted: dict[str, set[int]] = defaultdict(set)
        for raw in claimed:
            video, _, seq = (raw.decode() if isinstance(raw, bytes) else str(raw)).rpartition("|")
            if video and seq.isdigit():
                wanted[video].add(int(seq))
        batch, sent = [], []
        for video, seqs in wanted.items():
            docs = await self._store.comments_by_seq(video, min(seqs), max(seqs))
            for doc in docs:
                if doc["seq"] in seqs:
                    event = events.replay_event(doc)
                    if event is not None:
                        batch.append(event)
                        sent.append(doc)
        if batch:
            await self._dispatcher.dispatch(batch)
            self.redispatched += len(batch)
            log.info("outbox: dispatched %d overdue events again", len(batch))
        await self._recent.settle(sent)  # the entries that were in the store
        await self._redis.zrem(self._key, *claimed)  # and the ones that never got there
        return len(batch)
