"""Admitting posts in batches: one Redis call for all the posts that arrive together.

For each post, in arrival order, one Lua call (``admission_admit_many.lua``, in
livecomments/kernel/redis/scripts) runs the admission checks of ``lib_admit.lua``
(logout, bans, slow mode, duplicates, the posting buckets) and, when the post is
admitted and will be published, takes its video's next seq and outbox entry
(``lib_next_seq.lua``, as the sequencer does). A post used to cost two Redis
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

from livecomments.comment_service.limits import Limiter, PostLimits
from livecomments.kernel.batching import Batcher
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.redis import scripts
from livecomments.kernel.redis.direct import DirectScripts
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.stream import Position


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
    # The content filter's score in thousandths (-1: none), for the video's own hold
    # threshold (shield mode); the account's creation time in ms (0: not known),
    # for its minimum account age.
    score: int = -1
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str  # see lib_admit.lua
    ms: int
    seq: int  # 0: not asked for; -1: admitted, but the counter needs seeding first
    epoch: int

    @property
    def position(self) -> Position | None:
        """The post's place in the stream, if it was sequenced here."""
        return Position(self.epoch, self.seq) if self.seq > 0 else None


class Admission:
    def __init__(
        self,
        redis: Redis,
        limiter: Limiter,
        sequencer: Sequencer,
        limits: PostLimits,
        direct: DirectScripts | None = None,
    ) -> None:
        # Every post runs this script: on a connection of its own (see direct.py) when given.
        self._script = (
            direct("admission_admit_many")
            if direct
            else scripts.register(redis, "admission_admit_many")
        )
        self._limiter = limiter
        self._sequencer = sequencer
        # The limits are fixed for the process: their arguments, for both kinds of poster.
        self._args = {e: limiter.admission_args(limits, e) for e in (False, True)}
        self._batches: Batcher[Ticket, Verdict] = Batcher(self._run, max_batch=128)

    async def admit(self, ticket: Ticket) -> Verdict:
        """The verdict for ``ticket``; refusals are returned, not raised."""
        return await self._batches.submit(ticket)

    async def _run(self, tickets: list[Ticket]) -> list[Verdict]:
        # KEYS and ARGV as admission_admit_many.lua lays them out.
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
            args += [t.score, t.created_ms, 1 if t.sequence else 0, t.video_id]
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
