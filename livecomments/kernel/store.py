"""All MongoDB access, in one module (pymongo's native asyncio client).

Queries always name ``video_id`` (the shard key prefix in production) and read
bounded ``seq`` ranges, so a page costs at most ``limit`` documents on any store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from livecomments.kernel.errors import Conflict, LiveCommentsError, Unavailable
from livecomments.kernel.metrics import Histograms

Doc = dict[str, Any]

# What says when viewers saw a stored event (replay.event_ms), and its seq.
EVENT_TIME_FIELDS = {"seq": 1, "created_at_ms": 1, "created_at": 1, "approved_at_ms": 1,
                     "approved_at": 1, "void": 1, "marker": 1}  # fmt: skip
REPLIES_INDEX = "replies"  # a comment's replies by seq (history previews)
# Indexes of earlier versions that no query needs, dropped at start-up: each cost
# every insert an index entry. (video_id, _id): a lookup by id uses ``_id``;
# (user_id, _id): nothing reads comments by user; (parent_id, _id): replaced by
# REPLIES_INDEX, which also serves their order by seq.
OBSOLETE_COMMENT_INDEXES = frozenset(
    {"video_id_1__id_-1", "user_id_1__id_-1", "parent_id_1__id_-1"}
)


class _Timing(CommandListener):
    """Each command's duration, by command name (find, insert, update, ...): pymongo's
    own command monitoring, so every call is timed without wrapping one."""

    def __init__(self, latency: Histograms) -> None:
        self._latency = latency

    def started(self, event: CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self._latency.observe(event.duration_micros / 1e6, event.command_name)

    def failed(self, event: CommandFailedEvent) -> None:
        self._latency.observe(event.duration_micros / 1e6, event.command_name)


class Store:
    """Owns the client; ``start()`` connects and makes sure the indexes exist.

    ``latency``: where each command's duration goes (by command name), for /metrics.
    """

    def __init__(
        self, uri: str, database: str, timeout: float = 5.0, latency: Histograms | None = None
    ) -> None:
        self._uri = uri
        self._database = database
        self._timeout_ms = int(timeout * 1000)
        self._client: AsyncMongoClient[Doc] | None = None
        self._collections: dict[str, AsyncCollection[Doc]] = {}
        self._listeners = [_Timing(latency)] if latency is not None else []

    async def start(self, *, create_indexes: bool = True) -> None:
        if self._client is not None:
            return
        # Every call is bounded by these four (finding a server, connecting, waiting
        # for a pooled connection, each socket read). pymongo's per-operation
        # ``timeoutMS`` would bound a call as a whole, but costs every call a context
        # and deadline bookkeeping of its own (~3 % of a post's CPU here).
        self._client = AsyncMongoClient(
            self._uri,
            serverSelectionTimeoutMS=self._timeout_ms,
            connectTimeoutMS=self._timeout_ms,
            waitQueueTimeoutMS=self._timeout_ms,
            socketTimeoutMS=self._timeout_ms,
            tz_aware=True,
            event_listeners=self._listeners,
        )
        if create_indexes:
            await self.ensure_indexes()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._collections.clear()

    async def ping(self) -> None:
        """One round trip to the store (readiness probes); raises when it does not answer."""
        if self._client is None:
            raise Unavailable("store not started")
        with _guard("ping"):
            await self._client.admin.command("ping")

    def _col(self, name: str) -> AsyncCollection[Doc]:
        # Made once per client: a pymongo collection object costs a database and a
        # collection constructor (options, codecs), and every store call asks for one.
        collection = self._collections.get(name)
        if collection is None:
            if self._client is None:
                raise Unavailable("store not started")
            collection = self._collections[name] = self._client[self._database][name]
        return collection

    @property
    def comments(self) -> AsyncCollection[Doc]:
        return self._col("comments")

    @property
    def users(self) -> AsyncCollection[Doc]:
        return self._col("users")

    async def ensure_indexes(self) -> None:
        with _guard("cannot create indexes"):
            # What a comment's insert touches: ``_id`` and (video_id, seq), and a reply
            # also (video_id, parent_id, seq). Every query names video_id and either
            # _id (served by ``_id``; video_id routes it to one shard) or a seq range.
            await self.comments.create_indexes(
                [
                    IndexModel([("video_id", ASCENDING), ("seq", DESCENDING)], unique=True),
                    IndexModel(
                        [("video_id", ASCENDING), ("parent_id", ASCENDING), ("seq", ASCENDING)],
                        partialFilterExpression={"parent_id": {"$type": "long"}},
                        name=REPLIES_INDEX,
                    ),
                ]
            )
            existing = await self.comments.index_information()
            for name in OBSOLETE_COMMENT_INDEXES & existing.keys():
                await self.comments.drop_index(name)
            await self.users.create_indexes(
                [
                    IndexModel([("username_key", ASCENDING)], unique=True),
                    IndexModel([("flagged", ASCENDING), ("flagged_at", DESCENDING)]),
                ]
            )
            await self._col("held").create_indexes(
                [IndexModel([("state", ASCENDING), ("video_id", ASCENDING), ("_id", DESCENDING)])]
            )
            await self._col("reports").create_indexes(
                [
                    IndexModel(
                        [("comment_id", ASCENDING), ("reporter_id", ASCENDING)], unique=True
                    ),
                    IndexModel([("status", ASCENDING), ("_id", DESCENDING)]),
                ]
            )
            await self._col("bans").create_indexes([IndexModel([("scope", ASCENDING)])])
            # A user's warnings, newest first; the unacknowledged ones are loaded with the bans.
            await self._col("warnings").create_indexes(
                [
                    IndexModel([("user_id", ASCENDING), ("_id", DESCENDING)]),
                    IndexModel([("acknowledged_at", ASCENDING)]),
                ]
            )

    # -- comments ---------------------------------------------------------------

    async def insert_comment(self, doc: Doc) -> None:
        """Persist a comment or a change marker.

        Conflict ``seq_conflict`` when its (video_id, seq) is taken, ``duplicate_id``
        when a comment with its id is already stored (an approval done twice).
        """
        try:
            with _guard():
                await self.comments.insert_one(doc)
        except DuplicateKeyError as exc:
            if "_id" in ((exc.details or {}).get("keyPattern") or {}):
                raise Conflict("comment already stored", code="duplicate_id") from exc
            raise Conflict("sequence number already used", code="seq_conflict") from exc

    async def insert_comments(self, docs: list[Doc]) -> list[LiveCommentsError | None]:
        """Persist many in one round trip (group commit); per document, None or its Conflict."""
        if len(docs) == 1:
            # Alone (any post when posts are not concurrent): pymongo's insert_one is
            # about 10 % lighter than its bulk path for the same single insert command.
            try:
                await self.insert_comment(docs[0])
            except Conflict as exc:
                return [exc]
            return [None]
        results: list[LiveCommentsError | None] = [None] * len(docs)
        try:
            with _guard():
                await self.comments.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                index = int(error.get("index", -1))
                if not 0 <= index < len(docs):
                    continue
                if error.get("code") == 11000:
                    pattern = error.get("keyPattern") or {}
                    results[index] = (
                        Conflict("comment already stored", code="duplicate_id")
                        if "_id" in pattern
                        else Conflict("sequence number already used", code="seq_conflict")
                    )
                else:
                    results[index] = Unavailable(f"store: {error.get('errmsg', 'write failed')}")
        return results

    async def comments_by_seq(self, video_id: str, lo: int, hi: int) -> list[Doc]:
        """Comments and change markers with ``lo <= seq <= hi``, ascending by seq."""
        if hi < lo:
            return []
        with _guard():
            cursor = self.comments.find(
                {"video_id": video_id, "seq": {"$gte": lo, "$lte": hi}}
            ).sort("seq", ASCENDING)
            return await cursor.to_list(length=hi - lo + 1)

    async def first_by_seq(
        self, video_id: str, lo: int, hi: int, *, comments_only: bool = False
    ) -> Doc | None:
        """The first document with ``lo <= seq <= hi`` that is not a void (with
        ``comments_only``, nor a change marker), ascending by seq; only its times.

        The range is bounded on both sides so that every store reads at most
        ``hi - lo + 1`` entries of the ``(video_id, seq)`` index for it (replay
        searches probe with a small window, never an open-ended range). Voids and
        markers are skipped here rather than in the query: a condition on a field
        the index lacks can turn the read into a scan on some stores.
        """
        if hi < lo:
            return None
        with _guard():
            cursor = self.comments.find(
                {"video_id": video_id, "seq": {"$gte": lo, "$lte": hi}},
                projection=EVENT_TIME_FIELDS,
            ).sort("seq", ASCENDING)
            async for doc in cursor:
                if not doc.get("void") and not (comments_only and doc.get("marker")):
                    await cursor.close()
                    return doc
        return None

    async def comments_at(self, video_id: str, seqs: list[int]) -> list[Doc]:
        """The documents (comments, change markers, voids) at these seqs, ascending."""
        if not seqs:
            return []
        with _guard():
            cursor = self.comments.find({"video_id": video_id, "seq": {"$in": sorted(seqs)}})
            docs = await cursor.to_list(length=len(seqs))
        return sorted(docs, key=lambda d: int(d["seq"]))

    async def fence(self, video_id: str, seqs: list[int]) -> int:
        """Void each seq that no document holds yet; how many voids were written.

        A void is a document at ``(video_id, seq)`` that says "never acknowledged":
        the unique index makes it race with a late writer's insert, and exactly one
        of them wins. A writer that loses gets ``seq_conflict`` and takes another
        seq, so no acknowledged comment ever sits at a voided seq, and a node may
        step over a void knowing it hides nothing. Seqs someone else fenced, or
        that a writer stored meanwhile, are left as they are.
        """
        if not seqs:
            return 0
        now = utcnow()
        docs = [
            {"_id": void_id(video_id, seq), "video_id": video_id, "seq": seq, "void": True,
             "created_at": now}
            for seq in seqs
        ]  # fmt: skip
        try:
            with _guard():
                result = await self.comments.insert_many(docs, ordered=False)
            return len(result.inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise Unavailable(f"store: fencing failed: {errors[:1]}") from exc
            return int(exc.details.get("nInserted", len(docs) - len(errors)))

    async def max_seq(self, video_id: str) -> int:
        """The highest seq stored for a video (0 for none). Used only to re-seed a counter."""
        with _guard():
            doc = await self.comments.find_one(
                {"video_id": video_id}, projection={"seq": 1}, sort=[("seq", DESCENDING)]
            )
        return int(doc["seq"]) if doc else 0

    async def get_comment(self, video_id: str, comment_id: int) -> Doc | None:
        with _guard():
            # video_id first: on a sharded store this is a targeted query.
            return await self.comments.find_one(
                {"video_id": video_id, "_id": comment_id, "marker": None}
            )

    async def find_comment(self, comment_id: int) -> Doc | None:
        """A comment by id alone. Not targeted on a sharded store: for rare paths (reports)."""
        with _guard():
            return await self.comments.find_one({"_id": comment_id, "marker": None})

    async def update_comment(
        self, video_id: str, comment_id: int, changes: Doc, *, unless_deleted: bool
    ) -> Doc | None:
        """Apply ``changes`` (a $set), bump ``rev``; the new document, or None if no match."""
        query: Doc = {"video_id": video_id, "_id": comment_id, "marker": None}
        if unless_deleted:
            query["status"] = {"$ne": "deleted"}
        update: Doc = {"$set": changes, "$inc": {"rev": 1}}
        if changes.get("status") == "deleted":
            update["$unset"] = {"text": ""}
        with _guard():
            return await self.comments.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            )

    async def count_reply(self, video_id: str, parent_id: int) -> None:
        with _guard():
            await self.comments.update_one(
                {"video_id": video_id, "_id": parent_id}, {"$inc": {"reply_count": 1}}
            )

    async def replies(
        self, video_id: str, parent_id: int, *, after_seq: int, limit: int
    ) -> list[Doc]:
        """Replies to one comment, oldest first, from seq ``after_seq`` on."""
        with _guard():
            cursor = self.comments.find(
                {"video_id": video_id, "parent_id": parent_id, "seq": {"$gt": after_seq}}
            ).sort("seq", ASCENDING)
            return await cursor.limit(limit).to_list(length=limit)

    async def set_reactions(self, counts: dict[tuple[str, int], dict[str, int]]) -> None:
        """Write flushed reaction counts: ``{(video_id, comment_id): {name: n}}``."""
        if not counts:
            return
        with _guard():
            await self.comments.bulk_write(
                [
                    UpdateOne({"video_id": video, "_id": cid}, {"$set": {"reactions": value}})
                    for (video, cid), value in counts.items()
                ],
                ordered=False,
            )

    # -- held for review ----------------------------------------------------------

    async def insert_held(self, doc: Doc) -> None:
        with _guard():
            await self._col("held").insert_one(doc)

    async def held(self, video_id: str | None, *, before: int | None, limit: int) -> list[Doc]:
        query: Doc = {"state": "pending"}
        if video_id is not None:
            query["video_id"] = video_id
        if before is not None:
            query["_id"] = {"$lt": before}
        with _guard():
            cursor = self._col("held").find(query).sort("_id", DESCENDING)
            return await cursor.limit(limit).to_list(length=limit)

    async def get_held(self, comment_id: int) -> Doc | None:
        with _guard():
            return await self._col("held").find_one({"_id": comment_id})

    async def settle_held(self, comment_id: int, state: str, by: int) -> None:
        with _guard():
            await self._col("held").update_one(
                {"_id": comment_id},
                {"$set": {"state": state, "settled_by": by, "settled_at": utcnow()}},
            )

    # -- reports ------------------------------------------------------------------

    async def insert_report(self, doc: Doc) -> None:
        try:
            with _guard():
                await self._col("reports").insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict("you already reported this comment", code="already_reported") from exc

    async def reports(self, status: str, *, before: int | None, limit: int) -> list[Doc]:
        query: Doc = {"status": status}
        if before is not None:
            query["_id"] = {"$lt": before}
        with _guard():
            cursor = self._col("reports").find(query).sort("_id", DESCENDING)
            return await cursor.limit(limit).to_list(length=limit)

    async def settle_reports(self, comment_id: int, status: str, by: int) -> int:
        """Close every open report of a comment; how many were open."""
        with _guard():
            result = await self._col("reports").update_many(
                {"comment_id": comment_id, "status": "open"},
                {"$set": {"status": status, "settled_by": by, "settled_at": utcnow()}},
            )
        return int(result.modified_count)

    async def get_report(self, report_id: int) -> Doc | None:
        with _guard():
            return await self._col("reports").find_one({"_id": report_id})

    # -- bans ---------------------------------------------------------------------

    async def put_ban(self, doc: Doc, *, unless_set_by: str | None = None) -> bool:
        """Store or replace a ban; False (nothing written) when the ban in place, still
        running, was set by a user of role ``unless_set_by`` (one conditional write)."""
        query: Doc = {"_id": doc["_id"], **_not_protected(unless_set_by)}
        try:
            with _guard():
                await self._col("bans").replace_one(query, doc, upsert=True)
        except DuplicateKeyError:
            return False  # the upsert met the protected ban's _id
        return True

    async def get_ban(self, ban_id: str) -> Doc | None:
        with _guard():
            return await self._col("bans").find_one({"_id": ban_id})

    async def delete_ban(self, ban_id: str, *, unless_set_by: str | None = None) -> bool:
        query: Doc = {"_id": ban_id, **_not_protected(unless_set_by)}
        with _guard():
            result = await self._col("bans").delete_one(query)
        return bool(result.deleted_count)

    async def active_bans(self, scope: str | None = None) -> list[Doc]:
        query: Doc = {"$or": [{"expires_at": None}, {"expires_at": {"$gt": utcnow()}}]}
        if scope is not None:
            query["scope"] = scope
        with _guard():
            return await self._col("bans").find(query).to_list(length=None)

    # -- warnings -----------------------------------------------------------------

    async def insert_warning(self, doc: Doc) -> None:
        with _guard():
            await self._col("warnings").insert_one(doc)

    async def pending_warning(self, user_id: int) -> Doc | None:
        """The user's newest warning not acknowledged yet, if any."""
        with _guard():
            return await self._col("warnings").find_one(
                {"user_id": user_id, "acknowledged_at": None}, sort=[("_id", DESCENDING)]
            )

    async def acknowledge_warnings(self, user_id: int, at: dt.datetime) -> int:
        """Record the acknowledgement of every pending warning of the user; how many."""
        with _guard():
            result = await self._col("warnings").update_many(
                {"user_id": user_id, "acknowledged_at": None}, {"$set": {"acknowledged_at": at}}
            )
        return int(result.modified_count)

    async def pending_warnings(self) -> list[Doc]:
        """Every warning not acknowledged yet (copied into Redis with the bans)."""
        with _guard():
            return await self._col("warnings").find({"acknowledged_at": None}).to_list(length=None)

    # -- videos -------------------------------------------------------------------

    async def video_settings(self, video_id: str) -> Doc:
        with _guard():
            doc = await self._col("videos").find_one({"_id": video_id})
        return doc or {"_id": video_id}

    async def videos_with_settings(self) -> list[Doc]:
        """Every video whose settings differ from the defaults (see ``policy.py``)."""
        query = {
            "$or": [
                {"slow_mode": {"$gt": 0}},
                {"hold_threshold": {"$type": "number"}},
                {"min_account_age": {"$gt": 0}},
            ]
        }
        with _guard():
            return await self._col("videos").find(query).to_list(length=None)

    async def switch_shield(self, video_id: str, on: bool, changes: Doc, removed: Doc) -> Doc:
        """Turn shield mode on or off, only if it is not already: the document after."""
        update: Doc = {"$set": changes}
        if removed:
            update["$unset"] = removed
        query: Doc = {"_id": video_id, "shield": {"$exists": not on}}
        with _guard():
            try:
                doc = await self._col("videos").find_one_and_update(
                    query, update, upsert=on, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                doc = None  # turned on meanwhile (the upsert met the existing document)
            if doc is None:
                doc = await self._col("videos").find_one({"_id": video_id})
        return doc or {"_id": video_id}

    async def set_video_settings(self, video_id: str, changes: Doc) -> Doc:
        with _guard():
            doc = await self._col("videos").find_one_and_update(
                {"_id": video_id},
                {"$set": changes},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return doc or {"_id": video_id, **changes}

    async def set_pin(self, video_id: str, pin: Doc) -> None:
        """Pin a comment of ``video_id`` (``pin``: its id, who, when), replacing any pin."""
        with _guard():
            await self._col("videos").update_one(
                {"_id": video_id}, {"$set": {"pinned": pin}}, upsert=True
            )

    async def clear_pin(self, video_id: str, comment_id: int | None = None) -> Doc | None:
        """Unpin (only ``comment_id``, if given); the pin that was cleared, or None."""
        query: Doc = {"_id": video_id, "pinned": {"$type": "object"}}
        if comment_id is not None:
            query["pinned.comment_id"] = comment_id
        with _guard():
            before = await self._col("videos").find_one_and_update(
                query, {"$unset": {"pinned": ""}}, return_document=ReturnDocument.BEFORE
            )
        return (before or {}).get("pinned")

    async def set_live_at(
        self, video_id: str, at: dt.datetime, changes: Doc, *, only_if_absent: bool
    ) -> Doc:
        """Record when the video went live (``live_at``, with ``changes``); the videos
        document after it. ``only_if_absent``: keep a start that is already recorded
        (a derived start is remembered once, and never replaces the staff's)."""
        update = {"$set": {"live_at": at, **changes}}
        query: Doc = {"_id": video_id}
        if only_if_absent:
            query["live_at"] = None
        try:
            with _guard():
                doc = await self._col("videos").find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER
                )
        except DuplicateKeyError:
            doc = None  # the document exists and has a start: the upsert met its _id
        if doc is None:
            doc = await self.video_settings(video_id)
        return doc

    # -- users ----------------------------------------------------------------

    async def create_user(self, doc: Doc) -> None:
        try:
            with _guard():
                await self.users.insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict("username is taken", code="username_taken") from exc

    async def find_user(self, username_key: str) -> Doc | None:
        with _guard():
            return await self.users.find_one({"username_key": username_key})

    async def get_user(self, user_id: int) -> Doc | None:
        with _guard():
            return await self.users.find_one({"_id": user_id})

    async def update_user(self, user_id: int, update: Doc) -> Doc | None:
        with _guard():
            return await self.users.find_one_and_update(
                {"_id": user_id}, update, return_document=ReturnDocument.AFTER
            )

    async def count_users(self, query: Doc) -> int:
        with _guard():
            return int(await self.users.count_documents(query))

    async def try_lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take the named lease (a document in ``locks``) unless another holder has
        it and it has not expired; it expires so that a crashed holder frees it."""
        now = utcnow()
        try:
            with _guard():
                doc = await self._col("locks").find_one_and_update(
                    {"_id": name, "until": {"$lt": now}},
                    {"$set": {"holder": holder, "until": now + dt.timedelta(seconds=seconds)}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
        except DuplicateKeyError:
            return False  # held: the upsert met the holder's document
        return doc is not None and doc.get("holder") == holder

    async def unlock(self, name: str, holder: str) -> None:
        with _guard():
            await self._col("locks").delete_one({"_id": name, "holder": holder})

    async def flagged_users(self, *, limit: int) -> list[Doc]:
        with _guard():
            cursor = self.users.find({"flagged": True}).sort("flagged_at", DESCENDING)
            return await cursor.limit(limit).to_list(length=limit)


def void_id(video_id: str, seq: int) -> str:
    """The ``_id`` of the void at ``(video_id, seq)``: one per seq, never a comment's id."""
    return f"void:{video_id}:{seq}"


def _not_protected(role: str | None) -> Doc:
    """A ban filter: not set by ``role``, or already over (None: any ban)."""
    if role is None:
        return {}
    return {"$or": [{"by_role": {"$ne": role}}, {"expires_at": {"$lte": utcnow()}}]}


@contextlib.contextmanager
def _guard(what: str = "") -> Iterator[None]:
    """Store failures become ``Unavailable``; duplicate keys are left to the caller."""
    try:
        yield
    except (DuplicateKeyError, BulkWriteError):
        raise
    except PyMongoError as exc:
        raise Unavailable(f"store: {what + ': ' if what else ''}{exc}") from exc


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
