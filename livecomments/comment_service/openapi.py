"""The OpenAPI 3.1 document of the comment service's HTTP API (served at /api/openapi.json).

The enums (reaction names, report reasons, roles) and the limits (page sizes,
comment length, slow mode, rate limits) come from the same constants and
settings the handlers use, so they cannot drift apart; ``tests/system/test_openapi.py``
checks the paths against the route table and fuzzes the running service
against the rest.
"""

from __future__ import annotations

import functools
from typing import Any

from livecomments import __version__
from livecomments.comment_service.auth import ROLES
from livecomments.comment_service.idempotency import HEADER as IDEMPOTENCY_HEADER
from livecomments.comment_service.idempotency import KEY_PATTERN as IDEMPOTENCY_KEY
from livecomments.comment_service.moderation import REPORT_REASONS, REPORT_STATES
from livecomments.comment_service.moderation_routes import MAX_BAN_SECONDS
from livecomments.comment_service.passwords import MIN_LENGTH as MIN_PASSWORD
from livecomments.comment_service.reactions import EMOJI
from livecomments.comment_service.recent import REPLY_PREVIEW
from livecomments.kernel import events
from livecomments.kernel.ids import MAX_VIDEO_ID
from livecomments.kernel.settings import CommentServiceSettings

Schema = dict[str, Any]

VIDEO_ID_PATTERN = f"^[A-Za-z0-9_-]{{1,{MAX_VIDEO_ID}}}$"
# A positive int64 as a decimal string (leading zeros are tolerated, 19 digits
# at most); the int64 upper bound itself is beyond a regular expression.
ID_PATTERN = "^0*[1-9][0-9]*$"
USERNAME_PATTERN = "^[A-Za-z0-9_]{3,32}$"
# Characters a stored text may not contain (comment_service.validation.comment_text):
# C0/C1 controls and bidi overrides and isolates. Private-use and unassigned code
# points are refused too, but a portable pattern cannot name them.
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]*$"
MAX_QUERY_CURSOR = 1 << 62  # the largest seq a history cursor may name
SMALL_BODY = 4096  # bytes: sign-up, login, reports, bans
TINY_BODY = 1024  # bytes: report resolutions, video settings, roles

