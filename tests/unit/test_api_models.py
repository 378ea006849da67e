"""The API's models: bodies are refused with the codes of before, views fit their schemas."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec
import orjson
import pytest

from livecomments.comment_service.api.accounts import CREDENTIALS, PublicUser
from livecomments.comment_service.api.comments import NEW_COMMENT
from livecomments.comment_service.api.moderation import (
    BAN_REQUEST,
    NEW_REPORT,
    ROLE_CHANGE,
    SETTINGS_CHANGE,
    Ban,
    HeldComment,
    Report,
    UserDetails,
)
from livecomments.comment_service.api.openapi import openapi_document
from livecomments.comment_service.api.schema import Comment
from livecomments.kernel import events
from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.settings import CommentServiceSettings

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)


def refused(body: Any, raw: bytes) -> tuple[str, dict[str, Any]]:
    with pytest.raises(LiveCommentsError) as caught:
        body.decode(raw)
    return caught.value.code, caught.value.details


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"text": "hi"', "invalid_json"),
        (b'["hi"]', "invalid_json"),
        (b'{"text": 42}', "invalid_type"),
        (b'{"text": null}', "invalid_type"),
        (b"{}", "invalid_type"),
        (b'{"text": {"$gt": ""}}', "invalid_type"),
        (b'{"text": ["a", "b"]}', "invalid_type"),
        (b'{"text": "hi", "parent_id": {"$ne": null}}', "invalid_id"),
        (b'{"text": "hi", "parent_id": 12}', "invalid_id"),
        (b'{"text": "hi", "parent_id": "-1"}', "invalid_id"),
        (b'{"text": "hi", "$where": "1"}', "unknown_field"),
        (b'{"text": "\xff\xfe"}', "invalid_encoding"),
        (b'{"text": "\\ud800"}', "invalid_json"),
        (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
        (b'{"x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "invalid_json"),
        # Several wrong fields: the first in the model's order, as the handler read them.
        (b'{"parent_id": {}, "text": 5}', "invalid_type"),
        # An unknown field is named before a wrong one.
        (b'{"text": 5, "zz": 1}', "unknown_field"),
    ],
)
def test_comment_bodies_are_refused_with_the_codes_of_before(raw: bytes, code: str) -> None:
    assert refused(NEW_COMMENT, raw)[0] == code


def test_a_good_body_decodes_once_into_its_model() -> None:
    body = NEW_COMMENT.decode(b'{"text": "hi", "parent_id": "12345"}')
    assert (body.text, body.parent_id) == ("hi", "12345")
    assert NEW_COMMENT.decode(b'{"text": "hi"}').parent_id is None


def test_unknown_fields_are_all_named() -> None:
    with pytest.raises(LiveCommentsError) as caught:
        NEW_COMMENT.decode(b'{"text": "hi", "b": 1, "a": 2}')
    assert caught.value.code == "unknown_field"
    assert "a, b" in caught.value.message
    assert caught.value.details == {"allowed": ["parent_id", "text"]}


@pytest.mark.parametrize(
    ("body", "raw", "code"),
    [
        (CREDENTIALS, b'{"username": {"$gt": ""}, "password": {"$gt": ""}}', "invalid_type"),
        (CREDENTIALS, b'{"username": "alice"}', "invalid_type"),
        (BAN_REQUEST, b'{"duration_seconds": true}', "invalid_field"),
        (BAN_REQUEST, b'{"duration_seconds": 100.0}', "invalid_field"),
        (BAN_REQUEST, b'{"duration_seconds": 0}', "invalid_field"),
        (BAN_REQUEST, b'{"duration_seconds": 99999999999}', "invalid_field"),
        (BAN_REQUEST, b'{"reason": 5}', "invalid_type"),
        (NEW_REPORT, b'{"reason": "boring"}', "invalid_field"),
        (NEW_REPORT, b"{}", "invalid_field"),
        (NEW_REPORT, b'{"reason": "spam", "note": []}', "invalid_type"),
        (ROLE_CHANGE, b'{"role": "god"}', "invalid_field"),
        (SETTINGS_CHANGE, b"{}", "invalid_field"),
        (SETTINGS_CHANGE, b'{"slow_mode_seconds": -1}', "invalid_field"),
        (SETTINGS_CHANGE, b'{"slow_mode_seconds": "5"}', "invalid_field"),
    ],
)
def test_other_bodies_are_refused_with_their_field_codes(body: Any, raw: bytes, code: str) -> None:
    got, details = refused(body, raw)
    assert got == code
    assert "field" in details


def test_an_enum_refusal_lists_the_allowed_values() -> None:
    _, details = refused(ROLE_CHANGE, b'{"role": "god"}')
    assert details == {"field": "role", "allowed": ["viewer", "moderator", "admin"]}


def test_optional_fields_may_be_null_or_absent() -> None:
    ban = BAN_REQUEST.decode(b'{"duration_seconds": null}')
    assert (ban.duration_seconds, ban.reason) == (None, None)
    assert BAN_REQUEST.decode(b'{"duration_seconds": 60, "reason": "rude"}').duration_seconds == 60


def comment_doc(**changes: Any) -> dict[str, Any]:
    doc = {
        "_id": 123456789012345678,
        "video_id": "v1",
        "seq": 7,
        "epoch": 1,
        "user_id": 42,
        "author": "alice",
        "text": "hello",
        "status": "visible",
        "created_at": NOW,
        "created_at_ms": 1,
        "reactions": {"like": 2},
    }
    return {**doc, **changes}


def fits(model: type[Any], view: Any) -> None:
    """``view`` encodes to JSON its model decodes (every field, none extra, constraints kept)."""
    msgspec.json.decode(msgspec.json.encode(view), type=model)


def test_the_views_fit_their_models() -> None:
    fits(Comment, events.comment_json(comment_doc()))
    fits(Comment, events.comment_json(comment_doc(status="deleted", parent_id=5)))
    held = comment_doc(seq=None, status="held", state="pending", score=0.75, reasons=["link"])
    fits(HeldComment, HeldComment.of(held))
    user = {"_id": 42, "username": "alice", "role": "moderator", "created_at": NOW}
    fits(UserDetails, UserDetails.of(user))
    fits(PublicUser, PublicUser.of(user))
    ban = {"user_id": 42, "scope": "*", "by": 7, "by_role": "admin", "created_at": NOW}
    fits(Ban, Ban.of(ban))
    fits(Ban, Ban.of({**ban, "scope": "v1", "expires_at": NOW, "reason": "spam"}))
    report = {
        "_id": 9,
        "comment_id": 123456789012345678,
        "video_id": "v1",
        "reason": "spam",
        "reporter_id": 43,
        "status": "open",
        "created_at": NOW,
        "comment": events.comment_json(comment_doc()),
    }
    fits(Report, Report.of(report))


def test_the_document_has_every_setting_filled_in() -> None:
    settings = CommentServiceSettings(jwt_secret="x" * 32, max_slow_mode=77, jwt_ttl=99)
    document = orjson.dumps(openapi_document(settings)).decode()
    assert not re.search(r'"x-(?!required-role)', document)  # no marker is left
    schemas = openapi_document(settings)["components"]["schemas"]
    assert schemas["VideoSettingsChange"]["properties"]["slow_mode_seconds"]["maximum"] == 77
    assert schemas["Session"]["properties"]["expires_in"]["const"] == 99
    assert "1 to 500 characters" in schemas["CommentText"]["description"]
