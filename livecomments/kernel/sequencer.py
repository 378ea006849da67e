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
from livecomments.kernel.stream import Position

if TYPE_CHECKING:
    from livecomments.kernel.store import Store

# The next seq of a video, as a Lua function so that other scripts (the comment
# service's batched admission) can take a seq in the same step. Arguments: the seq
# counter key, the epoch key, the outbox key (or false) and the video id. Returns
# seq, epoch, or -1, 0 when the counter has to be (re)seeded first. The outbox
# entry is made in the same step as the seq: whatever happens to the writer
# afterwards, a seq that reaches the store is also in the outbox until it has
# been dispatched (see livecomments/comment_service/outbox.py).
NEXT_LUA = """
local function next_seq(seq_key, epoch_key, outbox_key, video)
  local epoch = redis.call('GET', epoch_key)
  if not epoch then return -1, 0 end
  local seq = redis.call('INCR', seq_key)
  if outbox_key then
    local t = redis.call('TIME')
    redis.call('ZADD', outbox_key, t[1] * 1000 + math.floor(t[2] / 1000), video .. '|' .. seq)
  end
  return seq, tonumber(epoch)
end
"""

# KEYS[1] seq counter, KEYS[2] epoch, KEYS[3] the outbox (or none). ARGV[1] the video id.
_NEXT = (
    NEXT_LUA
    + """
local seq, epoch = next_seq(KEYS[1], KEYS[2], KEYS[3] or false, ARGV[1])
return {seq, epoch}
"""
)

# ARGV[1] the store's highest seq, ARGV[2] the new epoch. Only the first seeder wins.
_SEED = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""

# ARGV[1] a seq known to be taken: never hand it (or anything below it) out again.
_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS[1] seq counter, KEYS[2] epoch, KEYS[3] the outbox. ARGV[1] the video id,
# ARGV[2] how many seqs below the head to look at. Returns {settled, epoch, head}:
# settled is one below the lowest of those seqs still in flight (taken, not yet
# stored and dispatched), the head when none is; {-1, 0, 0} without a counter.
_SETTLED_HEAD = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {-1, 0, 0} end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local settled = head
for s = math.max(1, head - tonumber(ARGV[2]) + 1), head do
  if redis.call('ZSCORE', KEYS[3], ARGV[1] .. '|' .. s) then
    settled = s - 1
    break
  end
end
return {settled, tonumber(epoch), head}
"""


def video_key(prefix: str, video_id: str, name: str) -> str:
    # The hash tag keeps a video's keys in one Redis Cluster slot.
    return f"{prefix}v:{{{video_id}}}:{name}"


def outbox_key(prefix: str) -> str:
    # One key for every video, so one sweep finds them all. (On Redis Cluster
    # this would want one outbox per slot, and the Lua calls that touch both it and a
    # video's keys would have to be split: not supported yet.)
    return f"{prefix}outbox"


class Sequencer:
    def __init__(
        self, redis: Redis, prefix: str, store: Store | None = None, *, outbox: bool = False
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._store = store
        self.outbox_key = outbox_key(prefix) if outbox else None
        self._next = redis.register_script(_NEXT)
        self._seed = redis.register_script(_SEED)
        self._advance = redis.register_script(_ADVANCE)
        self._settled_head = redis.register_script(_SETTLED_HEAD)

    def keys(self, video_id: str) -> list[str]:
        """The video's counter and epoch keys (for scripts that take a seq themselves)."""
        return [
            video_key(self._prefix, video_id, "seq"),
            video_key(self._prefix, video_id, "epoch"),
        ]

    async def next(self, video_id: str) -> tuple[int, int]:
        """``(seq, epoch)`` for the next event of ``video_id`` (entered in the outbox too)."""
        keys = self.keys(video_id)
        if self.outbox_key:
            keys.append(self.outbox_key)
        try:
            for _ in range(3):
                seq, epoch = await self._next(keys=keys, args=[video_id])
                if seq > 0:
                    return int(seq), int(epoch)
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
        keys = [*self.keys(video_id), outbox_key(self._prefix)]
        try:
            settled, epoch, _head = await self._settled_head(keys=keys, args=[video_id, scan])
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        if int(settled) < 0:
            return None
        return Position(int(epoch), int(settled))
