"""The recent-comments cache: the newest events of each video, in Redis.

History pages are seq ranges. The first page (newest first) and short-polling
clients (``?after=``, near the head) ask for the newest seqs, which are exactly
what this cache holds, so they are answered from one Redis call without the
store (during a viral moment that is most reads). Anything the cache cannot
answer with certainty goes to the store, as before.

One sorted set per video, scored by seq, capped at ``size`` entries and
expiring ``ttl`` after its last write, beside a reply index (see ``_SETTLE``)
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
from livecomments.kernel.sequencer import Sequencer, video_key

log = logging.getLogger(__name__)

REPLY_PREVIEW = 3  # replies listed under each comment of a history page

# Lua helper: a decimal string (an id or a seq) zero-padded to 20 digits, so the
# reply index sorts by parent, then by seq (ids are strings: no float rounding).
_PAD = """
local function pad(s) s = tostring(s); return string.rep('0', 20 - #s) .. s end
"""

# KEYS[1] the outbox (or ''), then per entry its video's cache key and reply
# index key. ARGV[1] size, ARGV[2] ttl ms, then per entry: seq, JSON, rev, its
# reply-index member ('' unless a reply), target seq (0: none), the target's
# JSON, the target's reply-index member, the outbox member. An entry replaces
# another at the same seq only when its rev is higher (the stored text never
# goes backwards).
#
# The reply index (one sorted set per video, every score 0, members
# "{parent id}|{reply seq}", both padded) lists the cached replies by parent, so
# a history page finds a comment's reply count and first replies in O(log n)
# instead of reading every newer entry. It holds a member exactly while the
# cache holds that reply's entry: members are added with the entry and removed
# when the entry is trimmed.
_SETTLE = (
    _PAD
    + """
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local function put(key, idx, seq, value, rev, member)
  local old = redis.call('ZRANGEBYSCORE', key, seq, seq)
  local keep = false
  if old[1] then
    local ok, cur = pcall(cjson.decode, old[1])
    keep = ok and type(cur) == 'table' and (tonumber(cur.rev) or 0) >= rev
    if not keep then redis.call('ZREMRANGEBYSCORE', key, seq, seq) end
  end
  if not keep then redis.call('ZADD', key, seq, value) end
  if member ~= '' then redis.call('ZADD', idx, 0, member) end
end
for e = 1, (#KEYS - 1) / 2 do
  local a = 2 + (e - 1) * 8
  local key, idx = KEYS[2 * e], KEYS[2 * e + 1]
  put(key, idx, tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4])
  local target = tonumber(ARGV[a + 5])
  if target > 0 then
    local ok, snap = pcall(cjson.decode, ARGV[a + 6])
    put(key, idx, target, ARGV[a + 6], ok and tonumber(snap.rev) or 0, ARGV[a + 7])
  end
  if size > 0 then
    local extra = redis.call('ZCARD', key) - size
    if extra > 0 then
      local gone = redis.call('ZRANGE', key, 0, extra - 1, 'WITHSCORES')
      for i = 1, #gone, 2 do
        local ok, old = pcall(cjson.decode, gone[i])
        if ok and type(old) == 'table' and type(old.parent_id) == 'string' then
          redis.call('ZREM', idx, pad(old.parent_id) .. '|' .. pad(gone[i + 1]))
        end
      end
      redis.call('ZREMRANGEBYRANK', key, 0, extra - 1)
    end
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', idx, ttl)
  else
    redis.call('DEL', key, idx)
  end
  if KEYS[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[a + 8]) end
end
return (#KEYS - 1) / 2
"""
)

# KEYS: 1 cache, 2 seq counter, 3 epoch, 4 outbox (or ''), 5 reply index. ARGV:
# 1 'after' or 'before', 2 the cursor (before: the first seq not wanted; 0 =
# above the head), 3 limit, 4 video id, 5 replies previewed per comment.
# Returns {head, lo, hi, first in-flight seq (0: none), missing seqs not in
# flight, entries of lo..hi (JSON, seq, ...), previews, epoch}; head is -1 when the
# video has no counter in Redis. Each preview is {seq of a top-level comment in
# lo..hi, its cached reply count, the JSON of its first replies...}.
#
# Everything here is bounded by the limit: the range read (hi - lo < limit),
# the holes loop, and per top-level comment one count and ARGV[5] lookups.
_RANGE = (
    _PAD
    + """
local epoch = redis.call('GET', KEYS[3])
if not epoch then return {-1, 0, 0, 0, 0, {}, {}, 0} end
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor, limit, preview = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local lo, hi
if ARGV[1] == 'after' then
  lo, hi = cursor + 1, math.min(cursor + limit, head)
else
  if cursor == 0 or cursor > head + 1 then cursor = head + 1 end
  lo, hi = math.max(1, cursor - limit), cursor - 1
end
local rows = {}
if hi >= lo then rows = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi, 'WITHSCORES') end
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
local previews = {}
if holes == 0 then
  for i = 1, #rows, 2 do
    local ok, c = pcall(cjson.decode, rows[i])
    if ok and type(c) == 'table' and type(c.id) == 'string' and c.parent_id == cjson.null then
      local from, to = '[' .. pad(c.id) .. '|', '(' .. pad(c.id) .. '}'
      local first = redis.call('ZRANGEBYLEX', KEYS[5], from, to, 'LIMIT', 0, preview)
      if first[1] then
        local out = {rows[i + 1], redis.call('ZLEXCOUNT', KEYS[5], from, to)}
        for _, m in ipairs(first) do
          local s = string.sub(m, 22)
          local r = redis.call('ZRANGEBYSCORE', KEYS[1], s, s)
          if r[1] then out[#out + 1] = r[1] end
        end
        previews[#previews + 1] = out
      end
    end
  end
end
return {head, lo, hi, busy, holes, rows, previews, tonumber(epoch)}
"""
)


def reply_member(parent_id: int | str, seq: int) -> str:
    """A reply's member in the reply index (``_SETTLE``'s format)."""
    return f"{int(parent_id):020d}|{int(seq):020d}"


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
    def __init__(self, redis: Redis, sequencer: Sequencer, prefix: str, size: int, ttl: float):
        self._prefix = prefix
        self._sequencer = sequencer
        self._size = size
        self._ttl_ms = int(ttl * 1000)
        self._settle = redis.register_script(_SETTLE)
        self._range = redis.register_script(_RANGE)
        self.enabled = size > 0
        # Entries read from Redis by history pages (range and previews): what a
        # page costs, whatever the size of the cache (shown in /healthz).
        self.entries_read = 0

    def key(self, video_id: str) -> str:
        # "recent2": entries cached before the reply index existed have no index
        # members, so that cache is left to expire and this one starts empty.
        return video_key(self._prefix, video_id, "recent2")

    def replies_key(self, video_id: str) -> str:
        """The video's reply index (see ``_SETTLE``)."""
        return video_key(self._prefix, video_id, "recent-replies")

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
                target, parent = doc["target_seq"], snapshot.get("parent_id")
                member = reply_member(parent, target) if parent is not None else ""
                args += [seq, stub, 0, "", target, orjson.dumps(snapshot), member]
            else:
                parent = doc.get("parent_id")
                member = reply_member(parent, seq) if parent is not None else ""
                json = orjson.dumps(events.comment_json(doc))
                args += [seq, json, doc.get("rev", 0), member, 0, b"", ""]
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
