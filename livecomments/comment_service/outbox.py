"""The outbox: every sequenced event is dispatched at least once, even if its writer dies.

The sequencer enters ``{video}|{seq}`` (``keys.outbox_member``) in a Redis sorted
set in the same step that hands out the seq, scored by time. The writer removes it
once a dispatcher has taken the event, in the call that adds the event to the
recent-comments cache (``recent.py``: "settled"). Every replica sweeps entries older
than ``age``: it leases them (re-scores them to now, so the other replicas skip them
for a while), reads the events from the store and dispatches them again. RTMS nodes
drop what they already have by seq, so a second dispatch shows nothing twice. An
event that some hosting node did not take (the dispatcher skipped or lost the node)
is not settled: its entry stays and it is sent again.

An entry whose seq is not in the store may still be written: its writer may be
slow or paused, not dead. So it is kept, and only once it has been missing for
``fence_after`` is the seq *fenced*: a void document is written at
``(video_id, seq)`` under the unique index (``Store.fence``). Either the void or
the writer's insert wins; a writer that loses takes another seq and never
acknowledges the fenced one. Only then is the entry dropped. RTMS nodes that
wait on a gap fence it the same way (``livecomments/rtms/recovery.py``), and skip only voids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.comment_service.dispatch import DispatchClient
from livecomments.comment_service.recent import RecentCache
from livecomments.kernel import events
from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.logs import about
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.keys import Keys, parse_outbox_member
from livecomments.kernel.store import Store

log = logging.getLogger(__name__)


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
        fence_after: float = 5.0,
    ) -> None:
        self._redis = redis
        keys = Keys(prefix)
        self._key = keys.outbox()
        self._store = store
        self._dispatcher = dispatcher
        self._recent = recent
        self._age_ms = int(age * 1000)
        self._interval = interval
        self._batch = batch
        self._claim = scripts.register(redis, "outbox_claim")
        self._missing = scripts.register(redis, "outbox_missing")
        self._missing_key = keys.outbox_missing()
        self._fence_after_ms = int(fence_after * 1000)
        self._task: asyncio.Task[None] | None = None
        self.redispatched = 0
        self.fenced = 0  # seqs this replica voided
        # The outbox (all replicas') as of the last sweep, for /metrics: its entries,
        # and the age of the oldest score (made, or last leased by a sweep).
        self.depth = 0
        self.oldest_age = 0.0

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
            try:
                await self.measure()
            except RedisError as exc:
                log.warning("measuring the outbox failed: %s", exc)

    async def measure(self) -> None:
        """The outbox's depth and the age of its oldest entry (one round trip)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._key)
            pipe.zrange(self._key, 0, 0, withscores=True)
            pipe.time()
            depth, oldest, (seconds, micros) = await pipe.execute()
        self.depth = int(depth)
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        self.oldest_age = max(0.0, (now_ms - float(oldest[0][1])) / 1000) if oldest else 0.0

    async def sweep(self) -> int:
        """Dispatch what is overdue; how many events were sent again."""
        lease_ms = 5000  # retried after this long if this replica dies mid-sweep
        claimed = await self._claim(keys=[self._key], args=[self._age_ms, self._batch, lease_ms])
        if not claimed:
            return 0
        wanted: dict[str, dict[int, str]] = defaultdict(dict)
        done: list[str] = []  # entries to drop: voided, or nothing to send
        for raw in claimed:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            entry = parse_outbox_member(member)
            if entry is not None:
                video, seq = entry
                wanted[video][seq] = member
            else:
                done.append(member)
        batch: list[pb.Event] = []
        sent: list[dict[str, Any]] = []
        missing: dict[str, dict[int, str]] = defaultdict(dict)
        for video, seqs in wanted.items():
            found = {d["seq"]: d for d in await self._store.comments_at(video, list(seqs))}
            for number, member in seqs.items():
                doc = found.get(number)
                if doc is None:
                    missing[video][number] = member
                    continue
                event = events.replay_event(doc)
                if event is None:
                    done.append(member)  # a void: nothing to send
                else:
                    batch.append(event)
                    sent.append(doc)
        if missing:
            done += await self._fence_overdue(missing)
        settled = sent
        if batch:
            reply = await self._dispatcher.dispatch(batch)
            self.redispatched += len(batch)
            log.info("outbox: dispatched %d overdue events again", len(batch))
            if reply.undelivered:
                undelivered = set(reply.undelivered)
                settled = [doc for i, doc in enumerate(sent) if i not in undelivered]
        await self._recent.settle(settled)  # cached, and out of the outbox
        if done:
            await self._redis.zrem(self._key, *done)
            await self._redis.zrem(self._missing_key, *done)
        return len(batch)

    async def _fence_overdue(self, missing: dict[str, dict[int, str]]) -> list[str]:
        """Fence the seqs missing from the store for ``fence_after``; their entries, to drop."""
        members = [m for seqs in missing.values() for m in seqs.values()]
        found = await self._missing(keys=[self._missing_key], args=members)
        ages = dict(zip(members, found, strict=True))
        done: list[str] = []
        for video, seqs in missing.items():
            overdue = [seq for seq, m in seqs.items() if int(ages[m]) >= self._fence_after_ms]
            if not overdue:
                continue
            fenced = await self._store.fence(video, overdue)
            self.fenced += fenced
            log.warning(
                "outbox: %s seqs %s never reached the store; fenced", video, overdue,
                extra=about(video),
            )  # fmt: skip
            for doc in await self._store.comments_at(video, overdue):
                if doc.get("void"):  # else the writer won the race: sent on the next sweep
                    done.append(seqs[doc["seq"]])
        return done
