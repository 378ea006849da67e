"""The OpenAPI 3.1 document of the HTTP API (served at /api/openapi.json), made from the routes.

The schemas are generated from the models (``msgspec.json.schema_components``);
each operation from its ``Route``: parameters, body, answers, the error codes
it names and those its parameters, body, role and rate limits imply, and notes
saying who may call it and how often. The limits come from the settings the
service runs with; ``tests/system/test_openapi.py`` checks the paths against
the route table and fuzzes the running service against the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import msgspec

from livecomments import __version__
from livecomments.comment_service.api import (
    accounts,
    comments,
    misc,
    moderation,
    reactions,
    replay,
    streams,
)
from livecomments.comment_service.api.body import BODY_ERRORS
from livecomments.comment_service.api.route import BACKEND_ERRORS, Ok, Route
from livecomments.comment_service.api.schema import COMPONENT, ENUM, SETTING, Error, Model, limit
from livecomments.kernel.logs import REQUEST_ID_HEADER as REQUEST_ID_NAME
from livecomments.kernel.logs import REQUEST_ID_PATTERN
from livecomments.kernel.settings import CommentServiceSettings

Schema = dict[str, Any]

ROUTES: tuple[Route, ...] = (
    *misc.ROUTES,
    *accounts.ROUTES,
    *reactions.ROUTES,
    *comments.ROUTES,
    *streams.ROUTES,
    *moderation.ROUTES,
    *replay.ROUTES,
)
REF = "#/components/schemas/{name}"
AUTH_ERRORS = ("unauthorized", "invalid_token", "token_expired", "token_revoked")
TITLES = {
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
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}

# Every answer carries the request's id (app.py); the header is described once.
REQUEST_ID_HEADER = {
    "description": (
        "The request's id: the client's own `X-Request-ID` when it is 1-128 of "
        "`A-Za-z0-9._:+/=-`, else one the service made (any other value is replaced, "
        "never echoed). Every process that handles the request logs it, a posted "
        "comment's dispatcher and RTMS nodes included."
    ),
    "required": True,
    "schema": {"type": "string", "pattern": "^" + REQUEST_ID_PATTERN.pattern + "$"},
}
REQUEST_ID = {REQUEST_ID_NAME: {"$ref": "#/components/headers/RequestId"}}


@functools.lru_cache(maxsize=4)
def openapi_document(settings: CommentServiceSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a service running with ``settings``.

    Built once per settings and shared: callers must not modify it.
    """
    refs, schemas = _schemas()
    paths: dict[str, dict[str, Schema]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs, settings)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "livecomments comment service",
            "version": __version__,
            "description": (
                "Post and read live comments, react, moderate. Errors are JSON "
                '`{"error": {"code", "message", "details"?}}` with a stable `code`. Ids are '
                "positive int64 as decimal strings. Live comments arrive over Server-Sent "
                "Events from the realtime node `/api/videos/{video_id}/stream` redirects to. "
                "Send an `X-Request-ID` (1-128 of `A-Za-z0-9._:+/=-`) to follow a request "
                "through the logs; every answer carries the id it was given."
            ),
        },
        "paths": _settled(paths, settings),
        "components": {
            "schemas": _settled(schemas, settings),
            "headers": {"RequestId": REQUEST_ID_HEADER},
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


@functools.cache
def _schemas() -> tuple[dict[int, Schema], Schema]:
    """The schema of each type the routes name (by ``id``; mostly a $ref), and the
    components, with the settings still ``Setting`` markers."""
    types: list[Any] = [Error]
    for route in ROUTES:
        types += [p.schema for p in route.params]
        types += [ok.model for ok in route.answers if ok.model is not None]
        if route.body is not None:
            types.append(route.body.model)
    found, components = msgspec.json.schema_components(types, ref_template=REF)
    named: dict[str, Schema] = {}
    refs = {id(t): _named(s, named) for t, s in zip(types, found, strict=True)}
    schemas = {name: _named(schema, named) for name, schema in components.items()}
    extras = _model_schemas()
    for name, schema in schemas.items():
        schema.pop("title", None)
        schema.pop("description", None)  # a model's docstring is for the code's readers
        schema.update(extras.get(name, {}))
    return refs, {**schemas, **named}


def _model_schemas() -> dict[str, Schema]:
    """What models add to their component that no field says (a ``json_schema`` ClassVar)."""

    def models(cls: type[Model]) -> Iterator[type[Model]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from models(sub)

    return {m.__name__: vars(m)["json_schema"] for m in models(Model) if "json_schema" in vars(m)}


def _named(schema: Any, named: dict[str, Schema]) -> Any:
    """``schema`` with each type marked ``COMPONENT`` moved into ``named`` and referenced."""
    if isinstance(schema, list):
        return [_named(item, named) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _named(value, named) for key, value in schema.items()}
    if ENUM in out:
        out["enum"] = out.pop(ENUM)
    name = out.pop(COMPONENT, None)
    if name is None:
        return out
    # msgspec leaves "type" out of a dict key's schema (propertyNames): merge.
    seen = named.setdefault(name, out)
    if any(seen[key] != value for key, value in out.items() if key in seen):
        raise ValueError(f"two schemas are named {name}: {seen} and {out}")
    seen.update(out)
    return {"$ref": REF.format(name=name)}


def _operation(route: Route, refs: dict[int, Schema], settings: CommentServiceSettings) -> Schema:
    op: Schema = {"summary": route.summary, "tags": [route.tag], "responses": {}}
    errors: dict[int, set[str]] = {}

    def error(status: int, *codes: str) -> None:
        errors.setdefault(status, set()).update(codes)

    for status, codes in route.errors.items():
        error(status, *codes)
    if route.params:
        op["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "schema": refs[id(p.schema)],
                "description": p.description,
            }
            for p in route.params
        ]
        for p in route.params:
            for status, codes in p.errors.items():
                error(status, *codes)
    notes = [note.format(s=settings) for note in route.notes]
    if route.role is None:
        op["security"] = []
        notes.append("Auth: none (public).")
    else:
        op["security"] = [{"bearerAuth": []}]
        op["x-required-role"] = route.role  # for programs (and the tests) to pick a token
        error(401, *AUTH_ERRORS)
        error(503, *BACKEND_ERRORS)
        if route.role == "viewer":
            notes.append("Auth: a bearer token (any logged-in user).")
        else:
            admin = " or admin" if route.role == "moderator" else ""
            notes.append(
                "Auth: a bearer token of a user whose current role (read from the store, "
                f"not the token) is {route.role}{admin}."
            )
            error(403, "forbidden")
    if route.rates:
        notes.append(_rate_note(route.rates, settings))
        error(429, "rate_limited")
    else:
        notes.append("Rate limit: none.")
    if route.body is not None:
        max_bytes = limit(route.body.max_bytes, settings)
        op["requestBody"] = {
            "required": True,
            "description": f"A JSON object of at most {max_bytes} bytes.",
            "content": {"application/json": {"schema": refs[id(route.body.model)]}},
        }
        for status, codes in BODY_ERRORS.items():
            error(status, *codes)
        error(400, *route.body.codes)
    for ok in route.answers:
        op["responses"][str(ok.status)] = _answer(ok, refs)
    for status, refusals in sorted(errors.items()):
        op["responses"][str(status)] = _error(status, refusals)
    op["description"] = "\n\n".join(notes)
    return op


def _rate_note(limits: tuple[tuple[str, str], ...], settings: CommentServiceSettings) -> str:
    """Rate limits as (settings field, what it counts per)."""
    parts = []
    for field, per in limits:
        spec = getattr(settings, field)
        count, _, seconds = spec.partition("/")
        parts.append(
            f"`{field}` = {spec} per {per} (bursts of {count}, refilled at {count} per {seconds} s)"
        )
    return f"Rate limit: {'; '.join(parts)}; over it: 429 with Retry-After."


def _answer(ok: Ok, refs: dict[int, Schema]) -> Schema:
    answer: Schema = {"description": ok.description}
    if ok.model is not None:
        answer["content"] = {ok.media_type: {"schema": refs[id(ok.model)]}}
    answer["headers"] = {**REQUEST_ID, **(ok.headers or {})}
    return answer


def _error(status: int, codes: set[str]) -> Schema:
    """An error response whose ``error.code`` is one of ``codes``."""
    listed = sorted(codes)
    schema = {
        "allOf": [{"$ref": REF.format(name="Error")}],
        "properties": {"error": {"properties": {"code": {"enum": listed}}}},
    }
    response: Schema = {
        "description": f"{TITLES[status]} (codes: {', '.join(listed)})",
        "content": {"application/json": {"schema": schema}},
    }
    response["headers"] = {**REQUEST_ID, **RETRY_AFTER} if status == 429 else REQUEST_ID
    return response


def _settled(value: Any, settings: CommentServiceSettings) -> Any:
    """``value`` with every ``Setting`` marker filled in (a copy: the schemas are shared)."""
    if isinstance(value, list):
        return [_settled(item, settings) for item in value]
    if not isinstance(value, dict):
        return value
    if SETTING in value:
        setting = getattr(settings, value[SETTING])
        template = value.get("template")
        return setting if template is None else template.format(setting)
    return {key: _settled(item, settings) for key, item in value.items()}
