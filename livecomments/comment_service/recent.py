"""The recent-comments cache: the newest events of each video, in Redis.

History pages are seq ranges. The first page (newest first) and short-polling
clients (``?after=``, near the head) ask for the newest seqs, which are exactly
what this cache holds, so they are answered from one Redis call without the
store (during a viral moment that is most reads). Anything the cache cannot
answer with certainty goes to the store, as before.

One sorted set per video, scored by seq, capped at ``size`` entries and
expiring ``ttl`` after its last write, beside a reply index (see ``recent_settle.lua``)
so that a page reads only its own range plus a few replies per comment: a
history request costs O(limit), never the whole cached range. A comment's entry is its public JSON
(``events.comment_json``); a change marker's is a small stub that keeps the
range contiguous, and the changed comment's entry is replaced by the marker's
snapshot (newer ``rev`` wins, whatever order the writes land in).

Entries are written once the event has been dispatched, in the same Redis call
that removes the seq's outbox entry (see ``outbox.py``; the outbox sweep does the
same for what it sends again). So for any seq missing from the cache:
- if its outbox entry exists, it is in flight (taken, not yet stored, cached or
  dispatched): an oldest-first page stops just before it, so a short-polling
  client never steps over a comment that is about to appear (the store path
  does the same);
- otherwise the cache is not complete there (trimmed, Redis restarted, or a
  writer died and the seq was never stored): the page is read from the store.
Writing after the dispatch keeps the cache off the live path: a comment costs
no Redis round trip between its insert and its delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.kernel import events
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.direct import DirectScripts
from livecomments.kernel.redis.keys import Keys, outbox_member, reply_member
from livecomments.kernel.sequencer import Sequencer

log = logging.getLogger(__name__)

REPLY_PREVIEW = 3  # replies listed under each comment of a history page


@dataclass(frozen=True, slots=True)
class Window:
    """What the cache knows about a requested range ``lo..hi``."""

    head: int  # -1: no counter in Redis (the store decides)
    lo: int
    hi: int
    busy: int  # the lowest seq in lo..hi that is in flight (0: none)
    holes: int  # seqs in lo..hi the cache lacks that are not in flight
    # seq -> JSON, for lo..hi only. A top-level comment with cached replies also
    # carries ``reply_count`` and ``replies`` (its first REPLY_PREVIEW, oldest first).
    entries: dict[int, dict[str, Any]]
    epoch: int = 0  # the video's counter's epoch


class RecentCache:
    def __init__(
        self,
        redis: Redis,
        sequencer: Sequencer,
        prefix: str,
        size: int,
        ttl: float,
        direct: DirectScripts | None = None,
    ):
        self._keys = Keys(prefix)
        self._sequencer = sequencer
        self._size = size
        self._ttl_ms = int(ttl * 1000)
        # Every published post is settled: on a connection of its own when given.
        self._settle = (
            direct("recent_settle") if direct else scripts.register(redis, "recent_settle")
        )
        self._range = scripts.register(redis, "recent_range")
        self.enabled = size > 0
        # Entries read from Redis by history pages (range and previews): what a
        # page costs, whatever the size of the cache (shown in /healthz).
        self.entries_read = 0

    def key(self, video_id: str) -> str:
        # "recent2": entries cached before the reply index existed have no index
        # members, so that cache is left to expire and this one starts empty.
        return self._keys.recent(video_id)

    def replies_key(self, video_id: str) -> str:
        """The video's reply index (see ``recent_settle.lua``)."""
        return self._keys.recent_replies(video_id)

    async def settle(self, docs: list[dict[str, Any]]) -> list[None]:
        """Dispatched: cache the stored comments and markers, and clear their outbox entries.

        A failure leaves the entries to the outbox sweep, which sends them again
        and settles them then; until it does, readers stop before them.
        """
        if not docs:
            return []
        keys: list[str] = [self._sequencer.outbox_key or ""]
        args: list[Any] = [self._size, self._ttl_ms]
        for doc in docs:
            video_id, seq = doc["video_id"], doc["seq"]
            keys += [self.key(video_id), self.replies_key(video_id)]
            if doc.get("marker"):
                stub = orjson.dumps({"marker": doc["marker"], "seq": seq})  # members differ
                snapshot = doc.get("snapshot") or {}
                target, parent = doc.get("target_seq") or 0, snapshot.get("parent_id")
                member = reply_member(parent, target) if target and parent is not None else ""
                args += [seq, stub, 0, "", target, orjson.dumps(snapshot), member]
            else:
                parent = doc.get("parent_id")
                member = reply_member(parent, seq) if parent is not None else ""
                json = orjson.dumps(events.comment_json(doc))
                args += [seq, json, doc.get("rev", 0), member, 0, b"", ""]
            args.append(outbox_member(video_id, seq))
        try:
            await self._settle(keys=keys, args=args)
        except RedisError as exc:
            log.warning("events dispatched but not settled (the outbox sweep will): %s", exc)
        return [None] * len(docs)

    async def window(
        self, video_id: str, *, after: int | None, before: int | None, limit: int
    ) -> Window | None:
        """The cache's view of the page asked for; None if Redis cannot say."""
        keys = [
            self.key(video_id),
            *self._sequencer.keys(video_id),
            self._sequencer.outbox_key or "",
            self.replies_key(video_id),
        ]
        mode, cursor = ("after", after) if after is not None else ("before", before or 0)
        try:
            head, lo, hi, busy, holes, rows, previews, epoch = await self._range(
                keys=keys, args=[mode, cursor, limit, video_id, REPLY_PREVIEW]
            )
        except RedisError as exc:
            log.warning("recent-comments cache unreadable: %s", exc)
            return None
        entries: dict[int, dict[str, Any]] = {}
        if self.enabled:
            for i in range(0, len(rows), 2):
                entries[int(rows[i + 1])] = orjson.loads(rows[i])
            for seq, count, *replies in previews:
                entry = entries.get(int(seq))
                if entry is not None:
                    entry["reply_count"] = int(count)
                    entry["replies"] = [orjson.loads(r) for r in replies]
                    self.entries_read += len(replies)
            self.entries_read += len(rows) // 2
        return Window(int(head), int(lo), int(hi), int(busy), int(holes), entries, int(epoch))
