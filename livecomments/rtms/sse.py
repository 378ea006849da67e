"""The HTTP side of an RTMS node: ``GET /stream/{video_id}`` as Server-Sent Events.

A bare ``asyncio.Protocol`` with the httptools parser (uvicorn's fast path)
instead of a full framework: an idle viewer costs this object, its transport
and its socket, a few KB, where aiohttp's request machinery costs ~10 KB.
After the request line and headers are parsed the parser is dropped; the
connection is then written to by the hub only.

Limits (each refusal is a JSON error with ``Retry-After``): the request head
must arrive within ``head_timeout`` (408); connections that are not streaming
yet are capped per node and per peer address (503 ``node_busy``, 429
``too_many_connections``); streams and first viewers of videos the node does
not host yet are capped per client address (429 ``too_many_streams``,
``too_many_joins``). The client address is the peer's, or what a trusted proxy
says in X-Forwarded-For (``livecomments.kernel.netaddr``); an IPv6 client counts by its /64.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httptools
import orjson

from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.ids import valid_video_id
from livecomments.kernel.logs import about
from livecomments.kernel.metrics import CONTENT_TYPE
from livecomments.kernel.netaddr import TrustedProxies, limit_key
from livecomments.kernel.rates import Rate
from livecomments.kernel.stream import Position, stream_url
from livecomments.rtms.channel import Viewer
from livecomments.rtms.hub import Hub
from livecomments.rtms.limits import Buckets

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
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


_METRICS_TYPE = CONTENT_TYPE.encode()

# Retry-After (seconds) of the refusals that no bucket times.
RETRY_BUSY = 1  # too many connections not streaming yet: they settle within a second
RETRY_STREAMS = 10  # an address at its stream cap: streams end slowly
RETRY_UNAVAILABLE = 2  # a backend did not answer


def _release(counts: dict[str, int], key: str) -> None:
    """One fewer for ``key``; keys at zero are removed, so the map holds live ones only."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class SSEListener:
    """Routes parsed requests, applies the connection limits; owns the listening socket."""

    def __init__(
        self,
        hub: Hub,
        *,
        retry_ms: int,
        cors_origins: tuple[str, ...],
        max_viewers: int,
        health: Callable[[], dict[str, Any]],
        readiness: Callable[[], tuple[int, dict[str, Any]]] = lambda: (
            200,
            {"ready": True, "reasons": []},
        ),
        elsewhere: Callable[[str], str | None] = lambda video_id: None,
        head_timeout: float = 10.0,
        max_unattached: int = 2000,
        max_unattached_per_peer: int = 100,
        max_streams_per_address: int = 1000,
        join_limit_address: str = "20/10",
        trusted_proxies: tuple[str, ...] = (),
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.hub = hub
        self._metrics = metrics  # None: /metrics is on the admin listener, not here
        self._elsewhere = elsewhere
        self._preamble = f"retry: {retry_ms}\n\n".encode()
        self._cors = cors_origins
        self._max_viewers = max_viewers
        self._health = health
        self._readiness = readiness
        self.head_timeout = head_timeout
        self._max_unattached = max_unattached
        self._max_unattached_per_peer = max_unattached_per_peer
        self._max_streams = max_streams_per_address
        self._joins = Buckets(Rate.parse(join_limit_address))
        self.trusted = TrustedProxies(trusted_proxies)
        self.accepting = True
        self.connections: set[SSEProtocol] = set()
        self.unattached = 0  # connections not streaming yet (head pending, or joining)
        self._unattached_by_peer: dict[str, int] = {}
        self._streams_by_address: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # refusals by error code, for /healthz
        self.head_timeouts = 0

    def protocol(self) -> SSEProtocol:
        return SSEProtocol(self)

    # -- connection accounting ----------------------------------------------

    def opened(self, conn: SSEProtocol) -> None:
        """A new connection: counted as not streaming until it attaches or closes."""
        self.connections.add(conn)
        self.unattached += 1
        conn.unattached = True
        peer = conn.peer
        if peer is not None and not self.trusted.trusts(peer):
            conn.peer_key = key = limit_key(peer)
            self._unattached_by_peer[key] = self._unattached_by_peer.get(key, 0) + 1
            if self._unattached_by_peer[key] > self._max_unattached_per_peer:
                self.refuse(
                    conn, 429, "too_many_connections",
                    "too many connections from this address are not streaming yet", RETRY_BUSY,
                )  # fmt: skip
                return
        if self.unattached > self._max_unattached:
            self.refuse(
                conn, 503, "node_busy",
                "this node has too many connections not streaming yet", RETRY_BUSY,
            )  # fmt: skip
            return
        conn.deadline = asyncio.get_running_loop().call_later(self.head_timeout, conn.head_missed)

    def settled(self, conn: SSEProtocol) -> None:
        """The connection streams now, or is gone: it no longer counts as unattached."""
        if not conn.unattached:
            return
        conn.unattached = False
        self.unattached -= 1
        if conn.peer_key is not None:
            _release(self._unattached_by_peer, conn.peer_key)

    def closed(self, conn: SSEProtocol) -> None:
        self.connections.discard(conn)
        self.settled(conn)
        key, conn.stream_key = conn.stream_key, None
        if key is not None:
            _release(self._streams_by_address, key)

    def refuse(
        self, conn: SSEProtocol, status: int, code: str, message: str, retry_after: float
    ) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1
        extra = (
            self.allow_origin(conn.origin)
            + f"Retry-After: {max(1, math.ceil(retry_after))}\r\n".encode()
        )
        conn.error(status, code, message, extra)

    def _admit_stream(self, conn: SSEProtocol, video_id: str) -> bool:
        """The per-address limits on streams and on first viewers of new videos."""
        address = self.trusted.client(conn.peer, conn.forwarded_for)
        key = limit_key(address)
        if self._streams_by_address.get(key, 0) >= self._max_streams:
            self.refuse(
                conn, 429, "too_many_streams",
                "too many streams from this address on this node", RETRY_STREAMS,
            )  # fmt: skip
            return False
        if not self.hub.hosts(video_id):
            wait = self._joins.take(key)
            if wait:
                self.refuse(
                    conn, 429, "too_many_joins",
                    "too many new videos opened from this address", wait,
                )  # fmt: skip
                return False
        conn.stream_key = key
        self._streams_by_address[key] = self._streams_by_address.get(key, 0) + 1
        return True

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
        if path == "/readyz":
            self.ready(conn, cors)
            return
        if path == "/metrics" and self._metrics is not None:
            conn.respond(200, self._metrics(), b"", content_type=_METRICS_TYPE)
            return
        if not path.startswith("/stream/"):
            conn.error(404, "not_found", "no such endpoint", cors)
            return
        video_id = path[len("/stream/") :]
        if not valid_video_id(video_id):
            conn.error(400, "invalid_video_id", "video ids are 1-64 of [A-Za-z0-9_-]", cors)
            return
        if not self.accepting:
            self.refuse(conn, 503, "shutting_down", "this node is shutting down", RETRY_BUSY)
            return
        if self.hub.viewer_count >= self._max_viewers:
            self.refuse(
                conn, 503, "node_full", "this node holds as many viewers as it can", RETRY_STREAMS
            )
            return
        params = parse_qs(query)
        raw_id = conn.last_event_id
        if raw_id is None:
            values = params.get("last_event_id")
            raw_id = values[-1] if values else None
        # A malformed id is treated as none at all: the viewer starts live.
        resume = Position.parse(raw_id)
        # A viewer of a video placed elsewhere goes there, unless it was sent here
        # by a redirect or a `moved` event already (two views of placement that
        # differ for a moment must not bounce it back and forth).
        target = None if "redirected" in params else self._elsewhere(video_id)
        if target is not None:
            location = stream_url(target, video_id, resume)
            extra = b"Location: " + location.encode() + b"\r\nCache-Control: no-store\r\n"
            conn.respond(307, b"", cors + extra)
            return
        if not self._admit_stream(conn, video_id):
            return
        head = (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache, no-store\r\n"
            b"X-Accel-Buffering: no\r\n" + cors + b"\r\n" + self._preamble
        )
        viewer = conn.viewer = Viewer(conn.transport)
        conn.attaching = asyncio.ensure_future(self._attach(conn, viewer, video_id, resume, head))

    def ready(self, conn: SSEProtocol, cors: bytes) -> None:
        """200 or 503 with ``{"ready", "reasons"}`` (``livecomments.kernel.readiness``)."""
        status, body = self._readiness()
        conn.respond(status, orjson.dumps(body), cors + b"Cache-Control: no-store\r\n")

    async def _attach(
        self,
        conn: SSEProtocol,
        viewer: Viewer,
        video_id: str,
        resume: Position | None,
        head: bytes,
    ) -> None:
        try:
            await self.hub.attach(viewer, video_id, resume, head)
        except LiveCommentsError as exc:
            log.warning("cannot serve %s: %s", video_id, exc, extra=about(video_id))
            status = exc.status if exc.status in (429, 503) else 503
            retry = exc.headers.get("Retry-After", str(RETRY_UNAVAILABLE))
            self.refuse(conn, status, exc.code, exc.message, float(retry))
        except Exception:
            log.exception("attaching a viewer of %s failed", video_id, extra=about(video_id))
            conn.error(500, "internal", "internal error", self.allow_origin(conn.origin))
        finally:
            conn.attaching = None
        if viewer.channel is not None:
            self.settled(conn)


class SSEProtocol(asyncio.Protocol):
    __slots__ = (
        "_listener",
        "_name",
        "_parser",
        "_size",
        "_url",
        "attaching",
        "deadline",
        "forwarded_for",
        "last_event_id",
        "origin",
        "peer",
        "peer_key",
        "stream_key",
        "transport",
        "unattached",
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
        self.forwarded_for: str | None = None
        self.attaching: asyncio.Future[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.peer: str | None = None
        self.peer_key: str | None = None  # counted in the per-peer unattached connections
        self.stream_key: str | None = None  # counted in the per-address streams
        self.unattached = False

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername:
            self.peer = str(peername[0])
        # Flow control for the replay and `moved` writes: paused above half the
        # per-viewer bound, so a write of the other half never passes it.
        budget = self._listener.hub.write_budget
        transport.set_write_buffer_limits(high=budget, low=budget // 4)
        self._listener.opened(self)

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
        self._parser = None
        self._cancel_deadline()
        self._listener.closed(self)
        if self.viewer is not None:
            self._listener.hub.detach(self.viewer)
        if self.attaching is not None:
            # Only this request stops waiting: a channel it was creating, or a
            # history page it was reading, belongs to the node (see Hub.channel).
            self.attaching.cancel()

    def pause_writing(self) -> None:
        if self.viewer is not None:
            self.viewer.pause_writing()

    def resume_writing(self) -> None:
        if self.viewer is not None:
            self.viewer.resume_writing()

    def head_missed(self) -> None:
        """The head deadline passed: 408, unless the head is complete by now."""
        self.deadline = None
        if self._parser is not None:
            self._listener.head_timeouts += 1
            self.error(408, "request_timeout", "the request head took too long", b"")

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    # -- httptools callbacks --------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"last-event-id":
            self.last_event_id = value.decode("latin-1")
        elif lowered == b"origin":
            self.origin = value
        elif lowered == b"x-forwarded-for":
            hops = value.decode("latin-1")
            # Several headers are one list, in order.
            self.forwarded_for = (
                hops if self.forwarded_for is None else f"{self.forwarded_for},{hops}"
            )

    def on_message_complete(self) -> None:
        parser, self._parser = self._parser, None
        if parser is None:
            return
        self._cancel_deadline()
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
        self._cancel_deadline()
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
