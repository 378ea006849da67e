"""The vocabulary the API's models share: ids, names, texts, the error body, a comment.

Request bodies, JSON views and the OpenAPI components are msgspec Structs
(``Model``): msgspec checks a body against its model while decoding it, a view
is encoded from its model, and ``api/openapi.py`` generates the document's
schemas from the models, so the three cannot drift apart. What a model cannot
say with a type travels in its JSON schema as data:

- ``Setting``: a limit the settings fix (the longest comment, the slow mode
  cap), filled in when the document is built for those settings; the handler
  enforces it with the same settings;
- ``COMPONENT``: a named type (``Id``, ``VideoId``, ``CommentText``...), listed
  once under ``components/schemas`` and referenced wherever it is used;
- ``ENUM``: an enum's values in the order given (msgspec sorts them).

A model's ``json_schema`` ClassVar is merged into its component (what no single
field says, such as "one of these two cursors").

A type's ``Meta(extra={"code": ..., "message": ...})`` is what a body field of
that type that does not decode is refused with (``api/body.py``); without it,
``invalid_type``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from livecomments.comment_service.auth import ROLES
from livecomments.comment_service.reactions import EMOJI
from livecomments.kernel import events
from livecomments.kernel.ids import MAX_VIDEO_ID
from livecomments.kernel.settings import CommentServiceSettings

COMPONENT = "x-component"  # a schema named so becomes a component (api/openapi.py)
SETTING = "x-setting"  # a schema value that is a setting's (Setting.json)
ENUM = "x-enum"  # an enum in its order (msgspec sorts a Literal's values)

VIDEO_ID_PATTERN = f"^[A-Za-z0-9_-]{{1,{MAX_VIDEO_ID}}}$"
# A positive int64 as a decimal string (leading zeros are tolerated, 19 digits
# at most); the int64 upper bound itself is beyond a regular expression.
ID_PATTERN = "^0*[1-9][0-9]*$"
# Characters a stored text may not contain (comment_service.validation.comment_text):
# C0/C1 controls and bidi overrides and isolates. Private-use and unassigned code
# points are refused too, but a portable pattern cannot name them.
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]*$"
TEXT_RULES = (
    "NFC-normalised and trimmed by the service, then 1 to {} characters without control, "
    "bidirectional-override, private-use or unassigned characters, at least one of them visible."
)
# The service reads integers strictly: a JSON Schema "integer" also admits 100.0.
WHOLE = "A JSON integer literal (100.0 is refused)."


# The settings the service runs with (api/context.py has the other app keys).
SETTINGS = web.AppKey("settings", CommentServiceSettings)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A field of ``CommentServiceSettings``: a limit a model or a route states."""

    name: str

    def of(self, settings: CommentServiceSettings) -> Any:
        return getattr(settings, self.name)

    def json(self, template: str | None = None) -> dict[str, Any]:
        """Its place in a JSON schema: the value, or ``template`` formatted with it."""
        return {SETTING: self.name, "template": template}


def limit(value: int | Setting, settings: CommentServiceSettings) -> int:
    """``value`` itself, or the setting's value."""
    return value.of(settings) if isinstance(value, Setting) else value


class Model(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A closed JSON object: a body with a field its model lacks is refused, and every
    schema says ``additionalProperties: false``."""


_LITERAL: Any = Literal  # Literal of values known at run time (mypy sees the aliases below as str)


def one_of(values: tuple[str, ...], component: str | None = None) -> Any:
    """A string among ``values``, which msgspec checks; the schema lists them in this order."""
    schema: dict[str, Any] = {"type": "string", ENUM: list(values)}
    if component is not None:
        schema[COMPONENT] = component
    extra = {"code": "invalid_field", "message": f"must be one of: {', '.join(values)}"}
    return Annotated[
        _LITERAL[values], Meta(extra_json_schema=schema, extra={**extra, "allowed": list(values)})
    ]


def text(max_chars: int | Setting, *, optional: bool = False, component: str | None = None) -> Any:
    """Free text as ``validation.comment_text`` accepts it (the handler runs it: it
    normalises before it counts, so its limits cannot be msgspec's)."""
    rules = ("Optional: absent, null or blank means none. Otherwise " if optional else "") + (
        TEXT_RULES
    )
    chars: Any
    described: Any
    if isinstance(max_chars, Setting):
        chars, described = max_chars.json(), max_chars.json(rules)
    else:
        chars, described = max_chars, rules.format(max_chars)
    schema: dict[str, Any] = {"maxLength": chars, "pattern": TEXT_PATTERN, "description": described}
    if not optional:
        schema["minLength"] = 1
    if component is not None:
        schema[COMPONENT] = component
    base: Any = str | None if optional else str
    return Annotated[base, Meta(extra_json_schema=schema, extra={"message": "must be a string"})]


Id = Annotated[
    str,
    Meta(
        pattern=ID_PATTERN,
        max_length=19,
        description="A positive int64 as a decimal string.",
        examples=["123456789012345678"],
        extra_json_schema={COMPONENT: "Id"},
        extra={"code": "invalid_id", "message": "must be an id as a decimal string"},
    ),
]
VideoId = Annotated[
    str,
    Meta(
        pattern=VIDEO_ID_PATTERN,
        min_length=1,
        max_length=MAX_VIDEO_ID,
        examples=["launch-stream_2026"],
        extra_json_schema={COMPONENT: "VideoId"},
        extra={"code": "invalid_video_id", "message": "must be 1-64 of [A-Za-z0-9_-]"},
    ),
]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Count = Annotated[int, Meta(ge=0)]
if TYPE_CHECKING:
    Role = str
    ReactionName = str
    CommentStatus = str
else:
    Role = one_of(ROLES, "Role")
    ReactionName = one_of(tuple(EMOJI), "ReactionName")
    CommentStatus = one_of((events.STATUS_VISIBLE, events.STATUS_HELD, events.STATUS_DELETED))
ReactionCounts = Annotated[
    dict[ReactionName, Annotated[int, Meta(ge=1)]],
    Meta(
        description="How many users reacted, by reaction name (absent: none).",
        extra_json_schema={COMPONENT: "ReactionCounts"},
    ),
]


class ErrorBody(Model):
    code: Annotated[str, Meta(description="Stable, for programs.")]
    message: Annotated[str, Meta(description="For people.")]
    details: dict[str, Any] | UnsetType = UNSET


class Error(Model):
    """Every refusal (``LiveCommentsError.to_json``); each operation lists its codes."""

    error: ErrorBody


class Comment(Model):
    """A comment as the API shows it (``events.comment_json``).

    The live stream sends the same comment compact (``events.stream_json``): without
    the fields the stream says or that are at their default (README, "SSE events").
    """

    id: Id
    video_id: VideoId
    seq: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="Position in the video's stream; null while held for review."),
    ]
    epoch: Count | None
    user_id: Id
    author: Annotated[str, Meta(description="The author's username.")]
    text: Annotated[str | None, Meta(description="Null once deleted.")]
    parent_id: Id | None
    status: CommentStatus
    created_at: Timestamp | None
    created_at_ms: int | None
    edited_at: Timestamp | None
    rev: Annotated[
        int,
        Meta(ge=0, description="How many times the comment changed; clients keep the newest."),
    ]
    reactions: ReactionCounts
