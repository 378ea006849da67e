"""All MongoDB access, in one module (pymongo's native asyncio client).

Queries always name ``video_id`` (the shard key prefix in production) and read
bounded ``seq`` ranges, so a page costs at most ``limit`` documents on any store.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from livecomments.errors import Conflict, Unavailable

Doc = dict[str, Any]


class Store:
    """Owns the client; ``start()`` connects and makes sure the indexes exist."""

    def __init__(self, uri: str, database: str, timeout: float = 5.0) -> None:
        self._uri = uri
        self._database = database
        self._timeout_ms = int(timeout * 1000)
        self._client: AsyncMongoClient[Doc] | None = None

    async def start(self, *, create_indexes: bool = True) -> None:
        if self._client is not None:
            return
        self._client = AsyncMongoClient(
            self._uri,
            serverSelectionTimeoutMS=self._timeout_ms,
            connectTimeoutMS=self._timeout_ms,
            timeoutMS=self._timeout_ms,
            tz_aware=True,
        )
        if create_indexes:
            await self.ensure_indexes()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _col(self, name: str) -> AsyncCollection[Doc]:
        if self._client is None:
            raise Unavailable("store not started")
        return self._client[self._database][name]

    @property
    def comments(self) -> AsyncCollection[Doc]:
        return self._col("comments")

    @property
    def users(self) -> AsyncCollection[Doc]:
        return self._col("users")

    async def ensure_indexes(self) -> None:
        try:
            await self.comments.create_indexes(
                [
                    IndexModel([("video_id", ASCENDING), ("seq", DESCENDING)], unique=True),
                    IndexModel([("video_id", ASCENDING), ("_id", DESCENDING)]),
                    IndexModel(
                        [("parent_id", ASCENDING), ("_id", DESCENDING)],
                        partialFilterExpression={"parent_id": {"$type": "long"}},
                    ),
                    IndexModel([("user_id", ASCENDING), ("_id", DESCENDING)]),
                ]
            )
            await self.users.create_indexes(
                [IndexModel([("username_key", ASCENDING)], unique=True)]
            )
        except PyMongoError as exc:
            raise Unavailable(f"store: cannot create indexes: {exc}") from exc

    # -- comments ---------------------------------------------------------------

    async def insert_comment(self, doc: Doc) -> None:
        """Persist a comment; Conflict when its (video_id, seq) is already taken."""
        try:
            await self.comments.insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict("sequence number already used", code="seq_conflict") from exc
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from exc

    async def comments_by_seq(self, video_id: str, lo: int, hi: int) -> list[Doc]:
        """Comments with ``lo <= seq <= hi``, ascending by seq."""
        if hi < lo:
            return []
        try:
            cursor = self.comments.find(
                {"video_id": video_id, "seq": {"$gte": lo, "$lte": hi}}
            ).sort("seq", ASCENDING)
            return await cursor.to_list(length=hi - lo + 1)
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from exc

    async def max_seq(self, video_id: str) -> int:
        """The highest seq stored for a video (0 for none). Used only to re-seed a counter."""
        try:
            doc = await self.comments.find_one(
                {"video_id": video_id}, projection={"seq": 1}, sort=[("seq", DESCENDING)]
            )
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from exc
        return int(doc["seq"]) if doc else 0

    async def get_comment(self, video_id: str, comment_id: int) -> Doc | None:
        try:
            # video_id first: on a sharded store this is a targeted query.
            return await self.comments.find_one({"video_id": video_id, "_id": comment_id})
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from exc

    # -- users ----------------------------------------------------------------

    async def create_user(self, doc: Doc) -> None:
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict("username is taken", code="username_taken") from exc
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from exc

    async def find_user(self, username_key: str) -> Doc | None:
        try:
            return await self.users.find_one({"username_key": username_key})
        except PyMongoError as exc:
            raise Unavailable(f"store: {exc}") from exc


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
