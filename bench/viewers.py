"""One viewer load-generator process: up to ~9,000 SSE connections on one event loop.

Started by ``bench.fanout`` as ``python -m bench.viewers``; it reads its JSON
config as the first line on stdin, then one JSON command per line, and answers
each with one JSON line on stdout:

- ``connect``: open every connection (each bound to its own 127.0.0.x source
  address), answer when all have their response head (or failed).
- ``count``: events received since the last ``window`` (for draining).
- ``window``: start a measured window (zero the counters and the histograms).
- ``collect``: the window's results: two 1-ms latency histograms (from the
  commenter's send, and from the server's accept where the event says it), the
  bytes of the events' SSE frames, per-video counts of new, duplicated and
  reordered events, disconnects, this process's CPU.
- ``close``: close everything and exit.

``collect`` also answers how many viewers got each number of events once
(``unique_per_viewer``), so that "every viewer got every event exactly once" is
checked per viewer (``bench.regions``).

Optional config keys (``bench.scale`` uses them; ``bench.fanout`` does not):

- ``assign``: the video index of each viewer lo..hi-1 (instead of ``i % len(videos)``);
- ``follow``: follow a 3xx ``Location`` when connecting (the page's way in: the
  comment service's 307 to an RTMS node), and a ``moved`` event during the
  stream: open its URL (it carries the last event id) and go on counting on the
  new connection as the same viewer, so a move that loses or repeats an event
  shows as missing or duplicated.

``window`` and ``collect`` also answer the viewers and the events by server port
(which RTMS node delivered them), the ``moved`` events followed and the follows
that failed.

The hot path is ``Viewer.data_received``: no JSON decoding, no per-frame
objects, one clock read per chunk (frames that arrived together were received
at the same moment). A received chunk is cut at its last ``\\n\\n``; each frame
in it is searched, by key and so in any field order, for:

- the event's seq: the integer after ``"seq":``, or if the payload has none,
  the ``N`` of an ``id: EPOCH-N`` line (a frame with neither is not an event:
  a heartbeat, a ``retry:``);
- the send time: every poster starts the comment's text with its wall-clock
  milliseconds, taken just before the request is written (``"text":"<ms> ...``);
- the accept time, if the payload has one: the integer after
  ``"created_at_ms":`` (livecomments' comment service; absent, ``null`` or
  renamed, the server-accept latency is simply not reported).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

SEQ_KEY = b'"seq":'
SENT_KEY = b'"text":"'  # the text starts with the send time (ms)
ACCEPT_KEY = b'"created_at_ms":'
HIST_MS = 120_000  # latencies past 120 s land in the last bin
IP_BIND_ADDRESS_NO_PORT = 24  # pick the port at connect(): source ports per destination
MOVED = b"event: moved\n"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_HOPS = 4


class Gen:
    """Counters shared by every connection of this process."""

    __slots__ = (
        "by_port",
        "disconnects",
        "event_bytes",
        "events",
        "first_recv",
        "follow_failed",
        "hist",
        "hist_accept",
        "last_recv",
        "moved",
        "no_send_time",
        "on_moved",
        "parse_errors",
    )

    def __init__(self) -> None:
        self.hist = [0] * HIST_MS  # send -> receive
        self.hist_accept = [0] * HIST_MS  # the server's accept -> receive
        self.events = 0
        self.event_bytes = 0  # the events' SSE frames, "id:" to the blank line
        self.no_send_time = 0
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.disconnects = 0
        self.parse_errors = 0
        self.by_port: dict[int, int] = {}  # events by the server port that sent them
        self.moved = self.follow_failed = 0
        # Called with (viewer, url or None, last event id) on a `moved` event; None: ignore it.
        self.on_moved: Callable[[Viewer, str | None, str | None], None] | None = None

    def reset(self) -> None:
        self.hist = [0] * HIST_MS
        self.hist_accept = [0] * HIST_MS
        self.events = self.event_bytes = self.no_send_time = 0
        self.first_recv = self.last_recv = 0.0
        self.parse_errors = 0
        self.disconnects = 0
        self.by_port = {}
        self.moved = self.follow_failed = 0


class Viewer(asyncio.Protocol):
    __slots__ = (
        "buf",
        "cbuf",
        "chunk_left",
        "chunked",
        "closing",
        "counted",
        "dups",
        "gen",
        "head",
        "holes",
        "last_seq",
        "late",
        "location",
        "lost",
        "port",
        "ready",
        "slot",
        "status",
        "transport",
        "unique",
        "video",
    )

    def __init__(
        self,
        gen: Gen,
        video: int,
        ready: asyncio.Future[bool],
        port: int = 0,
        inherit: Viewer | None = None,
    ) -> None:
        """``inherit``: the connection this one replaces (a redirect or a move): the
        same viewer, so its position and counts carry over."""
        self.gen = gen
        self.video = video
        self.ready: asyncio.Future[bool] | None = ready
        self.head = True  # still reading the response head
        self.status = 0
        self.buf = b""
        self.chunked = False  # Transfer-Encoding: chunked (Pushpin answers HTTP/1.1 so)
        self.chunk_left = 0  # bytes of the current chunk still to come, its CRLF included
        self.cbuf = b""  # an incomplete chunk-size line
        self.last_seq = -1  # unknown until the first event
        self.unique = self.dups = self.late = 0
        self.holes: set[int] | None = None  # seqs skipped over, still not received
        self.closing = False  # we close it: not a disconnect
        self.lost = False
        self.counted = True  # connected when the window started: expected to get everything
        self.transport: Any = None
        self.port = port  # the server's
        self.location: str | None = None  # a redirect's target
        self.slot = -1  # where the generator lists it
        if inherit is not None:
            self.last_seq, self.holes = inherit.last_seq, inherit.holes
            self.unique, self.dups, self.late = inherit.unique, inherit.dups, inherit.late
            self.counted, self.slot = inherit.counted, inherit.slot

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(False)
        elif not self.closing:
            self.gen.disconnects += 1

    def _read_head(self, data: bytes) -> bytes | None:
        data = self.buf + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self.buf = data
            return None
        self.buf = b""
        self.head = False
        parts = data[: data.find(b"\r\n")].split(b" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        ready, self.ready = self.ready, None
        if self.status != 200:
            if self.status in REDIRECTS:
                self.location = _header(data[:end], b"location")
            if ready is not None and not ready.done():
                ready.set_result(False)
            self.closing = True
            self.transport.close()
            return None
        if ready is not None and not ready.done():
            ready.set_result(True)
        self.chunked = b"transfer-encoding: chunked" in data[:end].lower()
        rest = data[end + 4 :]
        return self._dechunk(rest) if self.chunked and rest else rest

    def _dechunk(self, data: bytes) -> bytes:
        """The chunks' payload: a frame may be split over chunks (Pushpin does that)."""
        if self.cbuf:
            data, self.cbuf = self.cbuf + data, b""
        out = []
        pos, n = 0, len(data)
        while pos < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                payload = min(take, self.chunk_left - 2)  # the chunk's CRLF is dropped
                if payload > 0:
                    out.append(data[pos : pos + payload])
                pos += take
                self.chunk_left -= take
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self.cbuf = data[pos:]
                break
            try:
                self.chunk_left = int(data[pos:eol].split(b";", 1)[0], 16) + 2
            except ValueError:
                self.gen.parse_errors += 1
                if self.gen.parse_errors <= 3:
                    print(f"bad chunk size line: {data[pos : eol + 2]!r}", file=sys.stderr)
                self.chunk_left = 0
            pos = eol + 2
        return b"".join(out)

    def data_received(self, data: bytes) -> None:
        if self.head:
            rest = self._read_head(data)
            if not rest:
                return
            data = rest
        else:
            if self.chunked:
                data = self._dechunk(data)
            if self.buf:
                data = self.buf + data
        end = data.rfind(b"\n\n")
        if end < 0:
            self.buf = data
            return
        self.buf = data[end + 2 :]
        now = time.time() * 1000.0
        gen = self.gen
        find = data.find
        hist, hist_accept = gen.hist, gen.hist_accept
        last = self.last_seq
        stop = end + 2
        pos = 0
        count = nbytes = 0
        moved = b""
        while pos < stop:
            fe = find(b"\n\n", pos, stop) + 2  # this frame is data[pos:fe]
            i = find(SEQ_KEY, pos, fe)
            try:
                if i >= 0:
                    i += 6
                    k = find(b",", i, i + 24)
                    seq = int(data[i : k if k >= 0 else find(b"}", i, i + 24)])
                else:
                    seq = self._seq_from_id(data, pos, fe)
            except ValueError:
                self._unparsable(data, pos, fe)
                seq = -1
            if seq < 0:  # a heartbeat, a retry, a move, or unparsable: not counted
                if data.startswith(MOVED, pos):
                    moved = data[pos:fe]
                pos = fe
                continue
            count += 1
            nbytes += fe - pos
            t = find(SENT_KEY, pos, fe)
            if t >= 0:
                t += 8
                try:
                    lat = int(now - int(data[t : find(b" ", t, t + 24)]))
                    hist[0 if lat < 0 else lat if lat < HIST_MS else HIST_MS - 1] += 1
                except ValueError:
                    t = -1
            if t < 0:
                gen.no_send_time += 1
            a = find(ACCEPT_KEY, pos, fe)
            if a >= 0:
                a += 16
                k = find(b",", a, a + 24)
                try:  # null, or not a number: no accept time, not an error
                    lat = int(now - int(data[a : k if k >= 0 else find(b"}", a, a + 24)]))
                    hist_accept[0 if lat < 0 else lat if lat < HIST_MS else HIST_MS - 1] += 1
                except ValueError:
                    pass
            pos = fe
            if seq == last + 1 or last < 0:
                last = seq
                self.unique += 1
            else:
                self._out_of_line(seq, last)
                last = max(last, seq)
        if count:
            self.last_seq = last
            gen.events += count
            gen.event_bytes += nbytes
            if not gen.first_recv:
                gen.first_recv = now
            gen.last_recv = now
            gen.by_port[self.port] = gen.by_port.get(self.port, 0) + count
        if moved:
            self._moved(moved)

    def _moved(self, frame: bytes) -> None:
        """The node sends us elsewhere and closes: not a disconnect; follow if asked."""
        self.closing = True
        gen = self.gen
        gen.moved += 1
        if gen.on_moved is None:
            return
        try:
            body = json.loads(frame[frame.index(b"data: ") + 6 :])
        except ValueError:
            self._unparsable(frame, 0, len(frame))
            return
        gen.on_moved(self, body.get("url"), body.get("last_event_id"))

    @staticmethod
    def _seq_from_id(data: bytes, pos: int, fe: int) -> int:
        """The N of the frame's ``id: EPOCH-N`` line, -1 without one."""
        if not data.startswith(b"id: ", pos):
            return -1
        line = data[pos + 4 : data.find(b"\n", pos, fe)]
        return int(line.rpartition(b"-")[2])  # ValueError: the caller reports it

    def _unparsable(self, data: bytes, pos: int, fe: int) -> None:
        gen = self.gen
        gen.parse_errors += 1
        if gen.parse_errors <= 3:  # show what confused us, a few times only
            print(f"unparsable event: {data[pos : min(fe, pos + 600)]!r}", file=sys.stderr)

    def _out_of_line(self, seq: int, last: int) -> None:
        """Not the next seq: a skip (remember the holes), a late one, or a duplicate."""
        holes = self.holes
        if seq > last:
            if holes is None:
                holes = self.holes = set()
            holes.update(range(last + 1, seq))
            self.unique += 1
        elif holes is not None and seq in holes:
            holes.discard(seq)
            self.unique += 1
            self.late += 1  # arrived after a later seq: reordered, not lost
        else:
            self.dups += 1


