"""What a text or an id in a request must be, once its body has decoded (``api/body.py``).

Text is NFC-normalised and trimmed, then free of control and
bidirectional-override characters and not blank.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from livecomments.kernel.errors import ValidationError
from livecomments.kernel.ids import parse_id

# Bidi overrides/isolates and other invisible controls abused to disguise text.
_FORBIDDEN_FORMAT = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Allowed inside a text (ZWJ joins emoji, combining marks accent letters), but a
# text of nothing else draws nothing: the "blank message" trick. The Hangul
# fillers and the blank braille pattern are letters and symbols that draw nothing.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Zs", "Zl", "Zp"})
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")


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
