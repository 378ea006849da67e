"""Request bodies: a JSON object decoded straight into its model, once.

Each ``JsonBody`` holds a msgspec Decoder for its model, made at import: a good
body is checked (UTF-8, JSON, a closed object, field types, enums, ranges) in
the same pass that parses it. Only plain strings and integers reach the store,
so ``{"$gt": ""}`` style operator injection has nowhere to go.

A refused body is looked at again, slowly, to answer as the service always
has: first what is wrong with the JSON (``invalid_encoding``, ``invalid_json``,
``unknown_field`` naming every unknown field), then the first wrong field in
the model's order, an absent field read as null, refused with its type's code
(``schema.py``).
"""

from __future__ import annotations

import typing
from typing import Any, Generic, TypeVar

import msgspec
import orjson
from aiohttp import web

from livecomments.comment_service.api.schema import SETTINGS, Model, Setting, limit
from livecomments.kernel.errors import (
    BadRequest,
    LiveCommentsError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationError,
)

B = TypeVar("B", bound=Model)

# Refusals of every JSON body (the document lists them on each operation that takes one).
BODY_ERRORS = {
    400: ("invalid_encoding", "invalid_json", "unknown_field"),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
}


class _Field:
    """One field of a model, and how a wrong value of it is refused."""

    def __init__(self, name: str, hint: Any) -> None:
        self.name = name
        self.hint = hint
        extra = _extra(hint)
        self.code: str = extra.get("code", "invalid_type")
        self.message: str = extra.get("message", "has the wrong type")
        self.allowed: list[str] | None = extra.get("allowed")

    def refusal(self) -> ValidationError:
        details: dict[str, Any] = {"field": self.name}
        if self.allowed is not None:
            details["allowed"] = self.allowed
        return ValidationError(f"{self.name} {self.message}", code=self.code, details=details)


def _extra(hint: Any) -> dict[str, Any]:
    """The first ``Meta(extra=...)`` on a type, outermost first, looking through unions."""
    if typing.get_origin(hint) is typing.Annotated:
        base, *metadata = typing.get_args(hint)
        for meta in metadata:
            if isinstance(meta, msgspec.Meta) and meta.extra:
                return dict(meta.extra)
        return _extra(base)
    for arg in typing.get_args(hint):
        found = _extra(arg)
        if found:
            return found
    return {}


class JsonBody(Generic[B]):
    """A request body: a JSON object of model ``B`` of at most ``max_bytes`` bytes."""

    def __init__(self, model: type[B], max_bytes: int | Setting) -> None:
        self.model = model
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(model)
        hints = typing.get_type_hints(model, include_extras=True)
        self._fields = [_Field(name, hints[name]) for name in model.__struct_fields__]
        self._names = frozenset(model.__struct_fields__)

    @property
    def codes(self) -> set[str]:
        """The codes a wrong field is refused with."""
        return {field.code for field in self._fields}

    async def read(self, request: web.Request) -> B:
        if request.content_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        max_bytes = limit(self.max_bytes, request.app[SETTINGS])
        if request.content_length is not None and request.content_length > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        raw = await request.content.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        return self.decode(raw)

    def decode(self, raw: bytes) -> B:
        try:
            return self._decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            raise self._refusal(raw) from None

    def _refusal(self, raw: bytes) -> LiveCommentsError:
        """Why ``raw`` was refused, as the checks one by one see it."""
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return BadRequest("the body is not valid UTF-8", code="invalid_encoding")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return BadRequest("the body is not valid JSON", code="invalid_json")
        if not isinstance(body, dict):
            return BadRequest("the body must be a JSON object", code="invalid_json")
        unknown = sorted(set(body) - self._names)
        if unknown:
            return ValidationError(
                f"unknown field(s): {', '.join(unknown)[:200]}",
                code="unknown_field",
                details={"allowed": sorted(self._names)},
            )
        for field in self._fields:
            try:
                msgspec.convert(body.get(field.name), field.hint)
            except msgspec.ValidationError:
                return field.refusal()
        # msgspec refused what orjson and every field accept: JSON beyond what both parse alike.
        return BadRequest("the body is not valid JSON", code="invalid_json")
