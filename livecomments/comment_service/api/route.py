"""A route: its handler, and what the OpenAPI document says of it that no model can.

Who may call it (``role``), its rate limits (settings fields), the error codes
it answers beyond those its parameters, body and role imply, its successful
answers and notes for people. ``api/openapi.py`` turns the routes of every
area into the document; ``install`` puts them in the app's router.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from livecomments.comment_service.api.body import JsonBody
from livecomments.comment_service.api.params import Param

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BACKEND_ERRORS = ("unavailable", "coordination_timeout")


@dataclasses.dataclass(frozen=True)
class Ok:
    """A successful answer: its status, and its body's model (None: no body)."""

    status: int
    description: str
    model: Any = None
    media_type: str = "application/json"
    headers: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    answers: tuple[Ok, ...]
    # Paragraphs of the description, before the auth and rate notes; "{s.field}" is
    # the value of a settings field (formatted with the settings as ``s``).
    notes: tuple[str, ...] = ()
    role: str | None = None  # the least role that may call it; None: public
    rates: tuple[tuple[str, str], ...] = ()  # (settings field, what it counts per)
    params: tuple[Param, ...] = ()
    body: JsonBody[Any] | None = None
    errors: Mapping[int, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def install(app: web.Application, routes: Iterable[Route]) -> None:
    """Put ``routes`` in the app's router."""
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)  # HEAD too
        else:
            app.router.add_route(route.method, route.path, route.handler)
