"""The write path (filter, admit, sequence, persist, then dispatch), changes and history.

Everything that reaches viewers takes the video's next seq and is stored
before it is dispatched: a comment, an approved comment, and an edit or a
delete (as a marker document, see ``events``). An acknowledged change is in
the store, so an RTMS node that misses its dispatch fills it from there.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError

from livecomments.comment_service.admission import Admission, Ticket
from livecomments.comment_service.auth import RANK, Principal
from livecomments.comment_service.dispatch import DispatchClient
from livecomments.comment_service.filter import ContentFilter, Verdict
from livecomments.comment_service.idempotency import Idempotency, fingerprint
from livecomments.comment_service.limits import Limiter
from livecomments.comment_service.pinned import PinnedCache
from livecomments.comment_service.policy import Policies
from livecomments.comment_service.recent import REPLY_PREVIEW, RecentCache
from livecomments.kernel import events
from livecomments.kernel.batching import Batcher
from livecomments.kernel.errors import (
    Conflict,
    LiveCommentsError,
    NotFound,
    Unavailable,
    ValidationError,
)
from livecomments.kernel.ids import Snowflake
from livecomments.kernel.logs import about
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.store import Store, utcnow
from livecomments.kernel.stream import Position

log = logging.getLogger(__name__)

DISPATCHES_IN_FLIGHT = 4  # Dispatch calls at once (each waits for its slowest node)


def _ignore(stage: str, seconds: float) -> None:
    pass


class Held(enum.Enum):
    HELD = "held"


HELD = Held.HELD  # admitted, to be held for review (the video's own hold threshold)
SHIELD_REASON = "shield_mode"  # the reason a comment held by the video's threshold gives


class ContentRefused(LiveCommentsError):
    code = "content_refused"
    status = 422


@dataclass(frozen=True, slots=True)
class Posted:
    doc: dict[str, Any]
    held: bool


def _log_posted(posted: Posted, request_id: str) -> None:
    """The comment service's line of a comment's trip (the dispatcher and RTMS log theirs)."""
    doc = posted.doc
    video_id, comment_id = doc["video_id"], str(doc["_id"])
    fields = {"video_id": video_id, "comment_id": comment_id, "request_id": request_id}
    if posted.held:
        log.info(
            "comment held: video %s comment %s request %s", video_id, comment_id, request_id,
            extra=fields,
        )  # fmt: skip
    else:
        seq = doc.get("seq")
        log.info(
            "comment accepted: video %s comment %s seq %s request %s",
            video_id, comment_id, seq, request_id, extra={**fields, "seq": seq},
        )  # fmt: skip


def _log_refused(video_id: str, request_id: str, exc: LiveCommentsError) -> None:
    log.info(
        "comment refused (%s): video %s request %s", exc.code, video_id, request_id,
        extra={"video_id": video_id, "request_id": request_id, "reason": exc.code},
    )  # fmt: skip


class Comments:
    def __init__(
        self,
        store: Store,
        sequencer: Sequencer,
        dispatcher: DispatchClient,
        ids: Snowflake,
        *,
        content_filter: ContentFilter,
        limiter: Limiter,
        policies: Policies,
        admission: Admission,
        recent: RecentCache,
        pins: PinnedCache,
        revoked_key: Callable[[str], str],
        idempotency: Idempotency | None = None,
        stage: Callable[[str, float], None] | None = None,
    ) -> None:
        self._store = store
        self._sequencer = sequencer
        self._dispatcher = dispatcher
        self.ids = ids
        self._filter = content_filter
        self._limiter = limiter
        self._policies = policies
        self._revoked_key = revoked_key
        self._admission = admission
        self._recent = recent
        self._pins = pins
        self._idempotency = idempotency
        # Where the write path's stages report their duration (admission, insert, dispatch).
        self._stage = stage or _ignore
        self._settled: Batcher[dict[str, Any], None] = Batcher(recent.settle, max_batch=1000)
        self.page_reads: Counter[str] = Counter()  # history pages answered by cache / store
        self.dispatch_failures = 0
        self.undelivered = 0  # dispatched, but some hosting node did not take it
        # Group commit: concurrent posts share one insert and one Dispatch call. A
        # Dispatch is answered once every node hosting its videos took them, so one
        # slow or far node (another region) would hold up every later comment behind
        # a single call: a few calls go at once (bench.regions, docs/benchmarks.md).
        self._inserts: Batcher[dict[str, Any], None] = Batcher(store.insert_comments)
        self._dispatches: Batcher[pb.Event, bool] = Batcher(
            self._dispatch_batch, in_flight=DISPATCHES_IN_FLIGHT
        )

    # -- posting --------------------------------------------------------------

    async def post(
        self,
        author: Principal,
        video_id: str,
        text: str,
        parent_id: int | None,
        ip: str,
        idempotency_key: str | None = None,
        request_id: str = "",
    ) -> Posted:
        """Filter, admit, then persist and dispatch a comment (or hold it for review).

        Once this returns, the comment is durable: if the dispatch fails, RTMS
        nodes still find it in the store when they notice the seq gap. With an
        ``idempotency_key``, a retry gets the first attempt's comment (see
        ``idempotency.py``). ``request_id`` is stored with the comment and travels
        with its event; the outcome is logged once, with it.
        """
        try:
            if idempotency_key is not None and self._idempotency is not None:
                posted = await self._post_once(
                    author, video_id, text, parent_id, ip, idempotency_key, request_id
                )
            else:
                posted = await self._post(
                    author, video_id, text, parent_id, ip, self.ids.next_id(), request_id
                )
        except LiveCommentsError as exc:
            if exc.status < 500 and log.isEnabledFor(logging.INFO):
                _log_refused(video_id, request_id, exc)
            raise
        if log.isEnabledFor(logging.INFO):
            _log_posted(posted, request_id)
        return posted

    async def _post_once(
        self,
        author: Principal,
        video_id: str,
        text: str,
        parent_id: int | None,
        ip: str,
        key: str,
        request_id: str,
    ) -> Posted:
        """``_post`` under an idempotency key: before anything else (the parent check,
        the filter, admission), a retry of a post that went through gets its answer."""
        assert self._idempotency is not None
        claim = await self._idempotency.claim(
            user_id=author.user_id,
            video_id=video_id,
            key=key,
            fingerprint=fingerprint(text, parent_id),
            new_id=self.ids.next_id(),
            revoked_key=self._revoked_key(author.token_id),
        )
        if claim.state == "done":
            found = await self._find_posted(video_id, claim.comment_id, held=claim.status == 202)
            if found is None:
                raise NotFound("the comment posted with this key is gone", code="comment_not_found")
            return found
        if claim.state == "resume":  # an earlier attempt failed or died: did it store it?
            found = await self._find_posted(video_id, claim.comment_id, held=None)
            if found is not None:
                await self._idempotency.finish(claim, ok=True, status=202 if found.held else 201)
                return found
        try:
            posted = await self._post(
                author, video_id, text, parent_id, ip, claim.comment_id, request_id
            )
        except Conflict as exc:
            # The same id stored meanwhile: an attempt we took over finished after all.
            found = None
            if exc.code == "duplicate_id":
                found = await self._find_posted(video_id, claim.comment_id, held=False)
            if found is None:
                await self._idempotency.finish(claim, ok=False, status=exc.status)
                raise
            posted = found
        except BaseException as exc:
            status = exc.status if isinstance(exc, LiveCommentsError) else 500
            await self._idempotency.finish(claim, ok=False, status=status)
            raise
        await self._idempotency.finish(claim, ok=True, status=202 if posted.held else 201)
        return posted

    async def _find_posted(
        self, video_id: str, comment_id: int, held: bool | None
    ) -> Posted | None:
        """The comment a keyed post made, published or held (``held=None``: either)."""
        if held is not True:
            doc = await self._store.get_comment(video_id, comment_id)
            if doc is not None:
                return Posted(doc, held=False)
        if held is not False:
            doc = await self._store.get_held(comment_id)
            if doc is not None and doc.get("video_id") == video_id:
                return Posted(doc, held=True)
        return None

    async def _still_moderator(self, author: Principal) -> bool:
        """Whether a token that says moderator (or admin) still speaks for one.

        A token keeps the role it was issued with; the exemptions from the filter,
        slow mode and duplicate suppression follow the user's role now, so a
        demoted moderator loses them at once. Only staff posts pay this read;
        a promoted user gets them with the next login's token.
        """
        user = await self._store.get_user(author.user_id)
        role = user.get("role") if user else None
        return role in RANK and RANK[role] >= RANK["moderator"]

    async def _post(
        self,
        author: Principal,
        video_id: str,
        text: str,
        parent_id: int | None,
        ip: str,
        comment_id: int,
        request_id: str,
    ) -> Posted:
        now = utcnow()  # accepted: the time the event carries (latency probes start here)
        if parent_id is not None:
            await self._check_parent(video_id, parent_id)
        exempt = author.at_least("moderator") and await self._still_moderator(author)
        verdict, score = (Verdict.PUBLISH, None) if exempt else self._filter.check(text)
        if verdict is Verdict.REFUSE:
            raise ContentRefused(
                "this comment was refused by the content filter",
                details={"reasons": list(score.reasons) if score else []},
            )
        started = time.perf_counter()
        position = await self._admit(
            Ticket(
                user_id=author.user_id,
                ip=ip,
                video_id=video_id,
                text=text,
                exempt=exempt,
                revoked_key=self._revoked_key(author.token_id),
                sequence=verdict is Verdict.PUBLISH,
                score=round(score.value * 1000) if score is not None else -1,
                created_ms=author.joined_ms,
            )
        )
        self._stage("admission", time.perf_counter() - started)
        if position is HELD:  # under the video's stricter threshold (shield mode)
            verdict = Verdict.HOLD
            assert score is not None
            score = replace(score, reasons=(*score.reasons, SHIELD_REASON))
            position = None
        doc: dict[str, Any] = {
            "_id": comment_id,
            "video_id": video_id,
            "user_id": author.user_id,
            "author": author.username,
            "text": text,
            "parent_id": parent_id,
            "status": events.STATUS_VISIBLE,
            "created_at": now,
            "created_at_ms": int(now.timestamp() * 1000),
            "edited_at": None,
            "rev": 0,
            "reactions": {},
        }
        if request_id:
            doc["request_id"] = request_id  # an outbox re-dispatch sends it again
        try:
            if verdict is Verdict.HOLD:
                assert score is not None
                held = {**doc, "status": events.STATUS_HELD, "state": "pending"}
                held.update(score=score.value, reasons=list(score.reasons))
                await self._store.insert_held(held)
                return Posted(held, held=True)
            await self._publish(doc, position)
        except Unavailable:
            await self._limiter.release_post(author.user_id, video_id, text)
            raise
        return Posted(doc, held=False)

    async def _check_parent(self, video_id: str, parent_id: int) -> None:
        parent = await self._store.get_comment(video_id, parent_id)
        if parent is None:
            raise NotFound("the parent comment does not exist", code="parent_not_found")
        if parent.get("parent_id") is not None:
            raise ValidationError("replies can only answer top-level comments", code="nested_reply")
        if parent.get("status") == events.STATUS_DELETED:
            raise Conflict("the parent comment was deleted", code="parent_deleted")

    async def _admit(self, ticket: Ticket) -> Position | Held | None:
        """Admit the post or raise its refusal; its position if one was asked for, or
        ``HELD`` when the video's own hold threshold (shield mode) holds it."""
        for _ in range(4):
            admitted = await self._admission.admit(ticket)
            if admitted.verdict == "ok":
                if not ticket.sequence:
                    return None
                if admitted.position is not None:
                    return admitted.position
                return await self._sequencer.next(ticket.video_id)  # seeds the counter
            if admitted.verdict == "held":
                return HELD
            if admitted.verdict == "load_bans":
                await self._policies.load_bans()
            elif admitted.verdict == "load_settings":
                await self._policies.load_video_settings()
            elif admitted.verdict == "load_account":  # a token from before the claim
                user = await self._store.get_user(ticket.user_id)
                created = (user or {}).get("created_at")
                ticket = replace(ticket, created_ms=events.epoch_ms(created) if created else 1)
            else:
                raise self._limiter.refusal(admitted.verdict, admitted.ms)
        raise Unavailable("could not load the video's settings into Redis")

    async def _publish(self, doc: dict[str, Any], position: Position | None = None) -> None:
        started = time.perf_counter()
        await self._sequence(doc, position)
        if doc.get("parent_id") is not None:
            await self._store.count_reply(doc["video_id"], doc["parent_id"])
        stored = time.perf_counter()
        self._stage("insert", stored - started)
        await self._dispatch(events.comment_event(doc), doc)
        self._stage("dispatch", time.perf_counter() - stored)

    async def _sequence(self, doc: dict[str, Any], position: Position | None = None) -> None:
        """Give ``doc`` the video's next seq (or ``position``, taken at admission) and store it."""
        video_id = doc["video_id"]
        for _ in range(5):
            if position is None:
                position = await self._sequencer.next(video_id)
            doc["seq"], doc["epoch"], position = position.seq, position.epoch, None
            try:
                await self._inserts.submit(doc)
                return
            except Conflict as exc:
                if exc.code != "seq_conflict":
                    raise
                # The seq was fenced (this writer was so late that a node or the
                # outbox sweep gave up on it: never acknowledge it, take another),
                # or the counter is behind the store (Redis came back from an
                # older snapshot): move it past the highest stored seq, try again.
                log.warning(
                    "seq %d of %s fenced or already stored", doc["seq"], video_id,
                    extra=about(video_id, doc["_id"]),
                )  # fmt: skip
                await self._sequencer.advance(video_id, await self._store.max_seq(video_id))
        raise Unavailable("could not assign a sequence number")

    async def _dispatch_batch(self, batch: list[pb.Event]) -> list[bool]:
        """One Dispatch for the batch; per event, whether every hosting node took it."""
        reply = await self._dispatcher.dispatch(batch)
        delivered = [True] * len(batch)
        for index in reply.undelivered:
            if index < len(delivered):
                delivered[index] = False
        return delivered

    async def _dispatch(self, event: pb.Event, doc: dict[str, Any]) -> None:
        try:
            delivered = await self._dispatches.submit(event)
        except Unavailable as exc:
            # Stored, so acknowledged all the same: the outbox sweep sends it later.
            self.dispatch_failures += 1
            log.error(
                "%s seq %d stored but not dispatched: %s", event.video_id, event.seq, exc,
                extra={
                    "video_id": event.video_id,
                    "comment_id": str(event.comment_id),
                    "request_id": event.request_id,
                },
            )  # fmt: skip
            return
        if not delivered:
            # A hosting node was skipped or failed: leave the outbox entry, so the
            # sweep sends it again (the node also reconciles its heads itself).
            self.undelivered += 1
            return
        await self._settled.submit(doc)  # cached, and out of the outbox

    # -- changes ----------------------------------------------------------------

    async def get(self, video_id: str, comment_id: int) -> dict[str, Any]:
        doc = await self._store.get_comment(video_id, comment_id)
        if doc is None:
            raise NotFound("no such comment", code="comment_not_found")
        return doc

    async def edit(
        self, actor: Principal, video_id: str, comment_id: int, text: str, *, request_id: str = ""
    ) -> dict[str, Any]:
        changes = {"text": text, "edited_at": utcnow(), "edited_by": actor.user_id}
        doc = await self._store.update_comment(video_id, comment_id, changes, unless_deleted=True)
        if doc is None:
            await self.get(video_id, comment_id)  # 404 when it does not exist at all
            raise Conflict("a deleted comment cannot be edited", code="comment_deleted")
        await self._pins.edited(doc)
        await self._announce(actor, doc, "comment.updated", request_id)
        return doc

    async def delete(
        self, actor: Principal, doc: dict[str, Any], *, request_id: str = ""
    ) -> dict[str, Any]:
        """Tombstone ``doc`` (permission already checked); deleting twice changes nothing
        (but finishes the unpinning of a delete that failed after its tombstone)."""
        if doc.get("status") == events.STATUS_DELETED:
            await self._unpin_deleted(actor, doc, request_id)
            return doc
        changes = {
            "status": events.STATUS_DELETED,
            "deleted_at": utcnow(),
            "deleted_by": actor.user_id,
        }
        updated = await self._store.update_comment(
            doc["video_id"], doc["_id"], changes, unless_deleted=True
        )
        if updated is None:
            return await self.get(doc["video_id"], doc["_id"])  # someone else deleted it
        await self._announce(actor, updated, "comment.deleted", request_id)
        await self._unpin_deleted(actor, updated, request_id)
        return updated

    async def _unpin_deleted(
        self, actor: Principal, tombstone: dict[str, Any], request_id: str
    ) -> None:
        """A deleted comment is unpinned: after the tombstone, so that a pin racing the
        delete, which checks the comment after it pinned (``pin``), sees one or the other.
        The Redis copy first takes the tombstone if it holds this comment: no first page
        shows the deleted text, even if what follows fails."""
        await self._pins.edited(tombstone)
        if await self._store.clear_pin(tombstone["video_id"], tombstone["_id"]) is not None:
            await self._pin_copy(tombstone["video_id"], None)
            await self._announce(actor, tombstone, "unpinned", request_id)

    # -- the pinned comment ---------------------------------------------------------
    #
    # One per video, kept in its ``videos`` document (the truth a first page reads)
    # and announced as a sequenced marker (what viewers see, in order, resumable).
    # The document is written before the marker takes its seq, and a first page
    # reads it after it took its ``resume``: so a page never says less than the
    # markers up to its resume did, and the stream replays the later ones.

    async def pinned(self, video_id: str) -> dict[str, Any] | None:
        """The public JSON of the pinned comment of ``video_id``, or None (see ``pinned.py``)."""
        return await self._pins.get(video_id, lambda: self._stored_pin(video_id))

    async def _stored_pin(self, video_id: str) -> dict[str, Any] | None:
        """The pinned comment of ``video_id`` as the store has it, or None."""
        pin = (await self._store.video_settings(video_id)).get("pinned")
        if not pin:
            return None
        doc = await self._store.get_comment(video_id, pin["comment_id"])
        if doc is None or doc.get("status") == events.STATUS_DELETED:
            return None  # deleted meanwhile: its delete unpins it
        return doc

    async def pin(
        self, actor: Principal, video_id: str, comment_id: int, *, request_id: str = ""
    ) -> dict[str, Any]:
        """Pin a visible comment (replacing the video's pin); viewers get ``pinned``."""
        doc = await self.get(video_id, comment_id)
        if doc.get("status") == events.STATUS_DELETED:
            raise Conflict("a deleted comment cannot be pinned", code="comment_deleted")
        now = utcnow()
        await self._store.set_pin(
            video_id, {"comment_id": comment_id, "by": actor.user_id, "at": now}
        )
        # A delete that tombstoned it meanwhile may have looked for the pin before
        # it was set: look again, now that the pin is written.
        doc = await self.get(video_id, comment_id)
        if doc.get("status") == events.STATUS_DELETED:
            if await self._store.clear_pin(video_id, comment_id) is not None:
                await self._pin_copy(video_id, None)
            raise Conflict("a deleted comment cannot be pinned", code="comment_deleted")
        await self._pin_copy(video_id, doc)
        await self._announce(actor, doc, "pinned", request_id)
        return doc

    async def _pin_copy(self, video_id: str, doc: dict[str, Any] | None) -> None:
        try:
            await self._pins.put(video_id, doc)
        except RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    async def unpin(self, actor: Principal, video_id: str, *, request_id: str = "") -> bool:
        """Unpin the video's comment; False if none was pinned. Viewers get ``unpinned``."""
        pin = await self._store.clear_pin(video_id)
        await self._pin_copy(video_id, None)  # also after a retry of an unpin that failed here
        if pin is None:
            return False
        doc = await self._store.get_comment(video_id, pin["comment_id"])
        if doc is not None:
            await self._announce(actor, doc, "unpinned", request_id)
        return True

    async def _announce(
        self, actor: Principal, doc: dict[str, Any], change: str, request_id: str = ""
    ) -> None:
        now = utcnow()
        marker = {
            "_id": self.ids.next_id(),
            "video_id": doc["video_id"],
            "marker": change,
            "target_id": doc["_id"],
            "snapshot": events.comment_json(doc),
            "by": actor.user_id,
            "created_at": now,
            "created_at_ms": int(now.timestamp() * 1000),
        }
        if change not in events.PIN_MARKERS:  # a change of the comment itself
            marker["target_seq"] = doc["seq"]
        if request_id:
            marker["request_id"] = request_id
        await self._sequence(marker)
        await self._dispatch(events.change_event(marker), marker)

    # -- held for review ------------------------------------------------------------

    async def approve(self, actor: Principal, comment_id: int) -> dict[str, Any]:
        """Publish a held comment live, at the video's next seq."""
        held = await self._store.get_held(comment_id)
        if held is None:
            raise NotFound("no such held comment", code="held_not_found")
        existing = await self._store.get_comment(held["video_id"], comment_id)
        if existing is not None:
            return existing  # approved already
        if held.get("state") != "pending":
            raise Conflict(f"the comment was already {held.get('state')}", code="already_settled")
        doc = {k: v for k, v in held.items() if k not in ("state", "score", "reasons")}
        now = utcnow()
        # Viewers see it now, at its new seq: a replay shows it at this time too.
        doc.update(
            status=events.STATUS_VISIBLE,
            approved_by=actor.user_id,
            approved_at=now,
            approved_at_ms=events.epoch_ms(now),
        )
        try:
            await self._publish(doc)
        except Conflict as exc:
            if exc.code != "duplicate_id":
                raise
            return await self.get(doc["video_id"], comment_id)  # a concurrent approval won
        await self._store.settle_held(comment_id, "approved", actor.user_id)
        return doc

    async def deny(self, actor: Principal, comment_id: int) -> dict[str, Any]:
        held = await self._store.get_held(comment_id)
        if held is None:
            raise NotFound("no such held comment", code="held_not_found")
        if held.get("state") != "pending":
            raise Conflict(f"the comment was already {held.get('state')}", code="already_settled")
        await self._store.settle_held(comment_id, "denied", actor.user_id)
        held["state"] = "denied"
        return held

    # -- history ----------------------------------------------------------------------

    async def page(
        self, video_id: str, *, before: int | None, after: int | None, limit: int
    ) -> dict[str, Any]:
        """A page of history by seq range; newest first (``before``) or oldest first (``after``).

        Items are top-level comments (deleted ones as tombstones), each with its
        first replies and its reply count; changes are already folded into the
        documents, so their markers are skipped. Served from the recent-comments
        cache when it holds the whole range (see ``recent.py``), else from the store.

        An oldest-first page ends before the first seq still in flight (taken,
        not yet stored), so a client that polls with ``poll_after`` never steps
        over a comment that is about to appear.

        Every page carries ``resume``, the SSE event id to open the stream with:
        every seq up to it is in this page (or in older pages), or is a change
        marker, a reply or a void. Seqs still in flight are above it, so the
        stream replays them; ``head`` counts them already and is not a safe
        place to resume from.
        """
        window = await self._recent.window(video_id, after=after, before=before, limit=limit)
        if window is None or window.head < 0:
            return await self._page_from_store(video_id, before=before, after=after, limit=limit)
        head, lo, hi, busy = window.head, window.lo, window.hi, window.busy
        cursor: dict[str, Any]
        ready = hi if not busy else min(hi, busy - 1)
        if after is not None:
            cursor = {
                "next_after": ready if ready < head and not busy else None,
                "poll_after": max(after, ready),
            }
            hi = ready
        else:
            cursor = {"next_before": lo if lo > 1 else None}
        self.page_reads["cache" if window.holes == 0 else "store"] += 1
        if window.holes:
            docs = await self._store.comments_by_seq(video_id, lo, hi) if hi >= lo else []
            items = await self._items_from_store(video_id, docs)
        else:
            items = self._items_from_cache(window.entries, lo, hi)
        if after is not None:
            ready = max(after, ready)
        if after is None:
            items.reverse()
        resume = events.event_id(window.epoch, ready)
        return {"video_id": video_id, "items": items, "head": head, "resume": resume, **cursor}

    @staticmethod
    def _items_from_cache(
        entries: dict[int, dict[str, Any]], lo: int, hi: int
    ) -> list[dict[str, Any]]:
        """The top-level comments of ``lo..hi``, with the reply previews the cache found."""
        tops: list[dict[str, Any]] = []
        for seq in sorted(entries):
            entry = entries[seq]
            if "id" not in entry or entry.get("parent_id") is not None or not lo <= seq <= hi:
                continue  # a change marker's stub, a reply, or beyond an in-flight seq
            item = {k: v for k, v in entry.items() if k not in ("reply_count", "replies")}
            item["reply_count"] = entry.get("reply_count", 0)
            item["replies"] = entry.get("replies", [])
            tops.append(item)
        return tops

    async def _items_from_store(
        self, video_id: str, docs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        tops = [
            d
            for d in docs
            if not d.get("marker") and not d.get("void") and d.get("parent_id") is None
        ]
        previews = await asyncio.gather(
            *(
                self._store.replies(video_id, d["_id"], after_seq=0, limit=REPLY_PREVIEW)
                for d in tops
                if d.get("reply_count")
            )
        )
        replies = {r[0]["parent_id"]: r for r in previews if r}
        items = []
        for doc in tops:
            item = events.comment_json(doc)
            item["reply_count"] = doc.get("reply_count", 0)
            item["replies"] = [events.comment_json(r) for r in replies.get(doc["_id"], [])]
            items.append(item)
        return items

    async def _page_from_store(
        self, video_id: str, *, before: int | None, after: int | None, limit: int
    ) -> dict[str, Any]:
        """Redis has no counter for the video (new, or Redis lost it): the store decides."""
        self.page_reads["store"] += 1
        head = await self._store.max_seq(video_id)
        cursor: dict[str, Any]
        if after is not None:
            lo, hi = after + 1, min(after + limit, head)
        else:
            top = min(before if before is not None else head + 1, head + 1)
            lo, hi = max(1, top - limit), top - 1
        docs = await self._store.comments_by_seq(video_id, lo, hi) if hi >= lo else []
        # Without a counter in Redis nothing is being sequenced for this video now.
        ready = max(after, hi) if after is not None else hi
        if after is not None:
            cursor = {"next_after": hi if hi < head else None, "poll_after": ready}
        else:
            cursor = {"next_before": lo if lo > 1 else None}
        items = await self._items_from_store(video_id, docs)
        if after is None:
            items.reverse()
        # Epoch 0: "whatever epoch the video has" (without a counter, none is known).
        resume = events.event_id(0, ready)
        return {"video_id": video_id, "items": items, "head": head, "resume": resume, **cursor}

    async def replies(
        self, video_id: str, parent_id: int, *, after: int, limit: int
    ) -> dict[str, Any]:
        """Replies to one comment, oldest first, after the reply with seq ``after``."""
        await self.get(video_id, parent_id)
        docs = await self._store.replies(video_id, parent_id, after_seq=after, limit=limit + 1)
        more = len(docs) > limit
        docs = docs[:limit]
        return {
            "video_id": video_id,
            "parent_id": str(parent_id),
            "items": [events.comment_json(d) for d in docs],
            "next_after": docs[-1]["seq"] if more else None,
        }
