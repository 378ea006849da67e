"""A TCP relay that holds every byte for a fixed one-way delay: a long link on loopback.

This container has no ``tc netem`` (no qdisc support), so the delay is made in
user space. Each direction of each connection is a queue of (release time,
chunk): a chunk read at ``t`` is written on at ``t + delay``, in the order it
was read (after the chunk before it, if the delay was lowered meanwhile), with
no loss and no bandwidth limit. It relays bytes and looks at none of them, so
TLS, HTTP/1.1 and HTTP/2 (gRPC) pass through as they are; a client that checks
the server's name still sees the server's certificate.

What it does not model: the TCP handshake is not delayed (the relay accepts at
once and dials the upstream at once), so a new connection costs no round trip
before its first byte (a TLS handshake, being bytes, does pay its round trips);
nor congestion control, slow start after idle or loss. Measure on warm
connections, as long-lived gRPC streams and keep-alive HTTP are.

Backpressure: a direction holding more than ``HIGH_WATER`` bytes not yet
released stops reading its source until it is under ``LOW_WATER``; a sink
whose write buffer is full (``pause_writing``) stops the releases, and so, in
turn, the reading.

Run alone (``python -m bench.delay_proxy 127.0.0.1:9801 --delay-ms 35``) it
prints ``{"port": P}`` once it listens, then reads JSON commands on stdin, one
a line, each answered with one JSON line: ``{"cmd": "delay", "ms": 75}`` sets
the delay of what is read from then on, ``{"cmd": "stats"}`` answers the
connections and bytes relayed since the previous ``stats`` and how late the
releases were against their due time (the relay's own error, from a busy event
loop). End of stdin stops it. ``bench.regions`` runs it so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import Any, cast

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
EOF = b""  # queued when the source half-closes: write_eof on release


class Stats:
    """What one relay moved, and how late its releases were."""

    __slots__ = ("bytes", "chunks", "connections", "late_max", "late_sum", "releases")

    def __init__(self) -> None:
        self.connections = 0
        self.bytes = 0
        self.chunks = 0
        self.releases = 0  # flushes that wrote something
        self.late_sum = 0.0  # seconds after the due time, summed over releases
        self.late_max = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "bytes": self.bytes,
            "chunks": self.chunks,
            "releases": self.releases,
            "late_ms_mean": self.late_sum / self.releases * 1e3 if self.releases else None,
            "late_ms_max": self.late_max * 1e3,
        }


class Pipe:
    """One direction of one connection: chunks from a source, to a sink ``delay`` later."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0  # bytes in the queue
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.sink_paused = False
        self.source_paused = False
        self.timer: asyncio.TimerHandle | None = None

    def feed(self, chunk: bytes | None) -> None:
        """A chunk read now (``EOF``: the source half-closed; None: it closed)."""
        release = time.monotonic() + self.proxy.delay
        if self.queue and release < self.queue[-1][0]:
            release = self.queue[-1][0]  # the delay was lowered: order still holds
        self.queue.append((release, chunk))
        if chunk:
            self.queued += len(chunk)
            self.proxy.stats.bytes += len(chunk)
            self.proxy.stats.chunks += 1
        self._schedule()
        self._throttle()

    def abandon(self) -> None:
        """The sink is gone: what was queued for it is dropped."""
        self.sink = None
        self.queue.clear()
        self.queued = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def sink_ready(self, transport: asyncio.Transport) -> None:
        self.sink = transport
        self._schedule()

    def set_sink_paused(self, paused: bool) -> None:
        self.sink_paused = paused
        if not paused:
            self._schedule()

    def _schedule(self) -> None:
        if self.timer is None and self.queue and self.sink is not None and not self.sink_paused:
            wait = max(0.0, self.queue[0][0] - time.monotonic())
            self.timer = asyncio.get_running_loop().call_later(wait, self._release)

    def _release(self) -> None:
        """Write what is due. A timer may fire a little early (uvloop counts whole
        milliseconds): then nothing is due yet and it is set again."""
        self.timer = None
        sink = self.sink
        if sink is None or self.sink_paused:
            return
        now = time.monotonic()
        due = self.queue[0][0] if self.queue else now
        chunks: list[bytes] = []
        end: bytes | None
        ended, end = False, EOF  # end: the marker met, EOF or None (closed)
        while self.queue and self.queue[0][0] <= now:
            _, chunk = self.queue.popleft()
            if not chunk:
                ended, end = True, chunk
                break
            chunks.append(chunk)
        if chunks:
            data = b"".join(chunks)
            self.queued -= len(data)
            sink.write(data)
            stats = self.proxy.stats
            stats.releases += 1
            stats.late_sum += now - due
            stats.late_max = max(stats.late_max, now - due)
        if ended and end is None:  # the source closed: so does the sink, once written
            sink.close()
            self.abandon()
            return
        if ended:  # the source half-closed
            if sink.can_write_eof():
                sink.write_eof()
            else:
                sink.close()
        self._schedule()
        self._throttle()

    def _throttle(self) -> None:
        source = self.source
        if source is None or source.is_closing():
            return
        if not self.source_paused and self.queued > HIGH_WATER:
            self.source_paused = True
            source.pause_reading()
        elif self.source_paused and self.queued < LOW_WATER:
            self.source_paused = False
            source.resume_reading()


