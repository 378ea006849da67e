"""An asyncio face on kazoo.

kazoo runs its callbacks on its own threads. Every result is handed to the
event loop with ``loop.call_soon_threadsafe`` and every call is bounded by a
timeout, because without a ZooKeeper quorum kazoo waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from livecomments.coord.paths import Paths
from livecomments.kernel.errors import CoordinationTimeout, Unavailable
from livecomments.kernel.readiness import ZOOKEEPER, Readiness

log = logging.getLogger(__name__)

StateListener = Callable[[str], None]


def zk_security(auth: str) -> dict[str, Any]:
    """``KazooClient`` arguments for digest credentials ``"user:password"`` ("" = none).

    The session authenticates as that identity, and every znode it creates
    (``create``, ``ensure_path``, transactions: kazoo's ``default_acl``) gets an
    ACL giving all permissions to that identity and nothing to anyone else:
    what the services and the CLI publish is not secret, but anyone able to
    write it could route comments or viewers elsewhere. The services and the
    operator commands both connect through :class:`ZK`, so both get it.
    """
    if not auth:
        return {}
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("LIVECOMMENTS_ZK_AUTH must be 'user:password'")
    return {
        "auth_data": [("digest", auth)],
        "default_acl": [make_digest_acl(user, password, all=True)],
    }


class ZK:
    """One ZooKeeper session per process, shared by every coord recipe.

    A service starts it once; an operator command (``livecomments.cli.ops``)
    starts one for the command's run and stops it at the end.
    """

    def __init__(
        self,
        hosts: str,
        root: str,
        *,
        session_timeout: float = 6.0,
        timeout: float = 5.0,
        auth: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        self.paths = Paths(root)
        self.timeout = timeout
        self._security = zk_security(auth)
        self._logger = logger  # kazoo's own logging (its "kazoo.client" logger when None)
        self._hosts = hosts
        self._session_timeout = session_timeout
        self._client: KazooClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[StateListener] = []
        self.state = "LOST"
        # For /metrics: times the session came back, and times it was lost (expired).
        self.reconnects = 0
        self.losses = 0
        self._was_connected = False

    @property
    def client(self) -> KazooClient:
        if self._client is None:
            raise Unavailable("zookeeper client not started")
        return self._client

    async def start(self, *, parents: bool = True) -> None:
        """Connect; with ``parents``, make the persistent parents of the layout.

        The operator commands pass ``parents=False``: one that only reads must not
        change ZooKeeper (one that writes makes the parents of what it writes).
        """
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._client = KazooClient(
            hosts=self._hosts,
            timeout=self._session_timeout,
            # Reconnect forever in the background; each of our calls has its own deadline.
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=2.0),
            logger=self._logger,
            **self._security,
        )
        self._client.add_listener(self._on_state)
        event = self._client.start_async()
        ok = await asyncio.wait_for(asyncio.to_thread(event.wait, self.timeout), self.timeout + 1)
        if not ok or not self._client.connected:
            self._client.stop()
            self._client.close()
            self._client = None
            raise CoordinationTimeout(f"cannot connect to ZooKeeper at {self._hosts}")
        self.state = "CONNECTED"
        self._was_connected = True
        for path in self.paths.parents() if parents else ():
            await self.ensure_path(path)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.stop)
            await asyncio.to_thread(client.close)

    # -- state -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "CONNECTED"

    def follow_in(self, readiness: Readiness) -> None:
        """Not ready (``zookeeper_disconnected``) while the session is not CONNECTED."""
        readiness.flag(ZOOKEEPER, lambda: not self.connected)
        self.add_state_listener(lambda state: readiness.changed())

    def add_state_listener(self, listener: StateListener) -> None:
        """``listener(state)`` runs on the event loop for CONNECTED, SUSPENDED, LOST."""
        self._listeners.append(listener)

    def _on_state(self, state: KazooState) -> None:  # kazoo thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch_state, str(state))

    def _dispatch_state(self, state: str) -> None:
        previous, self.state = self.state, state
        if previous != state:
            log.info("zookeeper session %s -> %s", previous, state)
            if state == "CONNECTED":
                # Not the first connection: start() may see it before or after this.
                self.reconnects += self._was_connected
                self._was_connected = True
            elif state == "LOST":
                self.losses += 1
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("zookeeper state listener failed")

    # -- calls -------------------------------------------------------------------

    def bridge(self, async_result: Any) -> asyncio.Future[Any]:
        """An asyncio future resolved on the loop when a kazoo IAsyncResult completes."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def done(result: Any) -> None:  # kazoo thread
            try:
                value, error = result.get_nowait(), None
            except Exception as exc:
                value, error = None, exc
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, value, error)

        async_result.rawlink(done)
        return future

    async def call(self, what: str, async_result: Any) -> Any:
        try:
            return await asyncio.wait_for(self.bridge(async_result), self.timeout)
        except TimeoutError as exc:
            raise CoordinationTimeout(f"zookeeper {what} timed out after {self.timeout}s") from exc

    async def create(
        self,
        path: str,
        data: bytes = b"",
        *,
        ephemeral: bool = False,
        sequence: bool = False,
        makepath: bool = False,
    ) -> str:
        return str(
            await self.call(
                f"create {path}",
                self.client.create_async(
                    path, data, ephemeral=ephemeral, sequence=sequence, makepath=makepath
                ),
            )
        )

    async def ensure_path(self, path: str) -> None:
        try:
            await self.create(path, makepath=True)
        except NodeExistsError:
            pass

    async def delete(self, path: str, *, missing_ok: bool = True) -> None:
        try:
            await self.call(f"delete {path}", self.client.delete_async(path))
        except NoNodeError:
            if not missing_ok:
                raise

    async def get(self, path: str) -> bytes | None:
        """The node's data, or None when it does not exist."""
        try:
            data, _stat = await self.call(f"get {path}", self.client.get_async(path))
        except NoNodeError:
            return None
        return bytes(data or b"")

    async def set(self, path: str, data: bytes) -> None:
        await self.call(f"set {path}", self.client.set_async(path, data))

    async def children(self, path: str) -> list[str]:
        try:
            return list(await self.call(f"children {path}", self.client.get_children_async(path)))
        except NoNodeError:
            return []

    async def exists(self, path: str) -> bool:
        return await self.call(f"exists {path}", self.client.exists_async(path)) is not None

    async def put(self, path: str, data: bytes, *, ephemeral: bool = False) -> None:
        """Create or overwrite ``path``."""
        try:
            await self.create(path, data, ephemeral=ephemeral, makepath=True)
        except NodeExistsError:
            await self.set(path, data)
