"""Request/reply over one long-lived bidirectional gRPC stream.

A unary grpc.aio call pays for a new HTTP/2 stream, metadata and a deadline
each time; on the write path that setup cost more than the work. Both hops
(comment service -> dispatcher, dispatcher -> RTMS) therefore keep one stream
open per peer and send requests that carry an ``id``; the peer answers each
with a reply carrying the same id, in any order.

:class:`RequestStream` is the client side: ``request(message)`` stamps an id,
queues the message for the stream's one writer task (grpc.aio allows a single
write in flight per call, and a caller cancelled halfway through a write would
cancel the whole call) and returns a future for the reply. Every request has a
deadline. A stream that fails, ends, or lets a request outlive its deadline is
dead: every pending request fails with the owner's error, and a new stream is
opened on next use (:attr:`alive`). :class:`StreamChannel` is that owner: one
channel per peer, its current stream, and the GOAWAY watch.

Measured with an echo server on loopback (2 cores): ~145 us of client CPU per
request over a stream against ~250 us per unary call.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc

from livecomments.kernel.grpcauth import GrpcSecurity

log = logging.getLogger(__name__)

# For the channels that carry these streams. A stream may sit idle for long, so
# keepalive pings go on without data (by default gRPC stops after two), and a
# peer that stops answering them (its host vanished, no FIN) fails the stream
# within keepalive time + ping timeout. Short reconnect backoff: a restarted
# peer is reachable again within a second.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.http2.ping_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

# For the servers of these streams: accept those pings (the default allows one
# per 5 minutes without data and answers more with GOAWAY "too_many_pings").
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class StreamCounts:
    """Streams opened by the channels of one owner (for /metrics), and of those the
    ones opened again after the previous stream to the same peer died."""

    __slots__ = ("opened", "reopened")

    def __init__(self) -> None:
        self.opened = 0
        self.reopened = 0


class _Message(Protocol):
    id: int


Req = TypeVar("Req", bound=_Message)
Rep = TypeVar("Rep", bound=_Message)


class RequestStream(Generic[Req, Rep]):
    """One open bidirectional stream with replies matched to requests by id."""

    def __init__(
        self,
        call: Any,  # grpc.aio.StreamStreamCall: the stubs are untyped
        *,
        name: str,
        timeout: float,
        error: Callable[[str], Exception],
    ) -> None:
        self.name = name
        self._call = call
        self._timeout = timeout
        self._error = error
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Rep], asyncio.TimerHandle]] = {}
        self._outgoing: collections.deque[Req | None] = collections.deque()  # None: done writing
        self._wakeup = asyncio.Event()
        self._dead: str | None = None
        self._writer = asyncio.create_task(self._write_loop(), name=f"{name}-writer")
        self._reader = asyncio.create_task(self._read_loop(), name=f"{name}-reader")

    @property
    def alive(self) -> bool:
        """False once the stream failed, ended or was closed: open a new one."""
        return self._dead is None

    @property
    def in_flight(self) -> int:
        """Requests sent (or queued to be sent) and not answered yet."""
        return len(self._pending)

    def request(self, message: Req) -> asyncio.Future[Rep]:
        """Send ``message`` (its ``id`` is set here); the future gets the reply or the error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Rep] = loop.create_future()
        if self._dead is not None:
            future.set_exception(self._error(f"{self.name}: {self._dead}"))
            return future
        message.id = request_id = next(self._ids)
        timer = loop.call_later(self._timeout, self._expire, request_id)
        self._pending[request_id] = (future, timer)
        self._outgoing.append(message)
        self._wakeup.set()
        return future

    def close(self) -> None:
        """No new requests; those in flight still get their replies, then the stream ends."""
        if self._dead is not None:
            return
        if not self._pending:
            self.abort("closed")
            return
        self._dead = "closed"
        self._outgoing.append(None)
        self._wakeup.set()

    def abort(self, reason: str) -> None:
        """Cancel the call and fail every pending request with ``reason``."""
        if self._dead is None or self._dead == "closed":
            self._dead = reason
        pending, self._pending = self._pending, {}
        self._outgoing.clear()
        self._call.cancel()
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not current:
                task.cancel()
        if pending:
            error = self._error(f"{self.name}: {reason}")
            for future, timer in pending.values():
                timer.cancel()
                if not future.done():
                    future.set_exception(error)

    async def wait_closed(self) -> None:
        """Until the stream's tasks are finished (after :meth:`abort`, or the end of the stream)."""
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)

    def _expire(self, request_id: int) -> None:
        if request_id in self._pending:
            log.warning("%s: no reply within %.1f s", self.name, self._timeout)
            self.abort(f"no reply within {self._timeout:.1f} s")

    async def _write_loop(self) -> None:
        call, outgoing = self._call, self._outgoing
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while outgoing:
                    message = outgoing.popleft()
                    if message is None:
                        await call.done_writing()
                        return
                    await call.write(message)
        except grpc.aio.AioRpcError as exc:
            self.abort(f"{exc.code().name} {exc.details()}")
        except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            self.abort(f"stream finished: {exc}")
        except asyncio.CancelledError:
            if _stopping():
                raise
            self.abort("call cancelled")

    async def _read_loop(self) -> None:
        call, pending = self._call, self._pending
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                entry = pending.pop(reply.id, None)
                if entry is None:
                    continue  # its deadline passed; it was failed already
                future, timer = entry
                timer.cancel()
                if not future.done():
                    future.set_result(reply)
                if self._dead == "closed" and not pending:
                    break
        except grpc.aio.AioRpcError as exc:
            self.abort(f"{exc.code().name} {exc.details()}")
            return
        except asyncio.CancelledError:
            if _stopping():
                raise
            self.abort("call cancelled")
            return
        self.abort("stream ended")