class End(asyncio.Protocol):
    """One socket of a relayed connection: what it reads goes out on ``out``, what
    ``into`` releases is written to it. The client's end dials the upstream."""

    def __init__(self, proxy: DelayProxy, out: Pipe, into: Pipe, *, client: bool) -> None:
        self.proxy = proxy
        self.out = out
        self.into = into
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is no subclass of asyncio.Transport, hence no check).
        self.transport = tcp = cast(asyncio.Transport, transport)
        self.proxy.ends.add(self)
        self.out.source = tcp
        self.into.sink_ready(tcp)
        if self.client:
            self.proxy.dial(self)

    def data_received(self, data: bytes) -> None:
        self.out.feed(data)

    def eof_received(self) -> bool:
        self.out.feed(EOF)
        return True  # keep writing what the other way still brings

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.ends.discard(self)
        self.out.feed(None)
        self.out.source = None
        self.into.abandon()

    def pause_writing(self) -> None:
        self.into.set_sink_paused(True)

    def resume_writing(self) -> None:
        self.into.set_sink_paused(False)


class DelayProxy:
    """Listens on one address, relays every connection to ``upstream`` with ``delay``
    seconds each way."""

    def __init__(self, upstream_host: str, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.stats = Stats()
        self.ends: set[End] = set()
        self._server: asyncio.Server | None = None
        self._dials: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; answers the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, reuse_address=True)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def _accept(self) -> End:
        self.stats.connections += 1
        return End(self, Pipe(self), Pipe(self), client=True)

    def dial(self, client: End) -> None:
        task = asyncio.ensure_future(self._connect(client))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _connect(self, client: End) -> None:
        loop = asyncio.get_running_loop()
        up, down = client.out, client.into
        try:
            await loop.create_connection(lambda: End(self, down, up, client=False), *self.upstream)
        except OSError:
            if client.transport is not None:
                client.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._dials:
            task.cancel()
        for end in list(self.ends):
            if end.transport is not None:
                end.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    (host, port), (listen_host, listen_port) = args.upstream, args.listen
    proxy = DelayProxy(host, port, delay=args.delay_ms / 1000)
    port = await proxy.start(listen_host, listen_port)

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    answer({"port": port})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            command = json.loads(line)
        except ValueError:
            answer({"error": "not JSON"})
            continue
        if command.get("cmd") == "delay":
            proxy.delay = float(command["ms"]) / 1000
            answer({"delay_ms": proxy.delay * 1000})
        elif command.get("cmd") == "stats":  # since the previous one
            answer({"delay_ms": proxy.delay * 1000, **proxy.stats.as_dict()})
            proxy.stats = Stats()
        else:
            answer({"error": f"unknown command {command!r}"})
    await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.delay_proxy", description=__doc__)
    p.add_argument("upstream", type=address, help="host:port to relay to")
    p.add_argument("--listen", type=address, default=("127.0.0.1", 0),
                   help="host:port to listen on (port 0: any; the port is printed)")  # fmt: skip
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each way")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
