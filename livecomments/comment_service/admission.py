"""Admitting posts in batches: one Redis call for all the posts that arrive together.

For each post, in arrival order, one Lua call runs the admission checks of
``limits.ADMIT_LUA`` (logout, bans, slow mode, duplicates, the posting buckets)
and, when the post is admitted and will be published, takes its video's next
seq and outbox entry (``sequencer.NEXT_LUA``). A post used to cost two Redis
round trips (admit, then sequence); redis-py's per-call overhead was a third of
the comment service's CPU at 1,500 posts/s. Concurrent posts now share one call
(``Batcher``: one call in flight, the rest queue for the next), so under load a
post costs a fraction of a call, and alone it costs one, with no added wait.

Posts of one batch are decided one after the other inside Redis, so two posts
of the same user in one batch meet the slow mode, duplicate mark and bucket
left by the first exactly as if they had come in two calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.comment_service.limits import (
    ADMIT_ARGS,
    ADMIT_KEYS,
    ADMIT_LUA,
    Limiter,
    PostLimits,
)
from livecomments.kernel.batching import Batcher
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.sequencer import NEXT_LUA, Sequencer

_KEYS = ADMIT_KEYS + 2  # + the video's seq counter and epoch
_ARGS = ADMIT_ARGS + 2  # + "sequence it" (1/0) and the video id

# KEYS[1] the outbox (or an empty string), then _KEYS per post; ARGV[1] the number
# of posts, then _ARGS per post. Returns verdict, ms, seq, epoch per post, flat;
# seq is 0 when not asked for and -1 when the counter needs seeding first.
_ADMIT_MANY = (
    ADMIT_LUA
    + NEXT_LUA
    + f"""
local outbox = KEYS[1] ~= '' and KEYS[1] or false
local out = {{}}
for p = 0, tonumber(ARGV[1]) - 1 do
  local k, a = 1 + p * {_KEYS}, 1 + p * {_ARGS}
  local K = {{unpack(KEYS, k + 1, k + {_KEYS})}}
  local A = {{unpack(ARGV, a + 1, a + {_ARGS})}}
  local verdict, ms = admit(K, A)
  local seq, epoch = 0, 0
  if verdict == 'ok' and A[{ADMIT_ARGS + 1}] == '1' then
    seq, epoch = next_seq(K[{ADMIT_KEYS + 1}], K[{ADMIT_KEYS + 2}], outbox, A[{ADMIT_ARGS + 2}])
  end
  out[p * 4 + 1] = verdict
  out[p * 4 + 2] = ms
  out[p * 4 + 3] = seq
  out[p * 4 + 4] = epoch
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class Ticket:
    """One post asking to be admitted."""

    user_id: int
    ip: str
    video_id: str
    text: str
    exempt: bool
    revoked_key: str
    sequence: bool  # take the video's next seq too (the post will be published)


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str  # see limits.ADMIT_LUA
    ms: int
    seq: int  # 0: not asked for; -1: admitted, but the counter needs seeding first
    epoch: int


class Admission:
    def __init__(
        self, redis: Redis, limiter: Limiter, sequencer: Sequencer, limits: PostLimits
    ) -> None:
        self._script = redis.register_script(_ADMIT_MANY)
        self._limiter = limiter
        self._sequencer = sequencer
        # The limits are fixed for the process: their arguments, for both kinds of poster.
        self._args = {e: limiter.admission_args(limits, e) for e in (False, True)}
        self._batches: Batcher[Ticket, Verdict] = Batcher(self._run, max_batch=128)

    async def admit(self, ticket: Ticket) -> Verdict:
        """The verdict for ``ticket``; refusals are returned, not raised."""
        return await self._batches.submit(ticket)

    async def _run(self, tickets: list[Ticket]) -> list[Verdict]:
        keys: list[str] = [self._sequencer.outbox_key or ""]
        args: list[Any] = [len(tickets)]
        limiter = self._limiter
        for t in tickets:
            keys += limiter.admission_keys(
                user_id=t.user_id,
                ip=t.ip,
                video_id=t.video_id,
                text=t.text,
                revoked_key=t.revoked_key,
            )
            keys += self._sequencer.keys(t.video_id)
            args += self._args[t.exempt]
            args += [1 if t.sequence else 0, t.video_id]
        try:
            flat = await self._script(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        verdicts = []
        for i in range(0, len(flat), 4):
            verdict = flat[i]
            verdicts.append(
                Verdict(
                    verdict.decode() if isinstance(verdict, bytes) else str(verdict),
                    int(flat[i + 1]),
                    int(flat[i + 2]),
                    int(flat[i + 3]),
                )
            )
        return verdicts
