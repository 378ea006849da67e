"""The recent-comments cache: the newest events of each video, in Redis.

History pages are seq ranges. The first page (newest first) and short-polling
clients (``?after=``, near the head) ask for the newest seqs, which are exactly
what this cache holds, so they are answered from one Redis call without the
store (during a viral moment that is most reads). Anything the cache cannot
answer with certainty goes to the store, as before.

One sorted set per video, scored by seq, capped at ``size`` entries and
expiring ``ttl`` after its last write. A comment's entry is its public JSON
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

from livecomments import events
from livecomments.sequencer import Sequencer, video_key

log = logging.getLogger(__name__)

# KEYS[1] the outbox (or ''), then one cache key per entry. ARGV[1] size, ARGV[2]
# ttl ms, then per entry: seq, JSON, rev, target seq (0: none), the target's JSON,
# the outbox member. An entry replaces another at the same seq only when its rev
# is higher (the stored text never goes backwards).
_SETTLE = """
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local function put(key, seq, value, rev)
  local old = redis.call('ZRANGEBYSCORE', key, seq, seq)
  if old[1] then
    local ok, cur = pcall(cjson.decode, old[1])
    if ok and type(cur) == 'table' and (tonumber(cur.rev) or 0) >= rev then return end
    redis.call('ZREMRANGEBYSCORE', key, seq, seq)
  end
  redis.call('ZADD', key, seq, value)
end
for i = 2, #KEYS do
  local a = 2 + (i - 2) * 6
  local key = KEYS[i]
  put(key, tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]))
  local target = tonumber(ARGV[a + 4])
  if target > 0 then
    local ok, snap = pcall(cjson.decode, ARGV[a + 5])
    put(key, target, ARGV[a + 5], ok and tonumber(snap.rev) or 0)
  end
  if size > 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, -size - 1)
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('DEL', key)
  end
  if KEYS[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[a + 6]) end
end
return #KEYS - 1
"""

# KEYS: 1 cache, 2 seq counter, 3 epoch, 4 outbox (or ''). ARGV: 1 'after' or
# 'before', 2 the cursor (before: the first seq not wanted; 0 = above the head),
# 3 limit, 4 video id. Returns {head, lo, hi, first in-flight seq (0: none),
# missing seqs not in flight, entries from lo up (JSON, seq, ...), epoch}; head
# is -1 when the video has no counter in Redis.
_RANGE = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then return {-1, 0, 0, 0, 0, {}, 0} end
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local lo, hi
if ARGV[1] == 'after' then
  lo, hi = cursor + 1, math.min(cursor + limit, head)
else
  if cursor == 0 or cursor > head + 1 then cursor = head + 1 end
  lo, hi = math.max(1, cursor - limit), cursor - 1
end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], lo, '+inf', 'WITHSCORES')
local have = {}
for i = 2, #rows, 2 do have[tonumber(rows[i])] = true end
local busy, holes = 0, 0
for s = lo, hi do
  if not have[s] then
    if KEYS[4] ~= '' and redis.call('ZSCORE', KEYS[4], ARGV[4] .. '|' .. s) then
      if busy == 0 then busy = s end
    else
      holes = holes + 1
    end
  end
end
return {head, lo, hi, busy, holes, rows, tonumber(epoch)}
"""


@dataclass(frozen=True, slots=True)
class Window:
    """What the cache knows about a requested range ``lo..hi``."""

    head: int  # -1: no counter in Redis (the store decides)
    lo: int
    hi: int
    busy: int  # the lowest seq in lo..hi that is in flight (0: none)
    holes: int  # seqs in lo..hi the cache lacks that are not in flight
    entries: dict[int, dict[str, Any]]  # seq -> JSON, from lo up to the newest cached
    epoch: int = 0  # the video's counter's epoch


class RecentCache:
    def __init__(self, redis: Redis, sequencer: Sequencer, prefix: str, size: int, ttl: float):
        self._prefix = prefix
        self._sequencer = sequencer
        self._size = size
        self._ttl_ms = int(ttl * 1000)
        self._settle = redis.register_script(_SETTLE)
        self._range = redis.register_script(_RANGE)
        self.enabled = size > 0

    def key(self, video_id: str) -> str:
        return video_key(self._prefix, video_id, "recent")

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
            keys.append(self.key(video_id))
            if doc.get("marker"):
                stub = orjson.dumps({"marker": doc["marker"], "seq": seq})  # members differ
                args += [seq, stub, 0, doc["target_seq"], orjson.dumps(doc.get("snapshot") or {})]
            else:
                args += [seq, orjson.dumps(events.comment_json(doc)), doc.get("rev", 0), 0, b""]
            args.append(f"{video_id}|{seq}")
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
        ]
        mode, cursor = ("after", after) if after is not None else ("before", before or 0)
        try:
            head, lo, hi, busy, holes, rows, epoch = await self._range(
                keys=keys, args=[mode, cursor, limit, video_id]
            )
        except RedisError as exc:
            log.warning("recent-comments cache unreadable: %s", exc)
            return None
        entries: dict[int, dict[str, Any]] = {}
        if self.enabled:
            for i in range(0, len(rows), 2):
                entries[int(rows[i + 1])] = orjson.loads(rows[i])
        return Window(int(head), int(lo), int(hi), int(busy), int(holes), entries, int(epoch))
