"""The access log (``LIVECOMMENTS_ACCESS_LOG=true``): one record per request, errors included.

aiohttp calls :meth:`AccessLogger.log` once the answer is written, whatever
answered it (a handler, a middleware's JSON error, aiohttp's own 400 for a
malformed request), so the status, the bytes and the duration are the ones
the client got. Records go to the ``livecomments.access`` logger with the
fields as ``extra=``: in JSON logs each is a field of its own.

What is logged is chosen to keep cardinality and personal data low: the route
template (``/api/videos/{video_id}/comments``) next to the path, the path
without its query string and still percent-encoded (so it cannot carry a line
feed into a text log), and the client address as the trusted-proxy rules
decide it (``kernel/netaddr.py``).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from livecomments.comment_service.api.context import REQUEST_ID, client_ip

LOGGER = logging.getLogger("livecomments.access")
MAX_PATH = 512  # characters of a path logged; a longer one is cut (and says so)
MAX_AGENT = 256


def _route(request: web.BaseRequest) -> str | None:
    """The route template the request matched (None: no route, e.g. a 404 or 405)."""
    if not isinstance(request, web.Request):
        return None  # refused by aiohttp before routing (a malformed request)
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _client(request: web.BaseRequest) -> str:
    if isinstance(request, web.Request):
        return client_ip(request)
    return request.remote or "unknown"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class AccessLogger(AbstractAccessLogger):
    """Writes one record per request to its logger (the app runner makes one)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        request_id = request.get(REQUEST_ID)
        path = _cut(request.rel_url.raw_path, MAX_PATH)
        agent = _cut(request.headers.get("User-Agent", ""), MAX_AGENT)
        client = _client(request)
        duration_ms = round(time * 1000, 3)
        self.logger.info(
            "%s %s %s %d %dB %.1fms ua=%r request_id=%s",
            client, request.method, path, response.status, response.body_length,
            duration_ms, agent, request_id or "-",
            extra={
                "method": request.method,
                "route": _route(request),
                "path": path,
                "status": response.status,
                "duration_ms": duration_ms,
                "bytes": response.body_length,
                "client": client,
                "user_agent": agent,
                "request_id": request_id,
            },
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
