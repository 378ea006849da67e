"""The write path (sequence, persist, then dispatch) and history pages."""

from __future__ import annotations

import logging
from typing import Any

from comment_service.auth import Principal
from comment_service.dispatch import DispatchClient
from livecomments import events
from livecomments.errors import Conflict, NotFound, Unavailable, ValidationError
from livecomments.ids import Snowflake
from livecomments.sequencer import Sequencer
from livecomments.store import Store, utcnow

log = logging.getLogger(__name__)


class Comments:
    def __init__(
        self, store: Store, sequencer: Sequencer, dispatcher: DispatchClient, ids: Snowflake
    ) -> None:
        self._store = store
        self._sequencer = sequencer
        self._dispatcher = dispatcher
        self.ids = ids
        self.dispatch_failures = 0

    async def post(
        self, author: Principal, video_id: str, text: str, parent_id: int | None
    ) -> dict[str, Any]:
        """Persist a comment, then dispatch it. Returns the stored document.

        Once this returns, the comment is durable: if the dispatch fails, RTMS
        nodes still find it in the store when they notice the seq gap.
        """
        if parent_id is not None:
            parent = await self._store.get_comment(video_id, parent_id)
            if parent is None:
                raise NotFound("the parent comment does not exist", code="parent_not_found")
            if parent.get("parent_id") is not None:
                raise ValidationError(
                    "replies can only answer top-level comments", code="nested_reply"
                )
        now = utcnow()
        doc: dict[str, Any] = {
            "_id": self.ids.next_id(),
            "video_id": video_id,
            "user_id": author.user_id,
            "author": author.username,
            "text": text,
            "parent_id": parent_id,
            "status": events.STATUS_VISIBLE,
            "created_at": now,
            "created_at_ms": int(now.timestamp() * 1000),
            "edited_at": None,
            "reactions": {},
        }
        for _ in range(5):
            doc["seq"], doc["epoch"] = await self._sequencer.next(video_id)
            try:
                await self._store.insert_comment(doc)
                break
            except Conflict:
                # The counter is behind the store (Redis came back from an older
                # snapshot): move it past the highest stored seq and try again.
                log.warning("seq %d of %s already stored; re-seeding", doc["seq"], video_id)
                await self._sequencer.advance(video_id, await self._store.max_seq(video_id))
        else:
            raise Unavailable("could not assign a sequence number")
        await self._dispatch(doc)
        return doc

    async def _dispatch(self, doc: dict[str, Any]) -> None:
        try:
            await self._dispatcher.dispatch([events.comment_event(doc)])
        except Unavailable as exc:
            self.dispatch_failures += 1
            log.error("comment %s stored but not dispatched: %s", doc["_id"], exc)

    async def page(
        self, video_id: str, *, before: int | None, after: int | None, limit: int
    ) -> dict[str, Any]:
        """A page of history by seq range; newest first (``before``) or oldest first (``after``)."""
        head_info = await self._sequencer.head(video_id)
        head = head_info[0] if head_info else await self._store.max_seq(video_id)
        if after is not None:
            lo, hi = after + 1, min(after + limit, head)
            docs = await self._store.comments_by_seq(video_id, lo, hi)
            next_after = hi if hi < head else None
            cursor: dict[str, Any] = {"next_after": next_after}
        else:
            top = min(before if before is not None else head + 1, head + 1)
            lo, hi = max(1, top - limit), top - 1
            docs = await self._store.comments_by_seq(video_id, lo, hi)
            docs.reverse()
            cursor = {"next_before": lo if lo > 1 else None}
        items = [events.comment_json(d) for d in docs if d.get("status") != events.STATUS_HELD]
        return {"video_id": video_id, "items": items, "head": head, **cursor}
