"""Request bodies: strict JSON objects of known, string-typed fields.

Only plain strings reach the store, so ``{"$gt": ""}`` style operator
injection has nowhere to go; text is NFC-normalised and free of control and
bidirectional-override characters.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import orjson
from aiohttp import web

from livecomments.kernel.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationError,
)
from livecomments.kernel.ids import parse_id

# Bidi overrides/isolates and other invisible controls abused to disguise text.
_FORBIDDEN_FORMAT = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Allowed inside a text (ZWJ joins emoji, combining marks accent letters), but a
# text of nothing else draws nothing: the "blank message" trick. The Hangul
# fillers and the blank braille pattern are letters and symbols that draw nothing.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Zs", "Zl", "Zp"})
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")


async def json_object(
    request: web.Request, max_bytes: int, allowed: frozenset[str]
) -> dict[str, Any]:
    """The request body as a JSON object with only ``allowed`` keys."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the body is not valid UTF-8", code="invalid_encoding") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(
            f"unknown field(s): {', '.join(unknown)[:200]}",
            code="unknown_field",
            details={"allowed": sorted(allowed)},
        )
    return body


def comment_text(value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(
            "text must be a string", code="invalid_type", details={"field": "text"}
        )
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise ValidationError("text must not be empty", code="empty_text")
    if len(text) > max_chars:
        raise ValidationError(
            f"text is longer than {max_chars} characters",
            code="text_too_long",
            details={"max": max_chars},
        )
    visible = False
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs", "Co", "Cn") or ch in _FORBIDDEN_FORMAT:
            raise ValidationError(
                "text contains control or invisible characters",
                code="invalid_characters",
                details={"codepoint": f"U+{ord(ch):04X}"},
            )
        visible = visible or (category not in _INVISIBLE_CATEGORIES and ch not in _BLANK)
    if not visible:
        raise ValidationError("text has no visible characters", code="empty_text")
    return text


def optional_id(value: Any, field: str) -> int | None:
    if value is None:
        return None
    number = parse_id(value)
    if number is None:
        raise ValidationError(
            f"{field} must be an id as a decimal string",
            code="invalid_id",
            details={"field": field},
        )
    return number


def query_int(
    request: web.Request, name: str, *, lo: int, hi: int, default: int | None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ValidationError(f"{name} must be a non-negative integer", code="invalid_query")
    value = int(raw)
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}", code="invalid_query")
    return value


def optional_int(value: Any, field: str, *, lo: int, hi: int) -> int | None:
    """An optional integer field (JSON numbers only: booleans and floats are refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(
            f"{field} must be an integer between {lo} and {hi}",
            code="invalid_field",
            details={"field": field},
        )
    return value


def plain_text(value: Any, field: str, max_chars: int) -> str:
    """An optional free-text field (a reason, a note): "" when absent."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(
            f"{field} must be a string", code="invalid_type", details={"field": field}
        )
    if not value.strip():
        return ""
    return comment_text(value, max_chars)


def choice(value: Any, field: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValidationError(
            f"{field} must be one of: {', '.join(options)}",
            code="invalid_field",
            details={"field": field, "allowed": list(options)},
        )
    return value


def path_id(request: web.Request, name: str) -> int:
    number = parse_id(request.match_info[name])
    if number is None:
        raise ValidationError(
            f"{name} must be an id (a decimal string)", code="invalid_id", details={"field": name}
        )
    return number


def query_id(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    number = parse_id(raw)
    if number is None:
        raise ValidationError(f"{name} must be an id", code="invalid_query")
    return number