# The service reads integers strictly: a JSON Schema "integer" also admits 100.0.
_WHOLE = "A JSON integer literal (100.0 is refused)."
_BACKEND_ERRORS = ["unavailable", "coordination_timeout"]
_BODY_ERRORS = ["invalid_encoding", "invalid_json", "unknown_field"]
_AUTH_ERRORS = ["unauthorized", "invalid_token", "token_expired", "token_revoked"]
_CACHED = (
    "A full page that cannot gain items (older than the head, or with a next cursor) "
    "carries `Cache-Control: public, max-age=history_cache_seconds`; the others `no-store`. "
    "A bearer token is optional: with a valid one the read counts against the user's limit."
)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """``schema`` or null (OpenAPI 3.1 spells it as a type list, or anyOf for a $ref)."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _object(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A closed object; every property is required unless ``required`` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


# -- schemas ----------------------------------------------------------------------


def _comment_properties() -> dict[str, Schema]:
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    return {
        "id": _ref("Id"),
        "video_id": _ref("VideoId"),
        "seq": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "Position in the video's stream; null while held for review.",
        },
        "epoch": {"type": ["integer", "null"], "minimum": 0},
        "user_id": _ref("Id"),
        "author": {"type": "string", "description": "The author's username."},
        "text": {"type": ["string", "null"], "description": "Null once deleted."},
        "parent_id": _nullable(_ref("Id")),
        "status": {
            "type": "string",
            "enum": [events.STATUS_VISIBLE, events.STATUS_HELD, events.STATUS_DELETED],
        },
        "created_at": timestamp,
        "created_at_ms": {"type": ["integer", "null"]},
        "edited_at": timestamp,
        "rev": {
            "type": "integer",
            "minimum": 0,
            "description": "How many times the comment changed; clients keep the newest.",
        },
        "reactions": _ref("ReactionCounts"),
    }


def _text(max_chars: int, *, optional: bool = False) -> Schema:
    """Free text as ``livecomments.comment_service.validation`` accepts it."""
    rules = (
        "NFC-normalised and trimmed by the service, then 1 to "
        f"{max_chars} characters without control, bidirectional-override, private-use or "
        "unassigned characters, at least one of them visible."
    )
    if optional:
        return {
            "type": ["string", "null"],
            "maxLength": max_chars,
            "pattern": TEXT_PATTERN,
            "description": f"Optional: absent, null or blank means none. Otherwise {rules}",
        }
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": TEXT_PATTERN,
        "description": rules,
    }


def _schemas(settings: CommentServiceSettings) -> dict[str, Schema]:
    comment = _comment_properties()
    moderated_at = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Id": {
            "type": "string",
            "pattern": ID_PATTERN,
            "maxLength": 19,
            "description": "A positive int64 as a decimal string.",
            "examples": ["123456789012345678"],
        },
        "VideoId": {
            "type": "string",
            "pattern": VIDEO_ID_PATTERN,
            "minLength": 1,
            "maxLength": MAX_VIDEO_ID,
            "examples": ["launch-stream_2026"],
        },
        "Role": {"type": "string", "enum": list(ROLES)},
        "ReactionName": {"type": "string", "enum": list(EMOJI)},
        "ReactionCounts": {
            "type": "object",
            "propertyNames": _ref("ReactionName"),
            "additionalProperties": {"type": "integer", "minimum": 1},
            "description": "How many users reacted, by reaction name (absent: none).",
        },
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": {"type": "string", "description": "Stable, for programs."},
                        "message": {"type": "string", "description": "For people."},
                        "details": {"type": "object"},
                    },
                    required=["code", "message"],
                )
            }
        ),
        "Comment": _object(comment),
        "CommentWithReplies": _object(
            {
                **comment,
                "reply_count": {"type": "integer", "minimum": 0},
                "replies": {
                    "type": "array",
                    "items": _ref("Comment"),
                    "maxItems": REPLY_PREVIEW,
                    "description": f"The first {REPLY_PREVIEW} replies, oldest first.",
                },
            }
        ),
        "HeldComment": _object(
            {
                **comment,
                "score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "state": {"type": "string", "enum": ["pending", "approved", "denied"]},
            }
        ),
        "Page": {
            **_object(
                {
                    "video_id": _ref("VideoId"),
                    "items": {"type": "array", "items": _ref("CommentWithReplies")},
                    "head": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "The newest seq taken (some may still be in flight).",
                    },
                    "resume": {
                        "type": "string",
                        "pattern": "^[0-9]+-[0-9]+$",
                        "description": (
                            "The SSE event id to open the stream with (`Last-Event-ID`, or"
                            " `last_event_id=` on the stream URL): every seq up to it is in"
                            " this page or older ones (or is a change, a reply or a void),"
                            " and what was still being written is after it, so the stream"
                            " replays it. Resuming from `head` instead can lose comments."
                        ),
                    },
                    "next_before": {"type": ["integer", "null"], "minimum": 1},
                    "next_after": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "description": "More is ready: ask again at once with after=next_after.",
                    },
                    "poll_after": {
                        "type": "integer",
                        "minimum": 0,
                        "description": (
                            "Oldest-first pages: every seq up to this one is settled; a"
                            " short-polling client sends it as after= on its next poll."
                            " Pages stop before a seq that is still being written."
                        ),
                    },
                },
                required=["video_id", "items", "head", "resume"],
            ),
            # Newest-first pages carry next_before, oldest-first (after=) ones next_after.
            "oneOf": [{"required": ["next_before"]}, {"required": ["next_after"]}],
        },
        "Replies": _object(
            {
                "video_id": _ref("VideoId"),
                "parent_id": _ref("Id"),
                "items": {"type": "array", "items": _ref("Comment")},
                "next_after": {"type": ["integer", "null"], "minimum": 1},
            }
        ),
        "PublicUser": _object(
            {"id": _ref("Id"), "username": {"type": "string"}, "role": _ref("Role")}
        ),
        "Session": _object(
            {
                "user": _ref("PublicUser"),
                "token": {"type": "string", "description": "A JWT for the Authorization header."},
                "token_type": {"type": "string", "const": "Bearer"},
                "expires_in": {"type": "integer", "const": settings.jwt_ttl},
            }
        ),
        "UserDetails": _object(
            {
                "id": _ref("Id"),
                "username": {"type": "string"},
                "role": _ref("Role"),
                "report_count": {"type": "integer", "minimum": 0},
                "flagged": {"type": "boolean"},
                "flagged_at": moderated_at,
                "created_at": moderated_at,
            }
        ),
        "UserList": _object({"items": {"type": "array", "items": _ref("UserDetails")}}),
        "Report": _object(
            {
                "id": _ref("Id"),
                "comment_id": _ref("Id"),
                "video_id": _ref("VideoId"),
                "reason": {"type": "string", "enum": list(REPORT_REASONS)},
                "note": {"type": "string", "maxLength": 500},
                "reporter_id": _ref("Id"),
                "status": {"type": "string", "enum": list(REPORT_STATES)},
                "created_at": {"type": "string", "format": "date-time"},
                "comment": _ref("Comment"),
            }
        ),
        "ReportPage": _object(
            {
                "items": {"type": "array", "items": _ref("Report")},
                "next_before": _nullable(_ref("Id")),
            }
        ),
        "Resolution": _object(
            {
                "comment_id": _ref("Id"),
                "status": {"type": "string", "enum": ["dismissed", "actioned"]},
                "settled": {"type": "integer", "minimum": 0},
                "comment": _nullable(_ref("Comment")),
            }
        ),
        "HeldPage": _object(
            {
                "items": {"type": "array", "items": _ref("HeldComment")},
                "next_before": _nullable(_ref("Id")),
            }
        ),
        "Ban": _object(
            {
                "user_id": _ref("Id"),
                "username": {"type": ["string", "null"]},
                "video_id": _nullable(_ref("VideoId")),
                "reason": {"type": "string", "maxLength": 200},
                "banned_by": _ref("Id"),
                "banned_by_role": {
                    "type": ["string", "null"],
                    "enum": [*ROLES, None],
                    "description": "The role of who set it, then (null for older bans). Only "
                    "an admin can change or lift a ban an admin set.",
                },
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "Null for a ban, set for a timeout.",
                },
            }
        ),
        "BanList": _object({"items": {"type": "array", "items": _ref("Ban")}}),
        "VideoSettings": _object(
            {
                "video_id": _ref("VideoId"),
                "slow_mode_seconds": {"type": "integer", "minimum": 0},
            }
        ),
        "ReactionSet": _object(
            {
                "reactions": {
                    "type": "array",
                    "items": _object({"name": _ref("ReactionName"), "emoji": {"type": "string"}}),
                }
            }
        ),
        "ReactionResult": _object(
            {
                "comment_id": _ref("Id"),
                "reaction": _ref("ReactionName"),
                "reacted": {"type": "boolean", "description": "True for PUT, false for DELETE."},
                "changed": {
                    "type": "boolean",
                    "description": "False when the caller had already (not) reacted so.",
                },
                "reactions": _ref("ReactionCounts"),
            }
        ),
        "Health": _object(
            {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "zookeeper": {"type": "string", "enum": ["CONNECTED", "SUSPENDED", "LOST"]},
                "worker_id": {"type": "integer", "minimum": 0},
                "dispatchers": {"type": "integer", "minimum": 0},
                "rtms_nodes": {"type": "integer", "minimum": 0},
                "dispatch_failures": {"type": "integer", "minimum": 0},
                "dispatch_undelivered": {"type": "integer", "minimum": 0},
                "outbox_redispatched": {"type": "integer", "minimum": 0},
                "outbox_fenced": {"type": "integer", "minimum": 0},
                "history_pages": {
                    "type": "object",
                    "description": "History pages answered from the recent-comments cache"
                    " and from the store, since start.",
                    "properties": {
                        "cache": {"type": "integer", "minimum": 0},
                        "store": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
                "history_cache_entries_read": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Entries history pages read from the recent-comments cache"
                    " (their items and reply previews), since start: what pages cost.",
                },
            }
        ),
        # -- request bodies --
        "Credentials": _object(
            {
                "username": {
                    "type": "string",
                    "pattern": USERNAME_PATTERN,
                    "description": "3-32 letters, digits or underscores; unique ignoring case.",
                },
                "password": {"type": "string", "minLength": 8, "maxLength": 128},
            }
        ),
        "NewAccount": _object(
            {
                "username": {
                    "type": "string",
                    "pattern": USERNAME_PATTERN,
                    "description": "3-32 letters, digits or underscores; unique ignoring case.",
                },
                "password": {
                    "type": "string",
                    "minLength": MIN_PASSWORD,
                    "maxLength": 128,
                    "description": f"At least {MIN_PASSWORD} characters, not containing the "
                    "username, and not one of the 10,000 most common passwords (nor one of "
                    "them with digits or punctuation added at either end).",
                },
            }
        ),
        "CommentText": _text(settings.max_comment_chars),
        "NewComment": _object(
            {"text": _ref("CommentText"), "parent_id": _nullable(_ref("Id"))},
            required=["text"],
        ),
        "CommentEdit": _object({"text": _ref("CommentText")}),
        "NewReport": _object(
            {
                "reason": {"type": "string", "enum": list(REPORT_REASONS)},
                "note": _text(500, optional=True),
            },
            required=["reason"],
        ),
        "ReportResolution": _object({"action": {"type": "string", "enum": ["dismiss", "delete"]}}),
        "BanRequest": _object(
            {
                "duration_seconds": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": MAX_BAN_SECONDS,
                    "description": (
                        f"A timeout of this many seconds; absent or null: a ban. {_WHOLE}"
                    ),
                },
                "reason": _text(200, optional=True),
            },
            required=[],
        ),
        "VideoSettingsChange": _object(
            {
                "slow_mode_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": settings.max_slow_mode,
                    "description": (
                        f"Seconds a viewer waits between comments; 0 turns it off. {_WHOLE}"
                    ),
                }
            }
        ),
        "RoleChange": _object({"role": _ref("Role")}),
    }


# -- responses and parameters ----------------------------------------------------------


def _error(description: str, codes: list[str], headers: dict[str, Any] | None = None) -> Schema:
    """An error response whose ``error.code`` is one of ``codes``."""
    schema = {
        "allOf": [_ref("Error")],
        "properties": {"error": {"properties": {"code": {"enum": sorted(set(codes))}}}},
    }
    response: Schema = {
        "description": f"{description} (codes: {', '.join(sorted(set(codes)))})",
        "content": _json(schema),
    }
    if headers:
        response["headers"] = headers
    return response


def _ok(description: str, schema: str) -> Schema:
    return {"description": description, "content": _json(_ref(schema))}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _param(name: str, where: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


VIDEO = _param("video_id", "path", _ref("VideoId"), "The video.")
COMMENT = _param("comment_id", "path", _ref("Id"), "The comment.")
USER = _param("user_id", "path", _ref("Id"), "The user.")
REACTION = _param("reaction", "path", _ref("ReactionName"), "Which reaction.")
REPORT = _param("report_id", "path", _ref("Id"), "The report.")


def _limit_param(maximum: int) -> Schema:
    schema = {"type": "integer", "minimum": 1, "maximum": maximum, "default": 50}
    return _param("limit", "query", schema, f"Items per page, at most {maximum}.")


def _before_id() -> Schema:
    return _param("before", "query", _ref("Id"), "Only items older than this id (the cursor).")


class _Op:
    """Collects one operation's parameters, body and responses."""

    def __init__(self, settings: CommentServiceSettings, summary: str, tag: str) -> None:
        self.settings = settings
        self.doc: Schema = {"summary": summary, "tags": [tag], "responses": {}}
        self.notes: list[str] = []
        self.errors: dict[int, list[str]] = {}

    def params(self, *params: Schema) -> _Op:
        self.doc.setdefault("parameters", []).extend(params)
        if any(p["name"] == "video_id" and p["in"] == "path" for p in params):
            self.error(400, "invalid_video_id")
        if any(p["in"] == "path" and p["schema"] == _ref("Id") for p in params):
            self.error(400, "invalid_id")
        if any(p["in"] == "path" for p in params):
            self.error(404, "not_found")  # an empty path segment matches no route
        if any(p["in"] == "query" for p in params):
            self.error(400, "invalid_query")
        return self

    def auth(self, role: str = "viewer") -> _Op:
        self.doc["security"] = [{"bearerAuth": []}]
        self.doc["x-required-role"] = role  # for programs (and the tests) to pick a token
        self.error(401, *_AUTH_ERRORS)
        self.error(503, *_BACKEND_ERRORS)
        if role == "viewer":
            self.notes.append("Auth: a bearer token (any logged-in user).")
        else:
            self.notes.append(
                f"Auth: a bearer token of a user whose current role (read from the store, "
                f"not the token) is {role}{' or admin' if role == 'moderator' else ''}."
            )
            self.error(403, "forbidden")
        return self

    def public(self) -> _Op:
        self.doc["security"] = []
        self.notes.append("Auth: none (public).")
        return self

    def rate(self, *limits: tuple[str, str]) -> _Op:
        """Rate limits as (settings field, what it counts per)."""
        if not limits:
            self.notes.append("Rate limit: none.")
            return self
        parts = []
        for field, per in limits:
            spec = getattr(self.settings, field)
            count, _, seconds = spec.partition("/")
            parts.append(
                f"`{field}` = {spec} per {per} (bursts of {count}, refilled at {count} "
                f"per {seconds} s)"
            )
        self.notes.append(f"Rate limit: {'; '.join(parts)}; over it: 429 with Retry-After.")
        self.error(429, "rate_limited")
        return self

    def body(self, schema: str, max_bytes: int) -> _Op:
        self.doc["requestBody"] = {
            "required": True,
            "description": f"A JSON object of at most {max_bytes} bytes.",
            "content": _json(_ref(schema)),
        }
        self.error(400, *_BODY_ERRORS)
        self.error(413, "payload_too_large")
        self.error(415, "unsupported_media_type")
        return self

    def error(self, status: int, *codes: str) -> _Op:
        self.errors.setdefault(status, []).extend(codes)
        return self

    def ok(self, status: int, description: str, schema: str | None = None) -> _Op:
        if schema is None:
            self.doc["responses"][str(status)] = {"description": description}
        else:
            self.doc["responses"][str(status)] = _ok(description, schema)
        return self

    def describe(self, text: str) -> _Op:
        self.notes.insert(0, text)
        return self

    def build(self) -> Schema:
        titles = {
            400: "The request is malformed or a value is out of range",
            401: "No valid bearer token",
            403: "Not allowed",
            404: "Not found",
            409: "Conflicts with the current state",
            413: "The body is too large",
            415: "The body is not application/json",
            422: "Refused (by the content filter, or a reused idempotency key)",
            429: "Too many requests",
            503: "A backend is unavailable; retry later",
        }
        for status, codes in sorted(self.errors.items()):
            headers = _RETRY_AFTER if status == 429 else None
            self.doc["responses"][str(status)] = _error(titles[status], codes, headers)
        self.doc["description"] = "\n\n".join(self.notes)
        return self.doc


