"""Process membership: ``/nodes/{kind}/{id}`` ephemeral nodes, and Snowflake worker leases."""

from __future__ import annotations

import logging
from typing import Generic, Protocol, TypeVar

from livecomments.coord.client import ZK
from livecomments.coord.ephemeral import EphemeralSet
from livecomments.coord.records import CommentWorker
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.ids import MAX_WORKER

log = logging.getLogger(__name__)


class _Encodes(Protocol):
    def encode(self) -> bytes: ...


R = TypeVar("R", bound=_Encodes)


class Membership(Generic[R]):
    """Announces one process with its record (:class:`records.RtmsNode`, ``Dispatcher``)."""

    def __init__(self, zk: ZK, path: str) -> None:
        self._zk = zk
        self.path = path
        self._nodes = EphemeralSet(zk)
        self.record: R | None = None  # what was published last

    async def join(self, record: R) -> None:
        self.record = record
        await self._nodes.add(self.path, record.encode())

    async def update(self, record: R) -> None:
        self.record = record
        await self._nodes.update(self.path, record.encode())

    async def leave(self) -> None:
        await self._nodes.clear()


class WorkerLease:
    """A Snowflake worker id no other live comment-service process holds.

    Each process creates an ephemeral sequential node; its sequence number,
    folded into the cluster's range of ids (``first``..``last``, all 1024 by
    default), is the worker id. If another live node maps to the same id the
    lease is taken again until the id is unique. Clusters sharing one store get
    ranges of their own (``LIVECOMMENTS_WORKER_IDS``).
    """

    def __init__(self, zk: ZK) -> None:
        self._zk = zk
        self.worker_id = -1
        self.path = ""

    async def acquire(
        self,
        url: str | None = None,
        metrics: str | None = None,
        ids: tuple[int, int] = (0, MAX_WORKER),
    ) -> int:
        """Lease a worker id within ``ids`` (first, last); the lease also says where
        this process is reached."""
        base = self._zk.paths.comment_workers
        first, last = ids

        def worker_of(name: str) -> int:
            return first + int(name.rsplit("-", 1)[1]) % (last - first + 1)

        # Consecutive sequence numbers walk the range: enough tries to pass every id.
        for _ in range(min(last - first + 1, 1024) + 8):
            path = await self._zk.create(f"{base}/w-", b"", ephemeral=True, sequence=True)
            worker = worker_of(path)
            mine = path.rsplit("/", 1)[1]
            others = [c for c in await self._zk.children(base) if c != mine]
            if all(worker_of(c) != worker for c in others):
                await self._zk.set(path, CommentWorker(worker, url, metrics).encode())
                self.worker_id, self.path = worker, path
                return worker
            await self._zk.delete(path)
        raise Unavailable("no free Snowflake worker id")

    async def release(self) -> None:
        if self.path:
            await self._zk.delete(self.path)
            self.path = ""
