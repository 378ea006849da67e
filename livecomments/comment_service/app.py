"""The app: every area's routes (``api/``), and the middlewares every answer passes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from livecomments.comment_service import browser
from livecomments.comment_service.api import (
    accounts,
    comments,
    misc,
    moderation,
    reactions,
    replay,
    streams,
)
from livecomments.comment_service.api.context import (
    CORS,
    METRICS,
    OPENAPI,
    REQUEST_ID,
    SETTINGS,
    error_response,
    json_response,
)
from livecomments.comment_service.api.openapi import openapi_document
from livecomments.comment_service.metrics import UNMATCHED
from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.logs import REQUEST_ID_HEADER, request_id_from
from livecomments.kernel.settings import CommentServiceSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Give the request its id, and every answer (errors, redirects) its X-Request-ID.

    The client's own id is kept when it is sane (``kernel/logs.py``), else a new
    one is made: an arbitrary header never reaches a log line or an answer.
    """
    request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = request_id
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:  # not an error (errors_middleware answered those)
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every answer by route template, method and status (outermost: the final one)."""
    metrics = request.app.get(METRICS)
    if metrics is None:
        response: web.StreamResponse = await handler(request)
        return response
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect, or an error answered by aiohttp itself
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        metrics.request(route, request.method, status, time.perf_counter() - started)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except LiveCommentsError as exc:
        if exc.status >= 500:
            extra = {"request_id": request.get(REQUEST_ID)}
            log.warning("%s %s: %s", request.method, request.path, exc, extra=extra)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_response(
            {"error": {"code": code, "message": exc.reason}},
            exc.status,
            {"Allow": exc.headers.get("Allow", "")} if exc.status == 405 else None,
        )
    except Exception:
        extra = {"request_id": request.get(REQUEST_ID)}
        log.exception("unhandled error on %s %s", request.method, request.path, extra=extra)
        return json_response({"error": {"code": "internal", "message": "internal error"}}, 500)


@web.middleware
async def headers_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """CORS (preflights too) and the security headers, on every answer, errors included."""
    api = request.path.startswith("/api/")
    if api and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        refused = request.match_info.http_exception
        if isinstance(refused, web.HTTPMethodNotAllowed):  # a route, without OPTIONS itself
            cors = request.app[CORS].headers(request.headers.get("Origin"))
            headers = browser.preflight_headers(cors, refused.allowed_methods)
            return _secured(request, web.Response(status=204, headers=headers), api)
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:  # not an error (errors_middleware answered those)
        _secured(request, exc, api)
        raise
    return _secured(request, response, api)


def _secured(request: web.Request, response: web.StreamResponse, api: bool) -> web.StreamResponse:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", browser.API_CSP)
    settings = request.app[SETTINGS]
    if request.secure and settings.hsts_max_age > 0:
        headers.setdefault("Strict-Transport-Security", f"max-age={settings.hsts_max_age}")
    if api:
        headers.setdefault("Cache-Control", "no-store")
        for name, value in request.app[CORS].headers(request.headers.get("Origin")).items():
            if name == "Vary":
                vary = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
                if value not in vary:
                    headers["Vary"] = ", ".join([*vary, value])
            else:
                headers[name] = value
        if "Access-Control-Allow-Origin" in headers:
            headers["Access-Control-Expose-Headers"] = browser.EXPOSE_HEADERS
    return response


def build_app(settings: CommentServiceSettings) -> web.Application:
    """The app with every area's routes; the server then provides the services
    (``api/context.py``)."""
    app = web.Application(
        # Metrics outermost (the final status of every answer), then the request id
        # (on every answer, errors included).
        middlewares=[
            metrics_middleware,
            request_id_middleware,
            headers_middleware,
            errors_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[OPENAPI] = openapi_document(settings)
    misc.add_routes(app)
    accounts.add_routes(app)
    reactions.add_routes(app)
    comments.add_routes(app)
    streams.add_routes(app)
    moderation.add_routes(app)
    replay.add_routes(app)
    return app