def _paths(settings: CommentServiceSettings) -> dict[str, Any]:
    s = settings
    page_max = s.history_page_max

    def op(summary: str, tag: str) -> _Op:
        return _Op(s, summary, tag)

    comments = "/api/videos/{video_id}/comments"
    comment = comments + "/{comment_id}"
    ops: dict[str, dict[str, _Op]] = {
        "/": {"get": op("The viewer page", "misc").public().rate().ok(200, "The HTML page.", None)},
        "/healthz": {
            "get": op("Health of this replica", "misc")
            .public()
            .rate()
            .ok(200, "Always 200; `status` says degraded without ZooKeeper.", "Health")
        },
        "/api/openapi.json": {
            "get": op("This document", "misc").public().rate().ok(200, "OpenAPI 3.1.", None)
        },
        "/api/auth/register": {
            "post": op("Create an account and log in", "accounts")
            .public()
            .rate(("register_limit_ip", "client IP"))
            .body("NewAccount", SMALL_BODY)
            .error(400, "invalid_type", "invalid_username", "invalid_password", "weak_password")
            .error(409, "username_taken")
            .error(503, *_BACKEND_ERRORS)
            .ok(201, "The new account and its token.", "Session")
        },
        "/api/auth/login": {
            "post": op("Log in", "accounts")
            .public()
            .describe(
                "An unknown username and a wrong password get the same answer. Failed logins "
                "to one account from one address lock that pair (429 `login_locked`); failed "
                f"logins to one account from all addresses past `login_backoff_account` = "
                f"{s.login_backoff_account} make addresses the account has not logged in "
                f"from (in the last {s.login_known_address_days:g} days) wait between "
                f"attempts, {s.login_backoff_first:g} s doubling up to "
                f"{s.login_backoff_max:g} s (429 `login_backoff`)."
            )
            .rate(
                ("login_limit_account", "failed login to one username from one client IP"),
                ("login_limit_ip", "client IP"),
            )
            .body("Credentials", SMALL_BODY)
            .error(400, "invalid_type", "invalid_username", "invalid_password")
            .error(401, "invalid_credentials")
            .error(429, "login_locked", "login_backoff")
            .error(503, *_BACKEND_ERRORS)
            .ok(200, "The account and a new token.", "Session")
        },
        "/api/auth/logout": {
            "post": op("Log out (revoke this token)", "accounts")
            .auth()
            .rate()
            .ok(204, "The token is revoked until it would have expired.")
        },
        "/api/auth/me": {
            "get": op("The caller's account", "accounts")
            .auth()
            .rate()
            .error(404, "user_not_found")
            .ok(200, "The account.", "PublicUser")
        },
        "/api/reactions": {
            "get": op("The reaction set", "reactions")
            .public()
            .rate()
            .ok(200, "Reaction names and their emoji.", "ReactionSet")
        },
        comments: {
            "post": op("Post a comment or a reply", "comments")
            .describe(
                "The content filter publishes, holds (202) or refuses (422) it; moderators "
                "and admins skip the filter, slow mode and duplicate suppression "
                f"(same text within {s.duplicate_window:g} s)."
            )
            .describe(
                f"With an `{IDEMPOTENCY_HEADER}`, a retry (same user, video and key, within "
                f"`idempotency_window` = {s.idempotency_window:g} s) gets the first attempt's "
                "comment and status instead of a second comment, without meeting the rate "
                "limits again; 409 `idempotency_in_flight` (with Retry-After) while the first "
                "attempt is still running; 422 `idempotency_key_reused` for another text or "
                "parent under the same key. After a failed attempt the key may be retried."
            )
            .params(
                VIDEO,
                _param(
                    IDEMPOTENCY_HEADER,
                    "header",
                    {"type": "string", "pattern": "^" + IDEMPOTENCY_KEY.pattern + "$"},
                    "A key the client makes for this comment (a UUID, say) and sends again "
                    "with every retry of it.",
                ),
            )
            .auth()
            .rate(("post_limit_user", "user"), ("post_limit_ip", "client IP"))
            .body("NewComment", s.max_body_bytes)
            .error(400, "invalid_type", "empty_text", "text_too_long", "invalid_characters")
            .error(400, "invalid_id", "nested_reply", "invalid_idempotency_key")
            .error(403, "banned")
            .error(404, "parent_not_found", "comment_not_found")
            .error(409, "parent_deleted", "idempotency_in_flight")
            .error(422, "content_refused", "idempotency_key_reused")
            .error(429, "slow_mode", "duplicate_message")
            .ok(201, "Published: viewers receive it live.", "Comment")
            .ok(202, "Held for a moderator's review (status held, no seq yet).", "Comment"),
            "get": op("A page of history", "comments")
            .describe(
                "Top-level comments (deleted ones as tombstones) with their first replies. "
                "Newest first from `before` (a seq; default: the head), or oldest first "
                "after `after`; not both."
            )
            .params(
                VIDEO,
                _limit_param(page_max),
                _param(
                    "before",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_CURSOR},
                    "Only comments with a smaller seq (newest first).",
                ),
                _param(
                    "after",
                    "query",
                    {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_CURSOR},
                    "Only comments with a larger seq (oldest first).",
                ),
            )
            .public()
            .rate(
                ("history_limit_ip", "client IP (anonymous)"),
                ("history_limit_user", "user (logged in)"),
            )
            .describe(_CACHED)
            .error(503, *_BACKEND_ERRORS)
            .ok(200, "The page and the cursor to the next one.", "Page"),
        },
        comment: {
            "get": op("One comment", "comments")
            .params(VIDEO, COMMENT)
            .public()
            .rate(
                ("history_limit_ip", "client IP (anonymous)"),
                ("history_limit_user", "user (logged in)"),
            )
            .error(404, "comment_not_found")
            .error(503, *_BACKEND_ERRORS)
            .ok(200, "The comment (a tombstone once deleted).", "Comment"),
            "patch": op("Edit a comment", "moderation")
            .describe("The edit reaches viewers live as a comment.updated event.")
            .params(VIDEO, COMMENT)
            .auth("moderator")
            .rate()
            .body("CommentEdit", s.max_body_bytes)
            .error(400, "invalid_type", "empty_text", "text_too_long", "invalid_characters")
            .error(404, "comment_not_found")
            .error(409, "comment_deleted")
            .ok(200, "The edited comment.", "Comment"),
            "delete": op("Delete a comment", "comments")
            .describe(
                "Authors delete their own comments, moderators and admins any; a tombstone "
                "stays and viewers receive a comment.deleted event. Deleting twice is a no-op."
            )
            .params(VIDEO, COMMENT)
            .auth()
            .rate()
            .error(403, "forbidden")
            .error(404, "comment_not_found")
            .ok(200, "The tombstone.", "Comment"),
        },
        comment + "/replies": {
            "get": op("Replies to a comment", "comments")
            .params(
                VIDEO,
                COMMENT,
                _limit_param(page_max),
                _param(
                    "after",
                    "query",
                    {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_CURSOR},
                    "Only replies with a larger seq (the cursor).",
                ),
            )
            .public()
            .rate(
                ("history_limit_ip", "client IP (anonymous)"),
                ("history_limit_user", "user (logged in)"),
            )
            .describe(_CACHED)
            .error(404, "comment_not_found")
            .error(503, *_BACKEND_ERRORS)
            .ok(200, "Replies, oldest first.", "Replies"),
        },
        comment + "/reactions/{reaction}": {
            method: op(summary, "reactions")
            .describe("Each user counts once per comment and reaction; repeating is a no-op.")
            .params(VIDEO, COMMENT, REACTION)
            .error(400, "invalid_reaction")
            .auth()
            .rate(("react_limit_user", "user"))
            .error(404, "comment_not_found")
            .error(409, "comment_deleted")
            .ok(200, "The comment's new totals.", "ReactionResult")
            for method, summary in (("put", "React to a comment"), ("delete", "Take it back"))
        },
        "/api/videos/{video_id}/stream": {
            "get": op("Where to watch the live stream", "streams")
            .describe(
                "Redirects to the Server-Sent Events stream of the realtime node placed "
                "for the video, carrying the resume point along as `last_event_id`."
            )
            .params(
                VIDEO,
                _param(
                    "last_event_id",
                    "query",
                    {"type": "string"},
                    "Resume after this SSE event id (`<epoch>-<seq>`); others are ignored.",
                ),
                _param(
                    "Last-Event-ID",
                    "header",
                    {"type": "string"},
                    "What a browser's EventSource sends on reconnect; wins over the query.",
                ),
            )
            .public()
            .rate()
            .error(503, "no_rtms_node")
            .ok(307, "To the realtime node's stream."),
        },
        "/api/comments/{comment_id}/reports": {
            "post": op("Report a comment", "moderation")
            .describe(
                "Once a user's comments gather "
                f"{s.flag_threshold} reports the user is flagged for moderators."
            )
            .params(COMMENT)
            .auth()
            .rate(("report_limit_user", "user"))
            .body("NewReport", SMALL_BODY)
            .error(400, "invalid_field", "invalid_type", "empty_text", "text_too_long")
            .error(400, "invalid_characters")
            .error(400, "own_comment")
            .error(404, "comment_not_found")
            .error(409, "comment_deleted", "already_reported")
            .ok(201, "The report.", "Report"),
        },
        "/api/moderation/reports": {
            "get": op("Reports, newest first", "moderation")
            .params(
                _param(
                    "status",
                    "query",
                    {"type": "string", "enum": list(REPORT_STATES), "default": "open"},
                    "Which reports.",
                ),
                _before_id(),
                _limit_param(100),
            )
            .error(400, "invalid_field")
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .ok(200, "A page of reports.", "ReportPage"),
        },
        "/api/moderation/reports/{report_id}/resolve": {
            "post": op("Settle a report", "moderation")
            .describe(
                "Dismiss it, or delete the reported comment; either settles every open "
                "report of that comment."
            )
            .params(REPORT)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .body("ReportResolution", TINY_BODY)
            .error(400, "invalid_field")
            .error(404, "report_not_found")
            .ok(200, "What was done.", "Resolution"),
        },
        "/api/moderation/held": {
            "get": op("Comments held for review, newest first", "moderation")
            .params(
                _param("video_id", "query", _ref("VideoId"), "Only this video's."),
                _before_id(),
                _limit_param(100),
            )
            .error(400, "invalid_video_id")
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .ok(200, "A page of held comments.", "HeldPage"),
        },
        "/api/moderation/held/{comment_id}/approve": {
            "post": op("Publish a held comment", "moderation")
            .describe("It takes the video's next seq; approving twice returns the comment.")
            .params(COMMENT)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .error(404, "held_not_found")
            .error(409, "already_settled")
            .ok(200, "The published comment.", "Comment"),
        },
        "/api/moderation/held/{comment_id}/deny": {
            "post": op("Refuse a held comment", "moderation")
            .params(COMMENT)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .error(404, "held_not_found")
            .error(409, "already_settled")
            .ok(200, "The denied comment.", "HeldComment"),
        },
        "/api/moderation/flagged-users": {
            "get": op("Flagged users, most recently flagged first", "moderation")
            .params(_limit_param(100))
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .ok(200, "The flagged users.", "UserList"),
        },
        "/api/moderation/flagged-users/{user_id}": {
            "delete": op("Clear a user's flag", "moderation")
            .describe("Reviewed: the flag and the user's report count start over.")
            .params(USER)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .error(404, "user_not_found")
            .ok(200, "The user.", "UserDetails"),
        },
        "/api/videos/{video_id}/settings": {
            "get": op("A video's settings", "moderation")
            .params(VIDEO)
            .public()
            .rate()
            .error(503, *_BACKEND_ERRORS)
            .ok(200, "The settings (defaults for a video never configured).", "VideoSettings"),
            "patch": op("Change a video's settings", "moderation")
            .describe(f"Slow mode is at most `max_slow_mode` = {s.max_slow_mode} s.")
            .params(VIDEO)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .body("VideoSettingsChange", TINY_BODY)
            .error(400, "invalid_field")
            .ok(200, "The new settings.", "VideoSettings"),
        },
        "/api/users/{user_id}/role": {
            "put": op("Change a user's role", "moderation")
            .describe(
                "Admins make moderators and admins, or take the role back; not their own, "
                "and never the last admin's (409 `last_admin`)."
            )
            .params(USER)
            .auth("admin")
            .rate(("moderate_limit_user", "user"))
            .body("RoleChange", TINY_BODY)
            .error(400, "invalid_field", "own_account")
            .error(404, "user_not_found")
            .error(409, "last_admin")
            .ok(200, "The user with the new role.", "UserDetails"),
        },
    }
    for prefix, scope in (("/api", "every video"), ("/api/videos/{video_id}", "one video")):
        scoped = (VIDEO,) if "{video_id}" in prefix else ()
        ops[prefix + "/bans"] = {
            "get": op(f"Active bans and timeouts on {scope}", "moderation")
            .params(*scoped)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .ok(200, "The bans.", "BanList"),
        }
        ops[prefix + "/bans/{user_id}"] = {
            "put": op(f"Ban or time out a user on {scope}", "moderation")
            .describe(
                "Without `duration_seconds` a ban, with it a timeout (at most "
                f"{MAX_BAN_SECONDS} s). Moderators cannot ban moderators or admins, nobody "
                "can ban admins or themselves; banning again replaces the ban."
            )
            .params(*scoped, USER)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .body("BanRequest", SMALL_BODY)
            .error(400, "invalid_field", "invalid_type", "empty_text", "text_too_long")
            .error(400, "invalid_characters")
            .error(400, "own_account")
            .error(403, "ban_set_by_admin")
            .error(404, "user_not_found")
            .ok(200, "The ban.", "Ban"),
            "delete": op(f"Lift a ban or timeout on {scope}", "moderation")
            .params(*scoped, USER)
            .auth("moderator")
            .rate(("moderate_limit_user", "user"))
            .error(403, "ban_set_by_admin")
            .error(404, "ban_not_found")
            .ok(204, "Lifted."),
        }
    paths: dict[str, Any] = {}
    for path, methods in ops.items():
        paths[path] = {method: o.build() for method, o in methods.items()}
    # Bodies that are not JSON: the page, this document, the redirect.
    paths["/"]["get"]["responses"]["200"]["content"] = {"text/html": {"schema": {"type": "string"}}}
    paths["/api/openapi.json"]["get"]["responses"]["200"]["content"] = _json({"type": "object"})
    paths["/api/videos/{video_id}/stream"]["get"]["responses"]["307"]["headers"] = {
        "Location": {
            "description": "The stream's URL on the chosen realtime node.",
            "required": True,
            "schema": {"type": "string", "format": "uri"},
        }
    }
    return paths


@functools.lru_cache(maxsize=4)
def openapi_document(settings: CommentServiceSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a service running with ``settings``.

    Built once per settings and shared: callers must not modify it.
    """
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "livecomments comment service",
            "version": __version__,
            "description": (
                "Post and read live comments, react, moderate. Errors are JSON "
                '`{"error": {"code", "message", "details"?}}` with a stable `code`. Ids are '
                "positive int64 as decimal strings. Live comments arrive over Server-Sent "
                "Events from the realtime node `/api/videos/{video_id}/stream` redirects to."
            ),
        },
        "paths": _paths(settings),
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "From register or login; valid for `jwt_ttl` = "
                        f"{settings.jwt_ttl} s or until logout."
                    ),
                }
            },
        },
    }
    if settings.public_url:
        document["servers"] = [{"url": settings.public_url.rstrip("/")}]
    return document
