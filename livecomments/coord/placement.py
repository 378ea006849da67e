"""Where a video should live.

Unpinned videos: rendezvous (highest-random-weight) hashing of the video id
over live, non-draining RTMS nodes. Every component computes the same answer
from the same mirrored state, so the comment service and the RTMS nodes agree
without asking anyone, and removing a node moves only the videos it held. A
video with many viewers is spread over more nodes (one more per
``spread_viewers``), and shrinks back as they leave. A pin (``/placement/{video}``)
overrides hashing for as long as one of its nodes is alive and not draining.

The decision is separate from acting on it: viewers already on a node that is
no longer placed for their video stay there (a node joining must not churn
every stream) until an operator pins, drains or rebalances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from livecomments.coord.client import ZK
from livecomments.coord.mirror import NodeDirectory
from livecomments.coord.records import Pin, RtmsNode


def _weight(video_id: str, node_id: str) -> int:
    digest = hashlib.blake2b(f"{video_id}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(video_id: str, nodes: Iterable[str], count: int = 1) -> list[str]:
    """The ``count`` best nodes for ``video_id``, best first."""
    ranked = sorted(nodes, key=lambda node: _weight(video_id, node), reverse=True)
    return ranked[:count]


class Spread(Protocol):
    """The settings placement reads (the services' settings have them, under these names)."""

    @property
    def min_spread(self) -> int: ...
    @property
    def spread_viewers(self) -> int: ...
    @property
    def max_spread(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Policy:
    min_spread: int = 1  # nodes every video is placed on (2 keeps a warm spare)
    spread_viewers: int = 5000  # one more node per this many viewers of a video
    max_spread: int = 4

    @classmethod
    def from_settings(cls, settings: Spread) -> Policy:
        return cls(settings.min_spread, max(1, settings.spread_viewers), settings.max_spread)


def viewers_of(video_id: str, nodes: Mapping[str, RtmsNode]) -> int:
    """A video's viewers over all nodes, from their records: only the nodes where it
    is busy list it (``records.busy_floor``), in coarse steps, which is what spreading
    needs; the exact count is in Redis (``kernel/viewers.py``)."""
    return sum(node.viewers_of(video_id) for node in nodes.values())


def place(
    video_id: str,
    nodes: Mapping[str, RtmsNode],
    pins: Mapping[str, Pin],
    drains: Collection[str],
    policy: Policy,
    exclude: Collection[str] = (),
) -> list[str]:
    """The nodes ``video_id`` belongs on, best first; [] when no node can take it."""
    usable = [n for n in nodes if n not in drains and n not in exclude]
    pin = pins.get(video_id)
    pinned = [n for n in pin.nodes if n in usable] if pin is not None else []
    if pinned:
        return pinned
    want = max(policy.min_spread, 1 + viewers_of(video_id, nodes) // policy.spread_viewers)
    return rendezvous(video_id, usable, max(1, min(want, policy.max_spread)))


def placeable(nodes: Mapping[str, RtmsNode]) -> dict[str, RtmsNode]:
    """The nodes that published where viewers reach them: the only ones placed on."""
    return {n: node for n, node in nodes.items() if node.sse_url is not None}


class Placement:
    """Mirrors what placement depends on: RTMS nodes, pins, drains, rebalance requests."""

    def __init__(self, zk: ZK, policy: Policy, nodes: NodeDirectory | None = None) -> None:
        self.policy = policy
        self.nodes = nodes or NodeDirectory(zk, zk.paths.rtms_nodes)
        self.pins = NodeDirectory(zk, zk.paths.placement)
        self.drains = NodeDirectory(zk, zk.paths.drain)
        self.rebalances = NodeDirectory(zk, zk.paths.rebalance)
        self._own_nodes = nodes is None
        self._reports = self.nodes.view(RtmsNode.from_json)
        self._pins = self.pins.view(Pin.from_json)

    async def start(self) -> None:
        if self._own_nodes:
            await self.nodes.start()
        for mirror in (self.pins, self.drains, self.rebalances):
            await mirror.start()

    def placed(self, video_id: str, exclude: Collection[str] = ()) -> list[str]:
        live = placeable(self._reports)
        return place(video_id, live, self._pins, self.drains.nodes, self.policy, exclude)

    def url(self, node_id: str) -> str | None:
        node = self._reports.get(node_id)
        return node.sse_url if node is not None else None

    def boot(self, node_id: str) -> str | None:
        """The boot id of ``node_id``'s live record: whose viewer counts count
        (``kernel/viewers.py``); None once its session ended."""
        node = self._reports.get(node_id)
        return node.boot if node is not None else None
