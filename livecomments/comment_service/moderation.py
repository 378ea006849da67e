"""Reports, the moderators' queues and flagged users."""

from __future__ import annotations

from typing import Any

from livecomments.comment_service.auth import Principal
from livecomments.comment_service.comments import Comments
from livecomments.kernel import events
from livecomments.kernel.errors import Conflict, NotFound, ValidationError
from livecomments.kernel.ids import Snowflake
from livecomments.kernel.store import Store, utcnow

REPORT_REASONS = ("spam", "harassment", "hate", "sexual", "violence", "misinformation", "other")
REPORT_STATES = ("open", "dismissed", "actioned")


class Moderation:
    def __init__(
        self, store: Store, comments: Comments, ids: Snowflake, flag_threshold: int
    ) -> None:
        self._store = store
        self._comments = comments
        self._ids = ids
        self._flag_threshold = flag_threshold

    async def report(
        self, reporter: Principal, comment_id: int, reason: str, note: str
    ) -> dict[str, Any]:
        """File a report; the comment's author is flagged once enough reports pile up."""
        comment = await self._store.find_comment(comment_id)
        if comment is None:
            raise NotFound("no such comment", code="comment_not_found")
        if comment["user_id"] == reporter.user_id:
            raise ValidationError("you cannot report your own comment", code="own_comment")
        if comment.get("status") == events.STATUS_DELETED:
            raise Conflict("the comment was already deleted", code="comment_deleted")
        doc = {
            "_id": self._ids.next_id(),
            "comment_id": comment_id,
            "video_id": comment["video_id"],
            "author_id": comment["user_id"],
            "reporter_id": reporter.user_id,
            "reason": reason,
            "note": note,
            "status": "open",
            "created_at": utcnow(),
            "comment": events.comment_json(comment),
        }
        await self._store.insert_report(doc)
        author = await self._store.update_user(comment["user_id"], {"$inc": {"report_count": 1}})
        if (
            author is not None
            and not author.get("flagged")
            and author.get("report_count", 0) >= self._flag_threshold
        ):
            await self._store.update_user(
                author["_id"], {"$set": {"flagged": True, "flagged_at": utcnow()}}
            )
        return doc

    async def reports(self, status: str, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        return await self._store.reports(status, before=before, limit=limit)

    async def resolve(self, actor: Principal, report_id: int, action: str) -> dict[str, Any]:
        """Dismiss a report, or delete the reported comment; settles all its open reports."""
        report = await self._store.get_report(report_id)
        if report is None:
            raise NotFound("no such report", code="report_not_found")
        comment = None
        if action == "delete":
            doc = await self._store.get_comment(report["video_id"], report["comment_id"])
            if doc is not None:
                comment = events.comment_json(await self._comments.delete(actor, doc))
        status = "actioned" if action == "delete" else "dismissed"
        settled = await self._store.settle_reports(report["comment_id"], status, actor.user_id)
        return {
            "comment_id": str(report["comment_id"]),
            "status": status,
            "settled": settled,
            "comment": comment,
        }

    async def flagged(self, limit: int) -> list[dict[str, Any]]:
        return await self._store.flagged_users(limit=limit)

    async def clear_flag(self, user_id: int, by: int) -> dict[str, Any]:
        """A moderator reviewed the user: the flag and its report count start over."""
        user = await self._store.update_user(
            user_id,
            {
                "$set": {
                    "flagged": False,
                    "report_count": 0,
                    "reviewed_by": by,
                    "reviewed_at": utcnow(),
                }
            },
        )
        if user is None:
            raise NotFound("no such user", code="user_not_found")
        return user