def _header(head: bytes, name: bytes) -> str | None:
    """The value of header ``name`` (lower case) in a response head, None without it."""
    lower = head.lower()
    i = lower.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    i += len(name) + 3
    j = lower.find(b"\r\n", i)
    return head[i : j if j >= 0 else len(head)].strip().decode("latin-1")


class Generator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host: str = config["host"]
        self.port: int = config["port"]
        # Viewers lo..hi-1 of the scenario: viewer i watches video assign[i - lo], or
        # i % len(videos) without ``assign``, from source address sources[i % len(sources)].
        videos: list[str] = config["videos"]
        sources: list[str] = config["sources"]
        template: str = config["path"]  # e.g. "/sub/{video}"
        lo, hi = config["lo"], config["hi"]
        assign: list[int] = config.get("assign") or [i % len(videos) for i in range(lo, hi)]
        self.paths = [template.format(video=video) for video in videos]
        self.conns = [
            (assign[i - lo], self.paths[assign[i - lo]], sources[i % len(sources)])
            for i in range(lo, hi)
        ]
        self.concurrency: int = config.get("concurrency", 200)
        self.extra_headers: str = config.get("headers", "")
        self.follow: bool = config.get("follow", False)
        self.gen = Gen()
        if self.follow:
            self.gen.on_moved = self._on_moved
        self.viewers: list[Viewer] = []
        self.failed = 0
        self.cpu0 = self._cpu()
        self._follows: set[asyncio.Task[None]] = set()
        self._follow_sem: asyncio.Semaphore | None = None

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def _try_open(
        self, video: int, source: str, host: str, port: int, path: str, inherit: Viewer | None
    ) -> Viewer | str | None:
        """The viewer once its 200 head is in, a redirect's target, or None (failed)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        viewer = Viewer(self.gen, video, ready, port, inherit)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            await loop.sock_connect(sock, (host, port))
            await loop.create_connection(lambda: viewer, sock=sock)
        except OSError:
            sock.close()
            return None
        viewer.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n{self.extra_headers}\r\n".encode()
        )
        try:
            ok = await asyncio.wait_for(ready, 30)
        except TimeoutError:
            ok = False
        if not ok:
            viewer.closing = True
            viewer.transport.close()
            return viewer.location if self.follow and viewer.location else None
        return viewer

    async def _connect(
        self, video: int, source: str, url: tuple[str, int, str], inherit: Viewer | None = None
    ) -> Viewer | None:
        """Open ``url`` (host, port, path), following redirects when ``follow``."""
        host, port, path = url
        for _ in range(MAX_HOPS):
            got = await self._try_open(video, source, host, port, path, inherit)
            if not isinstance(got, str):
                return got
            parts = urlsplit(got)
            host, port = parts.hostname or host, parts.port or port
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        return None

    async def _open(self, video: int, path: str, source: str, sem: asyncio.Semaphore) -> float:
        for attempt in range(3):
            async with sem:
                viewer = await self._connect(video, source, (self.host, self.port, path))
            if viewer is not None:
                viewer.slot = len(self.viewers)
                self.viewers.append(viewer)
                return time.time()
            await asyncio.sleep(0.2 * (attempt + 1))
        self.failed += 1
        return 0.0

    def _on_moved(self, old: Viewer, url: str | None, last_event_id: str | None) -> None:
        task = asyncio.ensure_future(self._follow_move(old, url, last_event_id))
        self._follows.add(task)
        task.add_done_callback(self._follows.discard)

    async def _follow_move(self, old: Viewer, url: str | None, last_event_id: str | None) -> None:
        """Reconnect where a `moved` event says (or the way in, with the last event id)."""
        if url:
            parts = urlsplit(url)
            target = (parts.hostname or self.host, parts.port or self.port,
                      parts.path + (f"?{parts.query}" if parts.query else ""))  # fmt: skip
        else:
            path = self.paths[old.video]
            sep = "&" if "?" in path else "?"
            resume = f"{sep}last_event_id={last_event_id}" if last_event_id else ""
            target = (self.host, self.port, path + resume)
        if self._follow_sem is None:
            self._follow_sem = asyncio.Semaphore(self.concurrency)
        source = self.conns[old.slot][2] if 0 <= old.slot < len(self.conns) else "127.0.0.1"
        for attempt in range(3):
            async with self._follow_sem:
                new = await self._connect(old.video, source, target, inherit=old)
            if new is not None:
                self.viewers[old.slot] = new
                return
            await asyncio.sleep(0.2 * (attempt + 1))
        self.gen.follow_failed += 1

    async def connect(self) -> dict[str, Any]:
        sem = asyncio.Semaphore(self.concurrency)
        started = time.time()
        times = await asyncio.gather(*(self._open(v, p, s, sem) for v, p, s in self.conns))
        done = [t for t in times if t]
        return {
            "connected": len(self.viewers),
            "failed": self.failed,
            "started": started,
            "last_ready": max(done) if done else started,
        }

    def window(self) -> dict[str, Any]:
        """Start a window; answers how many viewers of each video are connected now."""
        dropped_before = self.gen.disconnects
        self.gen.reset()
        alive: dict[str, int] = {}
        for viewer in self.viewers:
            viewer.unique = viewer.dups = viewer.late = 0
            viewer.counted = not viewer.lost
            if viewer.counted:
                alive[str(viewer.video)] = alive.get(str(viewer.video), 0) + 1
        self.cpu0 = self._cpu()
        return {"alive": alive, "dropped_before": dropped_before, "by_port": self._by_port()}

    def _by_port(self) -> dict[str, int]:
        """Viewers connected now, by server port."""
        out: dict[str, int] = {}
        for viewer in self.viewers:
            if not viewer.lost:
                out[str(viewer.port)] = out.get(str(viewer.port), 0) + 1
        return out

    def collect(self) -> dict[str, Any]:
        gen = self.gen
        per_video: dict[int, list[int]] = {}
        # How many viewers got each number of events once (a whole-window check per
        # viewer: sums over viewers could hide one missing what another got twice).
        unique_per_viewer: dict[str, int] = {}
        for viewer in self.viewers:
            if not viewer.counted:
                continue
            row = per_video.setdefault(viewer.video, [0, 0, 0, 0])
            row[0] += 1
            row[1] += viewer.unique
            row[2] += viewer.dups
            row[3] += viewer.late
            key = str(viewer.unique)
            unique_per_viewer[key] = unique_per_viewer.get(key, 0) + 1
        hist = {str(ms): n for ms, n in enumerate(gen.hist) if n}
        hist_accept = {str(ms): n for ms, n in enumerate(gen.hist_accept) if n}
        alive = sum(1 for v in self.viewers if not v.lost)
        return {
            "events": gen.events,
            "event_bytes": gen.event_bytes,
            "no_send_time": gen.no_send_time,
            "hist_accept": hist_accept,
            "first_recv": gen.first_recv,
            "last_recv": gen.last_recv,
            "hist": hist,
            "videos": {str(v): row for v, row in per_video.items()},  # conns, new, dups, late
            "unique_per_viewer": unique_per_viewer,
            "disconnects": gen.disconnects,
            "alive": alive,
            "parse_errors": gen.parse_errors,
            "cpu": self._cpu() - self.cpu0,
            "events_by_port": {str(port): n for port, n in gen.by_port.items()},
            "viewers_by_port": self._by_port(),
            "moved": gen.moved,
            "follow_failed": gen.follow_failed,
            "following": len(self._follows),
        }

    def close(self) -> None:
        for viewer in self.viewers:
            viewer.closing = True
            viewer.transport.abort()


async def serve(config: dict[str, Any]) -> None:
    generator = Generator(config)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    answer({"hello": True})
    while line := await reader.readline():
        cmd = json.loads(line)["cmd"]
        if cmd == "connect":
            answer(await generator.connect())
        elif cmd == "count":
            answer({"events": generator.gen.events, "last_recv": generator.gen.last_recv})
        elif cmd == "window":
            answer(generator.window())
        elif cmd == "collect":
            answer(generator.collect())
        elif cmd == "close":
            generator.close()
            answer({"ok": True})
            await asyncio.sleep(0.1)
            return
    generator.close()  # the parent went away


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    config = json.loads(sys.stdin.buffer.readline())
    import uvloop

    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
