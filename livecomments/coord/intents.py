"""Operator intent: pins, drains and rebalance requests, and the state they are judged on.

Operators (``livecomments pin``, ``move``, ``unpin``, ``drain``, ``undrain``,
``rebalance``; the face is ``livecomments.cli.ops``) write intent only; the RTMS
nodes watch it through :class:`coord.placement.Placement` and move their viewers.
This module and placement.py are the only ones that know what ``/placement``,
``/drain`` and ``/rebalance`` mean; the payloads are in :mod:`coord.records`.

A :class:`Snapshot` is one read of everything placement depends on, and
placement is computed from it with :func:`coord.placement.place`, the function
the services use, so what an operator is shown is what the services decide. A
change is checked against a snapshot first: a refusal writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from livecomments.coord.client import ZK
from livecomments.coord.paths import check_name
from livecomments.coord.placement import Policy, place, placeable
from livecomments.coord.records import (
    CommentWorker,
    Dispatcher,
    Drain,
    Move,
    Pin,
    RebalanceRequest,
    RtmsNode,
    stamp,
)
from livecomments.kernel.errors import Conflict, NotFound, ValidationError
from livecomments.kernel.ids import valid_video_id
from livecomments.kernel.viewers import Live

log = logging.getLogger(__name__)

# Each video's viewers per live node, given the videos and a node's live boot id
# (``kernel.viewers.by_node`` on a Redis client).
ViewerSource = Callable[[Sequence[str], Live], Awaitable[dict[str, dict[str, int]]]]

KEEP_REBALANCE_REQUESTS = 20  # older request znodes are deleted; nodes only react to new ones
REBALANCE_PREFIX = "req-"


@dataclass(frozen=True)
class Snapshot:
    """One read of everything placement depends on, taken at once."""

    rtms: dict[str, RtmsNode]  # live RTMS node -> its load report
    dispatchers: dict[str, Dispatcher]
    workers: dict[str, CommentWorker]  # comment-service lease znode -> its record
    hosted: dict[str, list[str]]  # video -> nodes with /hosted/{video}/{node}
    pins: dict[str, Pin]
    drains: dict[str, Drain]
    rebalances: list[str]  # request znodes, oldest first
    policy: Policy
    # Each video's viewers per node from Redis (``kernel/viewers.py``), when read;
    # otherwise the nodes' records, which list only their busy videos.
    viewers: dict[str, dict[str, int]] | None = None

    def placed(self, video: str) -> list[str]:
        return place(video, placeable(self.rtms), self.pins, self.drains, self.policy)

    def viewers_by_node(self, video: str) -> dict[str, int]:
        if self.viewers is not None:
            return dict(self.viewers.get(video, {}))
        return {
            node: report.viewers_by_video[video]
            for node, report in self.rtms.items()
            if video in report.viewers_by_video
        }

    def videos(self) -> list[str]:
        """Every video someone hosts or an operator pinned."""
        return sorted(set(self.hosted) | set(self.pins))

    def plan(self) -> list[Move]:
        """Viewers a rebalance would move: each hosted (video, node) the node is not placed for."""
        moves: list[Move] = []
        for video, hosts in sorted(self.hosted.items()):
            placed = self.placed(video)
            by_node = self.viewers_by_node(video)
            for node in hosts:
                # A dead node's /hosted entries vanish with its session; nobody would act on them.
                if node in self.rtms and node not in placed:
                    moves.append(
                        {
                            "video": video,
                            "from": node,
                            "to": placed,
                            "viewers": by_node.get(node, 0),
                        }
                    )
        return moves


@dataclass(frozen=True)
class PinChange:
    """A pin written: the pin, the one it replaced, and the viewers now being moved."""

    video: str
    pin: Pin
    previous: Pin | None
    moving: dict[str, int]  # node not in the pin -> its viewers of the video


@dataclass(frozen=True)
class DrainChange:
    node: str
    drain: Drain  # ours, or the one that was already there
    already: bool


@dataclass(frozen=True)
class RebalanceChange:
    request: str  # the znode's name, req-{seq}
    record: RebalanceRequest


@dataclass(frozen=True)
class ServerInfo:
    """From ``srvr``; None when the server does not allow four-letter words."""

    mode: str | None = None
    version: str | None = None


class Intents:
    """Operator intent on one ZooKeeper session, written as ``by`` (user@host)."""

    def __init__(
        self, zk: ZK, policy: Policy, by: str, viewers: ViewerSource | None = None
    ) -> None:
        self.zk = zk
        self.paths = zk.paths
        self.policy = policy
        self.by = by
        self._viewers = viewers

    async def counted(self) -> Snapshot:
        """A snapshot with each video's viewers per node from ``viewers`` (Redis), which
        the records list only for busy videos; without them if it fails (logged)."""
        snap = await self.snapshot()
        if self._viewers is None:
            return snap
        boots = {node: report.boot for node, report in snap.rtms.items()}
        try:
            counts = await self._viewers(snap.videos(), boots.get)
        except Exception as exc:  # the records' busy lists, then
            log.warning("viewer counts unavailable, showing the nodes' records: %s", exc)
            return snap
        return dataclasses.replace(snap, viewers=counts)

    # -- reading -----------------------------------------------------------------

    async def _payloads(self, parent: str) -> dict[str, bytes]:
        """Each child of ``parent`` with its data; one that vanished in between is left out."""
        names = await self.zk.children(parent)
        found = await asyncio.gather(*(self.zk.get(f"{parent}/{name}") for name in names))
        return {name: data for name, data in zip(names, found, strict=True) if data is not None}

    async def _hosted(self) -> dict[str, list[str]]:
        buckets = self.paths.hosted_buckets()
        listed = await asyncio.gather(*(self.zk.children(b) for b in buckets))
        paths = [f"{b}/{v}" for b, videos in zip(buckets, listed, strict=True) for v in videos]
        hosts = await asyncio.gather(*(self.zk.children(path) for path in paths))
        return {
            path.rsplit("/", 1)[1]: sorted(nodes)
            for path, nodes in zip(paths, hosts, strict=True)
            if nodes
        }

    async def snapshot(self) -> Snapshot:
        p = self.paths
        hosted, rebalances = await asyncio.gather(self._hosted(), self._requests())
        parents = (p.rtms_nodes, p.dispatchers, p.comment_workers, p.placement, p.drain)
        rtms, dispatchers, workers, pins, drains = await asyncio.gather(
            *map(self._payloads, parents)
        )
        return Snapshot(
            rtms={n: RtmsNode.decode(d) for n, d in rtms.items()},
            dispatchers={n: Dispatcher.decode(d) for n, d in dispatchers.items()},
            workers={n: CommentWorker.decode(d) for n, d in workers.items()},
            hosted=hosted,
            pins={v: Pin.decode(d) for v, d in pins.items()},
            drains={n: Drain.decode(d) for n, d in drains.items()},
            rebalances=rebalances,
            policy=self.policy,
        )

    async def connections(self, node: str) -> int | None:
        """The node's reported connections; None once it has left."""
        data = await self.zk.get(self.paths.rtms_node(node))
        return None if data is None else RtmsNode.decode(data).connections

    async def server(self) -> ServerInfo:
        """Mode and version of the ZooKeeper server this session talks to."""
        try:
            # Its own socket, bounded by the session timeout; refused unless whitelisted.
            answer = await asyncio.to_thread(self.zk.client.command, b"srvr")
        except (OSError, KazooException):
            return ServerInfo()
        mode = version = None
        for line in answer.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Mode":
                mode = value.strip()
            elif key.strip() == "Zookeeper version":
                version = value.strip().split(",")[0]
        return ServerInfo(mode, version)

    async def _requests(self) -> list[str]:
        children = await self.zk.children(self.paths.rebalance)
        return sorted((r for r in children if r.startswith(REBALANCE_PREFIX)), key=_sequence)

    # -- pins --------------------------------------------------------------------

    async def pin(self, video: str, nodes: Sequence[str]) -> PinChange:
        """Pin ``video`` to ``nodes``; RTMS nodes not in the pin move their viewers of it."""
        _check_video(video)
        wanted = tuple(dict.fromkeys(nodes))  # order kept, duplicates dropped
        if not wanted:
            raise ValidationError("name at least one node")
        snap = await self.counted()
        _check_placeable(snap, wanted)
        return await self._write_pin(snap, video, wanted)

    async def move(self, video: str, node: str) -> PinChange:
        """Pin ``video`` to ``node`` alone; refuses videos nobody hosts or pinned."""
        _check_video(video)
        snap = await self.counted()
        _check_placeable(snap, [node])
        if video not in snap.hosted and video not in snap.pins:
            raise NotFound(f"unknown video {video!r}: no RTMS node hosts it and it is not pinned")
        return await self._write_pin(snap, video, (node,))

    async def _write_pin(self, snap: Snapshot, video: str, nodes: tuple[str, ...]) -> PinChange:
        pin = Pin(nodes, self.by, stamp())
        await self.zk.put(self.paths.placement_of(video), pin.encode())
        moving = {
            node: n
            for node, n in sorted(snap.viewers_by_node(video).items())
            if node not in nodes and n
        }
        return PinChange(video, pin, snap.pins.get(video), moving)

    async def unpin(self, video: str) -> Pin:
        """Remove the pin; the one removed."""
        _check_video(video)
        path = self.paths.placement_of(video)
        data = await self.zk.get(path)
        if data is None or not await self._delete(path):
            raise NotFound(f"video {video!r} is not pinned")
        return Pin.decode(data)

    # -- drains ------------------------------------------------------------------

    async def drain(self, node: str) -> DrainChange:
        """Ask ``node`` to hand its viewers over and take no new ones (idempotent)."""
        _check_node(node)
        path = self.paths.drain_of(node)
        existing = await self.zk.get(path)
        if existing is not None:
            return DrainChange(node, Drain.decode(existing), already=True)
        if await self.zk.get(self.paths.rtms_node(node)) is None:
            raise NotFound(f"unknown RTMS node {node!r}: {await self._live_list()}")
        drain = Drain(self.by, stamp())
        try:
            await self.zk.create(path, drain.encode(), makepath=True)
        except NodeExistsError:  # another operator was quicker: theirs stands
            return DrainChange(node, Drain.decode(await self.zk.get(path)), already=True)
        return DrainChange(node, drain, already=False)

    async def undrain(self, node: str) -> Drain:
        """Remove the drain; the one removed."""
        _check_node(node)
        path = self.paths.drain_of(node)
        data = await self.zk.get(path)
        if data is None or not await self._delete(path):
            raise NotFound(f"node {node!r} is not drained")
        return Drain.decode(data)

    async def _live_list(self) -> str:
        live = sorted(await self.zk.children(self.paths.rtms_nodes))
        return f"live RTMS nodes: {', '.join(live)}" if live else "no RTMS node is live"

    # -- rebalance ---------------------------------------------------------------

    async def request_rebalance(self, plan: Sequence[Move]) -> RebalanceChange:
        """Write one request every RTMS node acts on, and drop all but the newest requests."""
        request = RebalanceRequest(stamp(), self.by, tuple(plan))
        created = await self.zk.create(
            f"{self.paths.rebalance}/{REBALANCE_PREFIX}",
            request.encode(),
            sequence=True,
            makepath=True,
        )
        stale = (await self._requests())[:-KEEP_REBALANCE_REQUESTS]
        await asyncio.gather(*(self.zk.delete(f"{self.paths.rebalance}/{r}") for r in stale))
        return RebalanceChange(created.rsplit("/", 1)[1], request)

    async def _delete(self, path: str) -> bool:
        """False when it was already gone."""
        try:
            await self.zk.delete(path, missing_ok=False)
        except NoNodeError:
            return False
        return True


def _check_video(video: str) -> None:
    if not valid_video_id(video):
        raise ValidationError(f"not a video id: {video!r} (1-64 of A-Z a-z 0-9 _ -)")


def _check_node(node: str) -> None:
    try:
        check_name(node)
    except ValueError as exc:
        raise ValidationError(f"not a node id: {node!r}") from exc


def _check_placeable(snap: Snapshot, nodes: Sequence[str]) -> None:
    for node in nodes:
        if node not in snap.rtms:
            live = ", ".join(sorted(snap.rtms)) or "none"
            raise NotFound(f"unknown RTMS node {node!r} (live RTMS nodes: {live})")
        if node in snap.drains:
            # place() ignores pins to draining nodes: the pin would silently not apply.
            raise Conflict(f"node {node!r} is draining; undrain it first")


def _sequence(name: str) -> int:
    suffix = name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1
