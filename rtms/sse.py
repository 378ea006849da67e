"""The HTTP side of an RTMS node: ``GET /stream/{video_id}`` as Server-Sent Events.

A bare ``asyncio.Protocol`` with the httptools parser (uvicorn's fast path)
instead of a full framework: an idle viewer costs this object, its transport
and its socket, a few KB, where aiohttp's request machinery costs ~10 KB.
After the request line and headers are parsed the parser is dropped; the
connection is then written to by the hub only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httptools
import orjson

from livecomments import events
from livecomments.errors import LiveCommentsError
from livecomments.ids import valid_video_id
from rtms.hub import Hub, Viewer

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
_REASONS = {
    200: "OK",
    204: "No Content",
    307: "Temporary Redirect",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class SSEListener:
    """Routes parsed requests; owns the listening socket."""

    def __init__(
        self,
        hub: Hub,
        *,
        retry_ms: int,
        cors_origins: tuple[str, ...],
        max_viewers: int,
        health: Callable[[], dict[str, Any]],
        elsewhere: Callable[[str], str | None] = lambda video_id: None,
    ) -> None:
        self.hub = hub
        self._elsewhere = elsewhere
        self._preamble = f"retry: {retry_ms}\n\n".encode()
        self._cors = cors_origins
        self._max_viewers = max_viewers
        self._health = health
        self.accepting = True
        self.connections: set[SSEProtocol] = set()

    def protocol(self) -> SSEProtocol:
        return SSEProtocol(self)

    def allow_origin(self, origin: bytes | None) -> bytes:
        """The one Access-Control-Allow-Origin line for this request (or nothing)."""
        if not self._cors:
            return b""
        if "*" in self._cors:
            return b"Access-Control-Allow-Origin: *\r\n"
        if origin is not None and origin.decode("latin-1") in self._cors:
            return b"Access-Control-Allow-Origin: " + origin + b"\r\nVary: Origin\r\n"
        return b""

    def handle(self, conn: SSEProtocol, method: bytes, path: str, query: str) -> None:
        cors = self.allow_origin(conn.origin)
        if method == b"OPTIONS":
            conn.respond(
                204,
                b"",
                cors + b"Access-Control-Allow-Methods: GET\r\n"
                b"Access-Control-Allow-Headers: Last-Event-ID, Cache-Control\r\n"
                b"Access-Control-Max-Age: 600\r\n",
            )
            return
        if method not in (b"GET", b"HEAD"):
            conn.error(405, "method_not_allowed", "only GET is served here", cors)
            return
        if path == "/healthz":
            conn.respond(200, orjson.dumps(self._health()), cors, content_type=b"application/json")
            return
        if not path.startswith("/stream/"):
            conn.error(404, "not_found", "no such endpoint", cors)
            return
        video_id = path[len("/stream/") :]
        if not valid_video_id(video_id):
            conn.error(400, "invalid_video_id", "video ids are 1-64 of [A-Za-z0-9_-]", cors)
            return
        if not self.accepting:
            conn.error(503, "shutting_down", "this node is shutting down", cors)
            return
        if self.hub.viewer_count >= self._max_viewers:
            conn.error(503, "node_full", "this node holds as many viewers as it can", cors)
            return
        params = parse_qs(query)
        raw_id = conn.last_event_id
        if raw_id is None:
            values = params.get("last_event_id")
            raw_id = values[-1] if values else None
        # A malformed id is treated as none at all: the viewer starts live.
        resume = events.parse_event_id(raw_id)
        # A viewer of a video placed elsewhere goes there, unless it was sent here
        # by a redirect or a `moved` event already (two views of placement that
        # differ for a moment must not bounce it back and forth).
        target = None if "redirected" in params else self._elsewhere(video_id)
        if target is not None:
            location = f"{target}/stream/{video_id}?redirected=1"
            if resume is not None:
                location += f"&last_event_id={events.event_id(*resume)}"
            extra = b"Location: " + location.encode() + b"\r\nCache-Control: no-store\r\n"
            conn.respond(307, b"", cors + extra)
            return
        head = (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache, no-store\r\n"
            b"X-Accel-Buffering: no\r\n" + cors + b"\r\n" + self._preamble
        )
        viewer = conn.viewer = Viewer(conn.transport)
        conn.attaching = asyncio.ensure_future(self._attach(conn, viewer, video_id, resume, head))

    async def _attach(
        self,
        conn: SSEProtocol,
        viewer: Viewer,
        video_id: str,
        resume: tuple[int, int] | None,
        head: bytes,
    ) -> None:
        try:
            await self.hub.attach(viewer, video_id, resume, head)
        except LiveCommentsError as exc:
            log.warning("cannot serve %s: %s", video_id, exc)
            conn.error(503, exc.code, exc.message, self.allow_origin(conn.origin))
        except Exception:
            log.exception("attaching a viewer of %s failed", video_id)
            conn.error(500, "internal", "internal error", self.allow_origin(conn.origin))
        finally:
            conn.attaching = None


class SSEProtocol(asyncio.Protocol):
    __slots__ = (
        "_listener",
        "_name",
        "_parser",
        "_size",
        "_url",
        "attaching",
        "last_event_id",
        "origin",
        "transport",
        "viewer",
    )

    def __init__(self, listener: SSEListener) -> None:
        self._listener = listener
        self._parser: Any = httptools.HttpRequestParser(self)
        self._url = b""
        self._name = b""
        self._size = 0
        self.transport: Any = None
        self.viewer: Viewer | None = None
        self.origin: bytes | None = None
        self.last_event_id: str | None = None
        self.attaching: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return  # streaming: whatever the client sends now is ignored
        self._size += len(data)
        if self._size > MAX_REQUEST_BYTES:
            self.error(431, "request_too_large", "request head too large", b"")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error(400, "bad_request", "upgrades are not supported", b"")
        except httptools.HttpParserError:
            self.error(400, "bad_request", "malformed HTTP request", b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        self._parser = None
        if self.viewer is not None:
            self._listener.hub.detach(self.viewer)
        if self.attaching is not None:
            self.attaching.cancel()

    # -- httptools callbacks --------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"last-event-id":
            self.last_event_id = value.decode("latin-1")
        elif lowered == b"origin":
            self.origin = value

    def on_message_complete(self) -> None:
        parser, self._parser = self._parser, None
        if parser is None:
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self.error(400, "bad_request", "malformed URL", b"")
            return
        path = (url.path or b"/").decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        self._listener.handle(self, parser.get_method(), path, query)

    # -- responses ------------------------------------------------------------

    def respond(
        self, status: int, body: bytes, extra: bytes, *, content_type: bytes = b"application/json"
    ) -> None:
        self._parser = None
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode()
            + b"Content-Type: "
            + content_type
            + b"\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode()
            + extra
            + b"\r\n"
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()

    def error(self, status: int, code: str, message: str, extra: bytes) -> None:
        self.respond(status, orjson.dumps({"error": {"code": code, "message": message}}), extra)
