"""Clients the tests use to act like real users: HTTPS API calls and SSE viewers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
from click.testing import CliRunner, Result

from livecomments.cli.cluster import Cluster
from livecomments.cli.main import main
from livecomments.comment_service.admin import create_admin as make_admin
from livecomments.kernel import settings as cfg
from livecomments.kernel.stream import Position

T = TypeVar("T")


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None
    received_at: float

    def json(self) -> Any:
        return orjson.loads(self.data)

    @property
    def seq(self) -> int:
        """The seq in the event's id (``{epoch}-{seq}``): a comment frame's JSON has none."""
        position = Position.parse(self.id)
        assert position is not None, f"event {self.event} has no position: {self.id!r}"
        return position.seq


@dataclass
class Viewer:
    """An SSE client that records every event it receives (parsed as a browser would).

    A stream that ends on its own (an error, or the node closing it) is a
    failure unless a ``moved`` event announced it or the test said it would
    (``expect_end``, e.g. before killing the node): reading such a viewer's
    events raises, and ``wait_for`` fails as soon as the stream is gone. So
    "nothing more arrived" cannot pass on a stream that died.
    """

    url: str
    session: aiohttp.ClientSession
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    final_url: str = ""
    error: BaseException | None = None
    ended: str | None = None  # why the stream ended on its own; None while it is open
    _events: list[SSEEvent] = field(default_factory=list)
    _raw: bytearray = field(default_factory=bytearray)
    _end_expected: bool = False
    _task: asyncio.Task[None] | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def connect(self, timeout: float = 10.0) -> Viewer:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), timeout)
        return self

    async def _run(self) -> None:
        try:
            async with self.session.get(
                self.url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=None)
            ) as response:
                self.status = response.status
                self.final_url = str(response.url)
                self._connected.set()
                if response.status != 200:
                    self._raw.extend(await response.read())
                    return
                buffer = b""
                async for chunk in response.content.iter_any():
                    self._raw.extend(chunk)
                    buffer += chunk
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        await self._block(block.decode())
                await self._end("the node closed the stream")
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.error = exc
            await self._end(f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            pass  # close(): we ended it
        finally:
            self._connected.set()

    async def _end(self, why: str) -> None:
        async with self._changed:
            self.ended = why
            self._changed.notify_all()

    async def _block(self, block: str) -> None:
        event, data, ident = "message", [], None
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                ident = value
        if not data:
            return
        async with self._changed:
            self._events.append(SSEEvent(event, "\n".join(data), ident, time.time()))
            self._changed.notify_all()

    def expect_end(self) -> None:
        """The test is about to end this stream on purpose (kill its node)."""
        self._end_expected = True

    def _check_alive(self) -> None:
        """Raise if the stream ended on its own with nothing to say it would."""
        if self.ended is None or self.status != 200 or self._end_expected:
            return
        if any(e.event == "moved" for e in self._events):
            return
        raise AssertionError(
            f"{self.url}: the stream ended ({self.ended}) after "
            f"{[e.id or e.event for e in self._events]}"
        )

    @property
    def events(self) -> list[SSEEvent]:
        self._check_alive()
        return self._events

    @property
    def raw(self) -> bytearray:
        self._check_alive()
        return self._raw

    def of(self, kind: str = "comment") -> list[SSEEvent]:
        return [e for e in self.events if e.event == kind]

    async def wait_for(
        self, count: int, kind: str = "comment", timeout: float = 10.0
    ) -> list[SSEEvent]:
        def have() -> int:
            return sum(1 for e in self._events if e.event == kind)

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: have() >= count or self.ended is not None)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.url}: wanted {count} {kind} events, got {have()}: "
                f"{[e.id for e in self._events]}"
            ) from None
        if have() < count:
            self._check_alive()
            raise AssertionError(
                f"{self.url}: wanted {count} {kind} events, got {have()} before the stream "
                f"ended ({self.ended}): {[e.id or e.event for e in self._events]}"
            )
        return self.of(kind)

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in self.events if e.id]
        return ids[-1] if ids else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Api:
    """The comment service's HTTPS API, as a client sees it."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            data = orjson.dumps(json)
            all_headers.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method,
            self.base + path,
            data=data,
            headers=all_headers,
            allow_redirects=allow_redirects,
        ) as response:
            body = await response.read()
            try:
                parsed = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                parsed = body
            return response.status, parsed, response

    async def register(self, username: str, password: str = "correct horse battery") -> str:
        status, body, _ = await self.request(
            "POST", "/api/auth/register", json={"username": username, "password": password}
        )
        assert status == 201, body
        return str(body["token"])

    async def login(self, username: str, password: str = "correct horse battery") -> str:
        status, body, _ = await self.request(
            "POST", "/api/auth/login", json={"username": username, "password": password}
        )
        assert status == 200, body
        return str(body["token"])

    async def user_id(self, token: str) -> str:
        status, body, _ = await self.request("GET", "/api/auth/me", token=token)
        assert status == 200, body
        return str(body["id"])

    async def post(self, video: str, text: str, token: str, **extra: Any) -> dict[str, Any]:
        status, body, _ = await self.request(
            "POST", f"/api/videos/{video}/comments", json={"text": text, **extra}, token=token
        )
        assert status == 201, body
        return dict(body)

    async def page(self, video: str, **params: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, body, _ = await self.request("GET", f"/api/videos/{video}/comments?{query}")
        assert status == 200, body
        return dict(body)


PASSWORD = "correct horse battery"


async def create_admin(cluster: Cluster, username: str, password: str = PASSWORD) -> None:
    """The first admin, made by what ``livecomments users create-admin`` runs, in this
    process (no interpreter to start; the command itself is tested by test_cli.py
    and test_accounts_hardening.py)."""
    settings = cfg.load(cfg.BackendSettings, environ={**os.environ, **cluster.base_env()})
    await make_admin(settings, username, password)


async def staff(api: Api, cluster: Cluster, role: str = "moderator") -> tuple[str, str]:
    """A fresh user with ``role``: (token, user id). Made by an admin through the API."""
    admin = unique("admin")
    await create_admin(cluster, admin)
    admin_token = await api.login(admin)
    if role == "admin":
        status, me, _ = await api.request("GET", "/api/auth/me", token=admin_token)
        return admin_token, str(me["id"])
    name = unique(role)
    await api.register(name)
    status, me, _ = await api.request("GET", "/api/auth/me", token=await api.login(name))
    status, body, _ = await api.request(
        "PUT", f"/api/users/{me['id']}/role", json={"role": role}, token=admin_token
    )
    assert status == 200, body
    return await api.login(name), str(me["id"])


# Before Python 3.12.8 a TLS connection closed while its shutdown is still under way
# can leave its socket open (python/cpython#118960): aiohttp then aborts those when
# the session closes, so no test leaves one behind (a ResourceWarning, an error).
_LEAKS_CLOSED_TLS = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


def client_session(
    ca_file: str, limit: int = 200, source: str | None = None
) -> aiohttp.ClientSession:
    """A client; ``source`` picks the local address (127.0.0.x) connections come from."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    connector = aiohttp.TCPConnector(
        ssl=context if context else False,
        limit=limit,
        local_addr=(source, 0) if source else None,
        enable_cleanup_closed=_LEAKS_CLOSED_TLS,
    )
    return aiohttp.ClientSession(connector=connector)


async def on_own_session(cluster: Cluster, make: Callable[[Api], Awaitable[T]]) -> T:
    """``make(api)`` over a client session of its own, closed at once: for module-scoped
    fixtures (users, tokens), whose results outlive the session they were made with."""
    async with client_session(cluster.ca_file) as http:
        return await make(Api(cluster.services["comment-1"].url, http))


def unique(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() % 10**12}"


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = ""
) -> None:
    """Until ``check()`` (a function or a coroutine function) is true, polled every
    0.05 s: instead of a fixed sleep, wait for what the sleep was waiting for."""
    deadline = time.monotonic() + timeout
    while True:
        done = check()
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await asyncio.sleep(0.05)


@dataclass
class Follower:
    """A viewer that behaves like the viewer page: it follows ``moved``, reconnects
    with backoff through the stream endpoint with its last event id, reloads
    history after ``reset``, and records every comment it is shown.
    """

    api: Api
    video: str
    others: list[Api] = field(default_factory=list)  # other comment services to fall back on
    seqs: list[int] = field(default_factory=list)  # comment seqs in arrival order
    ids: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # where each connection landed
    moves: int = 0
    resets: int = 0
    reconnects: int = 0
    catch_up: list[float] = field(default_factory=list)  # s from disconnect to first event
    last_id: str | None = None
    _next_url: str | None = None
    _task: asyncio.Task[None] | None = None
    _seen: asyncio.Event = field(default_factory=asyncio.Event)
    _reloaded: set[str] = field(default_factory=set)

    def start(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        return self

    @staticmethod
    async def all_connected(followers: list[Follower], timeout: float = 10.0) -> None:
        """Until each one has a stream open (from then on it is owed every comment)."""
        for _ in range(int(timeout / 0.05)):
            if all(f.nodes for f in followers):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("followers did not connect")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.05
        lost_at: float | None = None
        while True:
            url = self._next_url or f"{self.api.base}/api/videos/{self.video}/stream"
            self._next_url = None
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                async with self.api.session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=30)
                ) as response:
                    if response.status != 200:
                        raise ConnectionError(f"{url}: {response.status}")
                    self.nodes.append(f"{response.url.host}:{response.url.port}")
                    backoff = 0.05
                    buffer = b""
                    async for chunk in response.content.iter_any():
                        buffer += chunk
                        while b"\n\n" in buffer:
                            block, buffer = buffer.split(b"\n\n", 1)
                            if lost_at is not None and b"data:" in block:
                                self.catch_up.append(time.monotonic() - lost_at)
                                lost_at = None
                            if await self._block(block.decode()):
                                break
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                if self.others and self._next_url is None:  # try the next comment service
                    self.others.append(self.api)
                    self.api = self.others.pop(0)
            if lost_at is None:
                lost_at = time.monotonic()
            self.reconnects += 1
            if self._next_url is None:  # not told where to go: wait a little, then retry
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _block(self, block: str) -> bool:
        """Handle one SSE block; True when the connection should be left."""
        event, data, ident = "message", "", None
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data = value
            elif name == "id":
                ident = value
        if ident:
            self.last_id = ident
        if event == "comment":
            body = orjson.loads(data)
            position = Position.parse(ident)
            assert position is not None, f"a comment without a position: {ident!r}"
            if body["id"] in self._reloaded:
                # Loaded from history after a reset and then sent live too: the page
                # shows it once (it keys comments by id), so do we.
                self._reloaded.discard(body["id"])
                return False
            self.seqs.append(position.seq)
            self.ids.append(body["id"])
            self._seen.set()
        elif event == "moved":
            body = orjson.loads(data)
            self.moves += 1
            self._next_url = body.get("url")
            # As a client that follows the `moved` URL as is would: the node says
            # it is the last id it sent, never an older one (the viewer page keeps
            # its own, which must then be the same), so a repeat here is the node's.
            if body.get("last_event_id"):
                self.last_id = body["last_event_id"]
            return True
        elif event == "reset":
            self.resets += 1
            await self._reload(orjson.loads(data).get("epoch"))
        return False

    async def _reload(self, epoch: int | None) -> None:
        """After a reset: what history has after the last comment shown, then live again."""
        after = self.seqs[-1] if self.seqs else 0
        while True:
            status, page, _ = await self.api.request(
                "GET", f"/api/videos/{self.video}/comments?after={after}&limit=100"
            )
            if status != 200:
                await asyncio.sleep(0.2)
                continue
            for item in page["items"]:
                for doc in (item, *item.get("replies", ())):
                    if doc["seq"] > after and doc["id"] not in self.ids:
                        self.seqs.append(int(doc["seq"]))
                        self.ids.append(doc["id"])
                        self._reloaded.add(doc["id"])
            if page["next_after"] is None:
                break
            after = page["next_after"]
        if epoch is not None and self.seqs:
            self.last_id = f"{epoch}-{max(self.seqs)}"


_cli_lock = threading.Lock()


async def cli(cluster: Cluster, *args: str, check: bool = True) -> tuple[int, Any, str]:
    """``livecomments ARGS --json`` as an operator would run it; (exit code, JSON, stderr).

    The command runs in this process (click's runner, in a thread, one at a time:
    it swaps the process's environment and standard streams while it runs), so
    no interpreter starts for it; tests/system/test_cli.py runs it as a real process.
    """

    def run() -> Result:
        with _cli_lock:
            return CliRunner().invoke(main, [*args, "--json"], env=cluster.base_env())

    result = await asyncio.wait_for(asyncio.to_thread(run), 60)
    if check:
        assert result.exit_code == 0, (args, result.stderr, result.exception)
    out = result.stdout
    return result.exit_code, orjson.loads(out) if out.strip() else None, result.stderr
