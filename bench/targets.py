"""The three systems under test, each started fresh on loopback, and their publishers.

A target knows how to start and stop itself, where viewers connect, which
processes to measure (the fan-out process for RSS per connection; every
server process for CPU), and how to publish a message (a :class:`Poster`).

- ``livecomments``: our own system (one comment service, one dispatcher, one
  RTMS node, plus ZooKeeper, Redis and the in-memory MongoDB-wire store).
  Viewers connect straight to the RTMS node over plain HTTP; comments go
  through ``POST /api/videos/{id}/comments`` and the SSE frame carries the
  server's accept time (``created_at_ms``) besides the text.
- ``nchan``: nginx + nchan, one worker; ``POST /pub/{channel}``.
- ``pushpin``: Pushpin in front of :mod:`bench.grip_backend`; HTTP publish
  with several items per POST (its publish API stalls at >= 50 POSTs/s).

Every poster puts its send time in the message the same way: the comment's
text starts with the wall-clock milliseconds read just before the request is
written (:func:`comment_text`), so the viewers time every target from the
commenter's send. A poster also records how late each send was against the
open-loop schedule, how many messages were unanswered at most, and when the
last answer came (the achieved rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from ssl import SSLContext
from typing import Any, ClassVar

import aiohttp
import orjson

from bench import procstat

REPO = Path(__file__).resolve().parent.parent
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
DEBIAN_PACKAGES = {
    "nchan": "nginx-light libnginx-mod-nchan",
    "pushpin": "pushpin",
    "livecomments": "zookeeper redis-server",
}

# The same JSON shape (and about the same size) as our compact comment events
# (kernel/events.py: id, user_id, author, created_at_ms, text), so every target
# moves about the same bytes and the generator parses every target the same way.
# The peers' SSE ids do not carry our seq, so their payload says it ("seq", which
# ours leaves to the `id:` line). A peer has no accept time of its own:
# ``created_at_ms`` is null (the viewers then report the latency from the send only).
PAYLOAD = (
    '{{"id":"{id}","seq":{n},"user_id":"1","author":"bench-poster",'
    '"created_at_ms":null,"text":"{text}"}}'
)
TEXT_CHARS = 60  # a realistic comment
FILLER = " lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod"


def comment_text(n: int, sent_ms: int) -> str:
    """A comment of :data:`TEXT_CHARS` characters that starts with its send time."""
    return f"{sent_ms} bench comment {n}{FILLER}"[:TEXT_CHARS]


def payload(video: str, n: int, t_ms: int) -> str:
    text = comment_text(n, t_ms)
    return PAYLOAD.format(id=7_000_000_000_000_000_000 + n, n=n, text=text)


def missing_packages(target: str) -> list[str]:
    """Debian packages a target needs that are not installed."""
    if target == "nchan":
        ok = shutil.which("nginx") is not None and NCHAN_MODULE.exists()
    elif target == "pushpin":
        ok = all(shutil.which(b) for b in ("pushpin", "condure", "zurl"))
    else:
        from livecomments.cli.launcher import missing_system_packages

        return missing_system_packages()
    return [] if ok else DEBIAN_PACKAGES[target].split()


def free_port() -> int:
    from livecomments.cli.launcher import free_port as _free_port

    return _free_port()


async def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def spawn(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A server in its own session (a Ctrl-C of the benchmark reaches us, not it)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cwd,
        )  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- posters ---------------------------------------------------------------------


class Poster:
    """Publishes messages; counts what each video's viewers should receive."""

    min_interval = 0.0  # seconds between two publish calls (batched publishers)
    LATE_MS = 10.0  # a send this much after its due time is late
    # For an HTTPS server with a certificate of a local CA (bench.regions); None: the default.
    ssl_context: SSLContext | None = None

    def __init__(self, videos: list[str], concurrency: int) -> None:
        self.videos = videos
        self.sem = asyncio.Semaphore(concurrency)
        self.session: aiohttp.ClientSession | None = None
        self.counters = [0] * len(videos)  # the last n published per video
        self.accepted = [0] * len(videos)
        self.errors = 0
        self.first_error = ""
        self.rtts: list[float] = []  # publish round trips, ms
        self.lags: list[float] = []  # send time - due time, ms, one per message
        self.unanswered = 0  # messages published and not answered yet
        self.peak_unanswered = 0
        self.last_answer = 0.0  # wall clock of the last accepted answer
        self._tasks: set[asyncio.Task[None]] = set()
        self._concurrency = concurrency

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency, force_close=False, ssl=self.ssl_context or True
        )
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self.session is not None:
            await self.session.close()

    def reset(self) -> None:
        self.accepted = [0] * len(self.videos)
        self.errors = 0
        self.rtts = []
        self.lags = []
        self.peak_unanswered = self.unanswered
        self.last_answer = 0.0

    def publish(self, video_indexes: list[int], due: list[float]) -> None:
        """Publish one message to each listed video (a scheduler tick's worth);
        ``due`` is when each was due on the open-loop schedule (wall clock)."""
        for v, d in zip(video_indexes, due, strict=True):
            self.counters[v] += 1
            self._spawn(self.send_one(v, self.counters[v], d))
        self._published(len(video_indexes))

    def _published(self, count: int) -> None:
        self.unanswered += count
        self.peak_unanswered = max(self.peak_unanswered, self.unanswered)

    def _send_time(self, due: list[float]) -> int:
        """The send time (ms) to put in the messages about to be written; notes their lag."""
        now = time.time()
        self.lags.extend((now - d) * 1000 for d in due)
        return int(now * 1000)

    def _accepted(self, video: int, t0: float) -> None:
        self.accepted[video] += 1
        self.rtts.append((time.perf_counter() - t0) * 1000)
        self.last_answer = time.time()

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failed(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what[:300]

    async def send_one(self, video: int, n: int, due: float) -> None:
        raise NotImplementedError


class LiveCommentsPoster(Poster):
    def __init__(self, base: str, videos: list[str], concurrency: int) -> None:
        super().__init__(videos, concurrency)
        self.base = base
        self.headers: dict[str, str] = {}

    async def open(self) -> None:
        await super().open()
        assert self.session is not None
        name = f"bench{time.time_ns() % 10**9}"
        async with self.session.post(
            f"{self.base}/api/auth/register", json={"username": name, "password": "bench-pass-1"}
        ) as r:
            body = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"register failed: {r.status} {body}")
        self.headers = {"Authorization": f"Bearer {body['token']}"}

    async def send_one(self, video: int, n: int, due: float) -> None:
        assert self.session is not None
        url = f"{self.base}/api/videos/{self.videos[video]}/comments"
        headers = {**self.headers, "Content-Type": "application/json"}
        async with self.sem:
            try:
                t0 = time.perf_counter()
                data = orjson.dumps({"text": comment_text(n, self._send_time([due]))})
                async with self.session.post(url, data=data, headers=headers) as r:
                    body = await r.read()
                    if r.status == 201:
                        self._accepted(video, t0)
                    else:
                        self._failed(f"{r.status} {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._failed(repr(exc))
            finally:
                self.unanswered -= 1


class NchanPoster(Poster):
    def __init__(self, port: int, videos: list[str], concurrency: int) -> None:
        super().__init__(videos, concurrency)
        self.base = f"http://127.0.0.1:{port}"

    async def send_one(self, video: int, n: int, due: float) -> None:
        assert self.session is not None
        name = self.videos[video]
        async with self.sem:
            try:
                t0 = time.perf_counter()
                body = payload(name, n, self._send_time([due])).encode()
                async with self.session.post(f"{self.base}/pub/{name}", data=body) as r:
                    await r.read()
                    if r.status in (200, 201, 202):
                        self._accepted(video, t0)
                    else:
                        self._failed(f"{r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._failed(repr(exc))
            finally:
                self.unanswered -= 1


class PushpinPoster(Poster):
    """One publish POST in flight, carrying every message due meanwhile.

    Pushpin's publish API stalls at >= 50 POSTs/s, and two POSTs in flight can
    be applied out of order; so messages queue while a POST is out, and the next
    POST (at least ``min_interval`` later, the scheduler sees to it) takes them all.
    """

    min_interval = 0.05

    def __init__(self, port: int, videos: list[str], concurrency: int) -> None:
        super().__init__(videos, 1)
        self.url = f"http://127.0.0.1:{port}/publish/"
        self.pending: list[tuple[int, int, float]] = []  # video, n, due
        self.inflight = False

    def publish(self, video_indexes: list[int], due: list[float]) -> None:
        for v, d in zip(video_indexes, due, strict=True):
            self.counters[v] += 1
            self.pending.append((v, self.counters[v], d))
        self._published(len(video_indexes))
        if self.pending and not self.inflight:
            self.inflight = True
            self._spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self.send_batch(batch)
        finally:
            self.inflight = False

    async def send_batch(self, batch: list[tuple[int, int, float]]) -> None:
        assert self.session is not None
        async with self.sem:
            try:
                t0 = time.perf_counter()
                t = self._send_time([d for _, _, d in batch])
                items = []
                for v, n, _ in batch:
                    name = self.videos[v]
                    frame = f"id: 1-{n}\nevent: comment\ndata: {payload(name, n, t)}\n\n"
                    items.append({"channel": name, "formats": {"http-stream": {"content": frame}}})
                async with self.session.post(
                    self.url, data=orjson.dumps({"items": items}),
                    headers={"Content-Type": "application/json"},
                ) as r:  # fmt: skip
                    await r.read()
                    if r.status == 200:
                        for v, _, _ in batch[1:]:
                            self.accepted[v] += 1
                        self._accepted(batch[0][0], t0)  # one round trip a POST
                    else:
                        self._failed(f"{r.status}")
                        self.errors += len(batch) - 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._failed(repr(exc))
                self.errors += len(batch) - 1
            finally:
                self.unanswered -= len(batch)

    async def send_one(self, video: int, n: int, due: float) -> None:  # pragma: no cover
        await self.send_batch([(video, n, due)])


# -- targets ---------------------------------------------------------------------


class Target:
    name = ""
    # Where viewers connect, and the request path ({video} is replaced).
    host = "127.0.0.1"
    port = 0
    path = ""

    def __init__(self, keep_dir: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.keep_dir = keep_dir
        self.env: dict[str, str] = {}  # extra settings for our processes (--env); peers ignore it

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self, failed: bool) -> None:
        if self.keep_dir or failed:
            print(f"[{self.name}] logs kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def fanout_pids(self) -> list[int]:
        """The process(es) holding the viewers' connections and writing to them."""
        raise NotImplementedError

    def components(self) -> dict[str, list[int]]:
        """Every server process, by component name (for CPU seconds)."""
        raise NotImplementedError

    def fanout_components(self) -> list[str]:
        """The components counted as "fan-out" CPU (the rest is the write path)."""
        raise NotImplementedError

    def poster(self, videos: list[str], concurrency: int) -> Poster:
        raise NotImplementedError

    def video_names(self, prefix: str, count: int) -> list[str]:
        return [f"{prefix}v{i}" for i in range(count)]


class LiveCommentsTarget(Target):
    name = "livecomments"
    path = "/stream/{video}?redirected=1"
    ENV: ClassVar[dict[str, str]] = {
        "LIVECOMMENTS_POST_LIMIT_USER": "1000000/1",
        "LIVECOMMENTS_POST_LIMIT_IP": "1000000/1",
        "LIVECOMMENTS_DUPLICATE_WINDOW": "0",
        "LIVECOMMENTS_FILTER_HOLD_THRESHOLD": "1.0",
        "LIVECOMMENTS_FILTER_REFUSE_THRESHOLD": "1.0",
        "LIVECOMMENTS_MAX_VIEWERS": "19000",
        # 10,000-15,000 viewers from 8 source addresses, ~100 connecting at once,
        # over up to thousands of videos: lift the per-address and per-node join
        # limits (a benchmark measures fan-out, not them).
        "LIVECOMMENTS_MAX_STREAMS_PER_ADDRESS": "19000",
        "LIVECOMMENTS_MAX_UNATTACHED_PER_PEER": "19000",
        "LIVECOMMENTS_MAX_UNATTACHED": "19000",
        "LIVECOMMENTS_JOIN_LIMIT_ADDRESS": "1000000/1",
        "LIVECOMMENTS_CHANNEL_LIMIT_NODE": "1000000/1",
        "LIVECOMMENTS_MAX_CHANNELS": "100000",
        "LIVECOMMENTS_HEARTBEAT_INTERVAL": "15",
        "LIVECOMMENTS_LOG_LEVEL": "WARNING",
    }

    def __init__(self, keep_dir: bool = False) -> None:
        super().__init__(keep_dir)
        self.backends: Any = None
        self.cluster: Any = None

    def _start(self) -> None:
        from livecomments.cli.cluster import Backends, Cluster

        self.backends = Backends.start(self.dir, memory_store=True)
        try:
            self.cluster = Cluster(
                self.dir, self.backends, namespace="bench", tls=False,
                extra_env={**self.ENV, **self.env},
            )  # fmt: skip
            self.cluster.start(dispatchers=1, rtms=1, comment_services=1)
        except BaseException:
            self.backends.stop()
            raise
        url = self.cluster.services["rtms-1"].url
        self.port = int(url.rsplit(":", 1)[1])

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.backends is not None:
            self.backends.stop()

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop)

    def fanout_pids(self) -> list[int]:
        return [self.cluster.services["rtms-1"].proc.pid]

    def components(self) -> dict[str, list[int]]:
        out = {name: [s.proc.pid] for name, s in self.cluster.services.items()}
        out.update({name: [p.pid] for name, p in self.backends.procs.items()})
        return out

    def fanout_components(self) -> list[str]:
        return ["rtms-1"]

    def poster(self, videos: list[str], concurrency: int) -> Poster:
        return LiveCommentsPoster(self.cluster.services["comment-1"].url, videos, concurrency)


class NchanTarget(Target):
    name = "nchan"
    path = "/sub/{video}"

    def __init__(self, keep_dir: bool = False) -> None:
        super().__init__(keep_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        return f"""
load_module {NCHAN_MODULE};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
daemon off;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location ~ /sub/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}
    location ~ /pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; }}
  }}
}}
"""

    async def start(self) -> None:
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        self.proc = spawn(
            ["nginx", "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            self.dir / "nginx.out", self.dir,
        )  # fmt: skip
        await wait_port(self.port, self.proc, 15)
        for _ in range(100):  # the master forks its worker right after listening
            if procstat.children(self.proc.pid):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("nginx started no worker")

    async def stop(self) -> None:
        await asyncio.to_thread(stop_process, self.proc, signal.SIGTERM)

    def fanout_pids(self) -> list[int]:
        assert self.proc is not None
        return procstat.children(self.proc.pid)

    def components(self) -> dict[str, list[int]]:
        assert self.proc is not None
        return {"nginx-master": [self.proc.pid], "nginx-worker": self.fanout_pids()}

    def fanout_components(self) -> list[str]:
        return ["nginx-master", "nginx-worker"]

    def video_names(self, prefix: str, count: int) -> list[str]:
        return [f"{prefix}v{i}".replace("-", "_") for i in range(count)]

    def poster(self, videos: list[str], concurrency: int) -> Poster:
        return NchanPoster(self.port, videos, concurrency)


class PushpinTarget(Target):
    name = "pushpin"
    path = "/sub/{video}"

    def __init__(self, keep_dir: bool = False) -> None:
        super().__init__(keep_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.backend: subprocess.Popen[bytes] | None = None
        self.publish_port = 0
        self.backend_port = 0

    def config(self) -> str:
        p = [free_port() for _ in range(3)]
        run, logs = self.dir / "run", self.dir / "log"
        return f"""
[global]
include={{libdir}}/internal.conf
rundir={run}
ipc_prefix=bench-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{self.port}
logdir={logs}
log_level=1
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile={self.dir / "routes"}
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
upstream_key=
updates_check=off

[handler]
push_in_spec=tcp://127.0.0.1:{p[0]}
push_in_sub_specs=tcp://127.0.0.1:{p[1]}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={self.publish_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=100000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=tcp://127.0.0.1:{p[2]}
message_rate=10000000
message_hwm=1000000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""

    async def start(self) -> None:
        self.port, self.publish_port, self.backend_port = free_port(), free_port(), free_port()
        (self.dir / "run").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "routes").write_text(f"* 127.0.0.1:{self.backend_port}\n")
        conf = self.dir / "pushpin.conf"
        conf.write_text(self.config())
        self.backend = spawn(
            [sys.executable, "-m", "bench.grip_backend", "--port", str(self.backend_port)],
            self.dir / "log" / "grip-backend.log", REPO,
        )  # fmt: skip
        await wait_port(self.backend_port, self.backend, 15)
        self.proc = spawn(
            ["pushpin", "--config", str(conf), "--logfile", str(self.dir / "log" / "pushpin.log")],
            self.dir / "log" / "runner.out", self.dir,
        )  # fmt: skip
        await wait_port(self.port, self.proc, 20)
        await wait_port(self.publish_port, self.proc, 20)

    async def stop(self) -> None:
        await asyncio.to_thread(stop_process, self.proc, signal.SIGTERM)
        await asyncio.to_thread(stop_process, self.backend, signal.SIGTERM)

    def _procs(self) -> dict[str, int]:
        assert self.proc is not None
        return {procstat.comm(pid): pid for pid in procstat.descendants(self.proc.pid)}

    def fanout_pids(self) -> list[int]:
        return list(self._procs().values())

    def components(self) -> dict[str, list[int]]:
        assert self.backend is not None
        out = {name: [pid] for name, pid in self._procs().items()}
        out["grip-backend"] = [self.backend.pid]
        return out

    def fanout_components(self) -> list[str]:
        return list(self._procs())

    def video_names(self, prefix: str, count: int) -> list[str]:
        return [f"{prefix}v{i}".replace("-", "_") for i in range(count)]

    def poster(self, videos: list[str], concurrency: int) -> Poster:
        return PushpinPoster(self.publish_port, videos, concurrency)


TARGETS: dict[str, type[Target]] = {
    "livecomments": LiveCommentsTarget,
    "nchan": NchanTarget,
    "pushpin": PushpinTarget,
}
