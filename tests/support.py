"""Clients the tests use to act like real users: HTTPS API calls and SSE viewers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from livecomments.cluster import Cluster


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None
    received_at: float

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class Viewer:
    """An SSE client that records every event it receives (parsed as a browser would)."""

    url: str
    session: aiohttp.ClientSession
    headers: dict[str, str] = field(default_factory=dict)
    events: list[SSEEvent] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    status: int = 0
    final_url: str = ""
    error: BaseException | None = None
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
                    self.raw.extend(await response.read())
                    return
                buffer = b""
                async for chunk in response.content.iter_any():
                    self.raw.extend(chunk)
                    buffer += chunk
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        await self._block(block.decode())
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self._connected.set()

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
            self.events.append(SSEEvent(event, "\n".join(data), ident, time.time()))
            self._changed.notify_all()

    def of(self, kind: str = "comment") -> list[SSEEvent]:
        return [e for e in self.events if e.event == kind]

    async def wait_for(
        self, count: int, kind: str = "comment", timeout: float = 10.0
    ) -> list[SSEEvent]:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.of(kind)) >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.url}: wanted {count} {kind} events, got {len(self.of(kind))}: "
                f"{[e.id for e in self.events]}"
            ) from None
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


def create_admin(cluster: Cluster, username: str, password: str = PASSWORD) -> None:
    """``livecomments users create-admin``, the way an operator makes the first admin."""
    result = subprocess.run(
        [sys.executable, "-m", "livecomments", "users", "create-admin", username,
         "--password-stdin"],
        input=password + "\n",
        env={**os.environ, **cluster.base_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


async def staff(api: Api, cluster: Cluster, role: str = "moderator") -> tuple[str, str]:
    """A fresh user with ``role``: (token, user id). Made by an admin through the API."""
    admin = unique("admin")
    await asyncio.to_thread(create_admin, cluster, admin)
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


def client_session(
    ca_file: str, limit: int = 200, source: str | None = None
) -> aiohttp.ClientSession:
    """A client; ``source`` picks the local address (127.0.0.x) connections come from."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    connector = aiohttp.TCPConnector(
        ssl=context if context else False,
        limit=limit,
        local_addr=(source, 0) if source else None,
    )
    return aiohttp.ClientSession(connector=connector)


def unique(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() % 10**12}"
