"""A set of ephemeral znodes this process owns, re-created after a session loss.

Ephemeral nodes die with the session. When kazoo reconnects with a new session
the set is reconciled: missing nodes are created again, and a node left behind
by a previous incarnation of this process (same path, other session, e.g. after
``kill -9`` and a quick restart) is replaced.
"""

from __future__ import annotations

import asyncio
import logging

from kazoo.exceptions import NodeExistsError, NoNodeError

from livecomments.coord.client import ZK
from livecomments.kernel.errors import LiveCommentsError

log = logging.getLogger(__name__)


class EphemeralSet:
    def __init__(self, zk: ZK) -> None:
        self._zk = zk
        self._wanted: dict[str, bytes] = {}
        self._reconcile_task: asyncio.Task[None] | None = None
        zk.add_state_listener(self._on_state)

    def __contains__(self, path: str) -> bool:
        return path in self._wanted

    async def add(self, path: str, data: bytes = b"") -> None:
        self._wanted[path] = data
        await self._ensure(path, data)

    async def update(self, path: str, data: bytes) -> None:
        self._wanted[path] = data
        try:
            await self._zk.set(path, data)
        except NoNodeError:
            await self._ensure(path, data)

    async def remove(self, path: str) -> None:
        self._wanted.pop(path, None)
        await self._zk.delete(path)

    async def clear(self) -> None:
        paths, self._wanted = list(self._wanted), {}
        for path in paths:
            try:
                await self._zk.delete(path)
            except LiveCommentsError as exc:
                log.warning("could not delete %s: %s", path, exc)

    async def _ensure(self, path: str, data: bytes) -> None:
        client = self._zk.client
        for _ in range(3):
            try:
                await self._zk.create(path, data, ephemeral=True, makepath=True)
                return
            except NoNodeError:
                continue  # a parent was removed concurrently; make it again
            except NodeExistsError:
                stat = await self._zk.call("exists", client.exists_async(path))
                if stat is None:
                    continue
                if stat.ephemeralOwner == client.client_id[0]:
                    await self._zk.set(path, data)
                    return
                # Left by an earlier session of ours that has not expired yet.
                await self._zk.delete(path)
        raise LiveCommentsError(f"could not create ephemeral node {path}")

    def _on_state(self, state: str) -> None:
        if state == "CONNECTED" and self._wanted:
            if self._reconcile_task is None or self._reconcile_task.done():
                self._reconcile_task = asyncio.get_running_loop().create_task(self._reconcile())

    async def _reconcile(self) -> None:
        for path, data in list(self._wanted.items()):
            if path not in self._wanted:
                continue
            try:
                await self._ensure(path, data)
            except LiveCommentsError as exc:
                log.warning("re-registering %s failed: %s", path, exc)