def _stopping() -> bool:
    """Whether this task is being cancelled, rather than a grpc.aio call under it (a
    call cancelled because its channel closed raises CancelledError in its reader)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class StreamChannel(Generic[Req, Rep]):
    """A channel to one peer with at most one :class:`RequestStream` open on it.

    :meth:`stream` opens a stream on first use and again after one died. A peer
    that shuts down says GOAWAY at once but lets open streams run until its
    grace period ends; so when the channel leaves READY the open stream is
    half-closed: requests in flight still get their replies, the peer need not
    wait, and the next request opens a new stream (or finds the peer gone).
    """

    def __init__(
        self,
        address: str,
        open_call: Callable[[grpc.aio.Channel], Any],
        *,
        name: str,
        timeout: float,
        error: Callable[[str], Exception],
        security: GrpcSecurity | None = None,
        peer_role: str = "",
        counts: StreamCounts | None = None,
    ) -> None:
        self.address = address
        self._counts = counts if counts is not None else StreamCounts()
        # Mutual TLS, the peer checked to hold ``peer_role``'s certificate; plaintext
        # only when ``security`` says so (None: for in-process test servers).
        security = security or GrpcSecurity.insecure()
        self._channel = security.channel(address, peer_role, CHANNEL_OPTIONS)
        self._open_call = open_call
        self._name = name
        self._timeout = timeout
        self._error = error
        self._stream: RequestStream[Req, Rep] | None = None
        self._watch = asyncio.create_task(self._watch_goaway(), name=f"{name}-watch")

    def stream(self) -> RequestStream[Req, Rep]:
        stream = self._stream
        if stream is None or not stream.alive:
            self._counts.opened += 1
            self._counts.reopened += stream is not None
            stream = self._stream = RequestStream(
                self._open_call(self._channel),
                name=self._name,
                timeout=self._timeout,
                error=self._error,
            )
        return stream

    async def _watch_goaway(self) -> None:
        ready = grpc.ChannelConnectivity.READY
        state = self._channel.get_state(try_to_connect=False)
        while True:
            await self._channel.wait_for_state_change(state)
            was, state = state, self._channel.get_state(try_to_connect=False)
            if was is ready and state is not ready and self._stream is not None:
                self._stream.close()

    async def close(self, *, graceful: bool = False) -> None:
        """Close the stream (``graceful``: after its requests in flight) and the channel."""
        self._watch.cancel()
        if self._stream is not None:
            if graceful:
                self._stream.close()
            else:
                self._stream.abort("closed")
            await self._stream.wait_closed()
        await asyncio.gather(self._watch, return_exceptions=True)
        await self._channel.close()
