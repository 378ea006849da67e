"""In-memory mirrors of ZooKeeper subtrees, kept current by watches.

kazoo watches fire once, on kazoo's thread; each firing re-arms the watch from
the event loop (``call_soon_threadsafe``) and re-reads the node. Reads are
answered in request order on one session, so the last answer applied is the
newest state. kazoo forgets every watch when the connection drops, so on each
reconnect the whole subtree is read again. Readers on the hot path (the
dispatcher's routing) only look at plain dicts: no ZooKeeper call there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from livecomments.coord.client import ZK
from livecomments.coord.records import json_object

log = logging.getLogger(__name__)

Listener = Callable[[], None]
R = TypeVar("R")


class _Mirror:
    """Base: a root whose children are watched, and per child a second watch."""

    def __init__(self, zk: ZK, root: str) -> None:
        self._zk = zk
        self.root = root
        self._children: set[str] = set()
        self._listeners: list[Listener] = []
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        zk.add_state_listener(self._on_state)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def loaded(self) -> bool:
        """Every child has been read once (readiness: a dispatcher's whole table)."""
        return self._ready.is_set()

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("mirror listener failed")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._zk.ensure_path(self.root)
        self._arm_root()
        await asyncio.wait_for(self._ready.wait(), self._zk.timeout)

    def _on_state(self, state: str) -> None:
        if state == "CONNECTED" and self._loop is not None:
            self._arm_root()
            for child in list(self._children):
                self._arm_child(child)

    # -- watches (callbacks on kazoo's thread only hop to the loop) ------------

    def _root_fired(self, event: WatchedEvent) -> None:
        if event.type != EventType.NONE and self._loop is not None:
            self._loop.call_soon_threadsafe(self._arm_root)

    def _child_fired(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._loop is None or not event.path:
            return
        child = event.path.rsplit("/", 1)[1]
        self._loop.call_soon_threadsafe(self._arm_child, child)

    def _arm_root(self) -> None:
        try:
            result = self._zk.client.get_children_async(self.root, watch=self._root_fired)
        except Exception as exc:  # not connected: the reconnect re-arms
            log.debug("cannot watch %s: %s", self.root, exc)
            return
        self._zk.bridge(result).add_done_callback(self._root_answer)

    def _root_answer(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            log.debug(
                "reading %s failed: %r",
                self.root,
                None if future.cancelled() else future.exception(),
            )
            return
        now = set(future.result())
        for gone in self._children - now:
            self._children.discard(gone)
            self._forget(gone)
        for new in now - self._children:
            self._children.add(new)
            self._arm_child(new)
        if not now:
            self._ready.set()
        self._changed()

    def _arm_child(self, child: str) -> None:
        if child not in self._children:
            return
        path = f"{self.root}/{child}"
        try:
            result = self._read_child(path)
        except Exception as exc:
            log.debug("cannot watch %s: %s", path, exc)
            return
        self._zk.bridge(result).add_done_callback(lambda f: self._child_answer(child, f))

    def _child_answer(self, child: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, NoNodeError):
            self._children.discard(child)
            self._forget(child)
        elif error is not None:
            log.debug("reading %s/%s failed: %r", self.root, child, error)
            return
        elif child in self._children:
            self._store(child, future.result())
        if self._complete():
            self._ready.set()
        self._changed()

    # -- what a subclass decides ---------------------------------------------

    def _read_child(self, path: str) -> Any:
        raise NotImplementedError

    def _store(self, child: str, answer: Any) -> None:
        raise NotImplementedError

    def _forget(self, child: str) -> None:
        raise NotImplementedError

    def _complete(self) -> bool:
        raise NotImplementedError


class NodeDirectory(_Mirror):
    """The children of a znode (``/nodes/{kind}``, ``/placement``...), each with its payload.

    ``nodes`` holds each payload's JSON object (:func:`records.json_object`);
    :meth:`view` holds them as typed records, decoded once per change.
    """

    def __init__(self, zk: ZK, root: str) -> None:
        super().__init__(zk, root)
        self.nodes: dict[str, dict[str, Any]] = {}
        self._views: dict[Callable[[dict[str, Any]], Any], dict[str, Any]] = {}

    def view(self, decode: Callable[[dict[str, Any]], R]) -> Mapping[str, R]:
        """Every child's payload as ``decode`` (a record's ``from_json``) makes it.

        The same mapping is kept current from then on, so readers on a hot path
        (placement, routing) look up typed records without parsing anything.
        """
        found = self._views.get(decode)
        if found is None:
            found = self._views[decode] = {c: decode(i) for c, i in self.nodes.items()}
        return cast(Mapping[str, R], found)

    def _read_child(self, path: str) -> Any:
        return self._zk.client.get_async(path, watch=self._child_fired)

    def _store(self, child: str, answer: Any) -> None:
        data, _stat = answer
        info = self.nodes[child] = json_object(data)
        for decode, view in self._views.items():
            view[child] = decode(info)

    def _forget(self, child: str) -> None:
        self.nodes.pop(child, None)
        for view in self._views.values():
            view.pop(child, None)

    def _complete(self) -> bool:
        return self._children <= self.nodes.keys()


class _HostedBucket(_Mirror):
    """One bucket of ``/hosted``: its videos and their nodes, into the shared ``videos``."""

    def __init__(self, zk: ZK, root: str, videos: dict[str, frozenset[str]]) -> None:
        super().__init__(zk, root)
        self.videos = videos
        self._seen: set[str] = set()

    def _read_child(self, path: str) -> Any:
        return self._zk.client.get_children_async(path, watch=self._child_fired)

    def _store(self, child: str, answer: Any) -> None:
        self._seen.add(child)
        nodes = frozenset(answer)
        if nodes:
            self.videos[child] = nodes
        else:
            self.videos.pop(child, None)

    def _forget(self, child: str) -> None:
        self._seen.discard(child)
        self.videos.pop(child, None)

    def _complete(self) -> bool:
        return self._children <= self._seen


class RoutingTable:
    """video id -> ids of the RTMS nodes hosting it, from ``/hosted/{bucket}/{video}/{node}``.

    One mirror per bucket (``paths.HOSTED_BUCKETS``), all writing one table: a video
    that starts or ends makes this table re-read only its bucket's list.
    """

    def __init__(self, zk: ZK) -> None:
        self.videos: dict[str, frozenset[str]] = {}
        self._buckets = [_HostedBucket(zk, root, self.videos) for root in zk.paths.hosted_buckets()]

    def add_listener(self, listener: Listener) -> None:
        for bucket in self._buckets:
            bucket.add_listener(listener)

    @property
    def loaded(self) -> bool:
        """Every bucket read once (readiness: a dispatcher's whole table)."""
        return all(bucket.loaded for bucket in self._buckets)

    async def start(self) -> None:
        await asyncio.gather(*(bucket.start() for bucket in self._buckets))

    def nodes_for(self, video_id: str) -> frozenset[str]:
        return self.videos.get(video_id, frozenset())

    def drop_node(self, node_id: str) -> None:
        """Stop routing to a node found dead before ZooKeeper notices its session is gone."""
        for video, nodes in list(self.videos.items()):
            if node_id in nodes:
                rest = nodes - {node_id}
                if rest:
                    self.videos[video] = rest
                else:
                    del self.videos[video]
