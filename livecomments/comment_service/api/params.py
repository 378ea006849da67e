"""Path, query and header parameters: one object reads a parameter and documents it.

A handler calls the parameter to read its value (or be refused); the routes
name the same object, and ``api/openapi.py`` lists it, with the refusals
reading it may answer, on each operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from livecomments.comment_service.api.schema import SETTINGS, Id, Setting, VideoId, limit
from livecomments.kernel.errors import ValidationError
from livecomments.kernel.ids import parse_id, valid_video_id

MAX_CURSOR = 1 << 62  # the largest seq a history cursor may name


class Param:
    """A parameter ``where`` ("path", "query" or "header"), its schema given as a type;
    the description may be a ``Setting.json`` text."""

    def __init__(
        self,
        name: str,
        where: str,
        schema: Any,
        description: str | dict[str, Any],
        errors: Mapping[int, tuple[str, ...]] | None = None,
    ) -> None:
        self.name = name
        self.where = where
        self.schema = schema
        self.description = description
        self.errors: dict[int, tuple[str, ...]] = dict(errors or {})
        if where == "path":  # an empty path segment matches no route
            self.errors[404] = (*self.errors.get(404, ()), "not_found")
        if where == "query":
            self.errors[400] = (*self.errors.get(400, ()), "invalid_query")


def video_id(value: str) -> str:
    if not valid_video_id(value):
        raise ValidationError("video ids are 1-64 of [A-Za-z0-9_-]", code="invalid_video_id")
    return value


class VideoPath(Param):
    def __init__(self) -> None:
        super().__init__("video_id", "path", VideoId, "The video.", {400: ("invalid_video_id",)})

    def __call__(self, request: web.Request) -> str:
        return video_id(request.match_info[self.name])


class IdPath(Param):
    def __init__(self, name: str, description: str) -> None:
        super().__init__(name, "path", Id, description, {400: ("invalid_id",)})

    def __call__(self, request: web.Request) -> int:
        number = parse_id(request.match_info[self.name])
        if number is None:
            raise ValidationError(
                f"{self.name} must be an id (a decimal string)",
                code="invalid_id",
                details={"field": self.name},
            )
        return number


class QueryInt(Param):
    """An integer in ``lo..hi`` (``hi`` may be a setting); absent or empty: ``default``."""

    def __init__(
        self,
        name: str,
        description: str | dict[str, Any],
        *,
        lo: int,
        hi: int | Setting,
        default: int | None = None,
    ) -> None:
        schema: dict[str, Any] = {
            "minimum": lo,
            "maximum": hi.json() if isinstance(hi, Setting) else hi,
        }
        if default is not None:
            schema["default"] = default
        super().__init__(name, "query", Annotated[int, Meta(extra_json_schema=schema)], description)
        self.lo, self.hi, self.default = lo, hi, default

    def __call__(self, request: web.Request) -> int | None:
        raw = request.query.get(self.name)
        if raw is None or raw == "":
            return self.default
        name = self.name
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise ValidationError(f"{name} must be a non-negative integer", code="invalid_query")
        value = int(raw)
        lo, hi = self.lo, limit(self.hi, request.app[SETTINGS])
        if not lo <= value <= hi:
            raise ValidationError(f"{name} must be between {lo} and {hi}", code="invalid_query")
        return value


class PageSize(QueryInt):
    """How many items a page holds, at most ``hi``: 50 unless asked."""

    def __init__(self, hi: int | Setting) -> None:
        what = "Items per page, at most {}."
        described = hi.json(what) if isinstance(hi, Setting) else what.format(hi)
        super().__init__("limit", described, lo=1, hi=hi, default=50)

    def __call__(self, request: web.Request) -> int:
        value = super().__call__(request)
        assert value is not None  # it has a default
        return value


class QueryId(Param):
    def __init__(self, name: str, description: str) -> None:
        super().__init__(name, "query", Id, description)

    def __call__(self, request: web.Request) -> int | None:
        raw = request.query.get(self.name)
        if raw is None or raw == "":
            return None
        number = parse_id(raw)
        if number is None:
            raise ValidationError(f"{self.name} must be an id", code="invalid_query")
        return number


class QueryVideo(Param):
    def __init__(self, description: str) -> None:
        super().__init__("video_id", "query", VideoId, description, {400: ("invalid_video_id",)})

    def __call__(self, request: web.Request) -> str | None:
        value = request.query.get(self.name) or None
        return None if value is None else video_id(value)


class QueryChoice(Param):
    """One of ``options`` (the first when absent)."""

    def __init__(self, name: str, options: tuple[str, ...], description: str) -> None:
        schema = {"type": "string", "enum": list(options), "default": options[0]}
        super().__init__(
            name,
            "query",
            Annotated[str, Meta(extra_json_schema=schema)],
            description,
            {400: ("invalid_field",)},
        )
        self.options = options

    def __call__(self, request: web.Request) -> str:
        value = request.query.get(self.name, self.options[0])
        if value not in self.options:
            raise ValidationError(
                f"{self.name} must be one of: {', '.join(self.options)}",
                code="invalid_field",
                details={"field": self.name, "allowed": list(self.options)},
            )
        return value


class Header(Param):
    """A request header the handler reads itself."""

    def __init__(self, name: str, schema: Any, description: str) -> None:
        super().__init__(name, "header", schema, description)

    def __call__(self, request: web.Request) -> str | None:
        return request.headers.get(self.name)


VIDEO = VideoPath()
COMMENT = IdPath("comment_id", "The comment.")
USER = IdPath("user_id", "The user.")
