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
from typing import Any

from livecomments.coord.client import ZK
from livecomments.coord.mirror import NodeDirectory
from livecomments.kernel.settings import BackendSettings


def _weight(video_id: str, node_id: str) -> int:
    digest = hashlib.blake2b(f"{video_id}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(video_id: str, nodes: Iterable[str], count: int = 1) -> list[str]:
    """The ``count`` best nodes for ``video_id``, best first."""
    ranked = sorted(nodes, key=lambda node: _weight(video_id, node), reverse=True)
    return ranked[:count]


@dataclass(frozen=True, slots=True)
class Policy:
    min_spread: int = 1  # nodes every video is placed on (2 keeps a warm spare)
    spread_viewers: int = 5000  # one more node per this many viewers of a video
    max_spread: int = 4

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> Policy:
        return cls(settings.min_spread, max(1, settings.spread_viewers), settings.max_spread)


def viewers_of(video_id: str, nodes: Mapping[str, Mapping[str, Any]]) -> int:
    """A video's viewers over all nodes, from their load reports."""
    total = 0
    for info in nodes.values():
        counts = info.get("viewers_by_video")
        if isinstance(counts, dict):
            value = counts.get(video_id, 0)
            total += value if isinstance(value, int) else 0
    return total


def pinned_nodes(pin: Mapping[str, Any] | None) -> list[str]:
    nodes = (pin or {}).get("nodes")
    return [n for n in nodes if isinstance(n, str)] if isinstance(nodes, list) else []


def place(
    video_id: str,
    nodes: Mapping[str, Mapping[str, Any]],
    pins: Mapping[str, Mapping[str, Any]],
    drains: Collection[str],
    policy: Policy,
    exclude: Collection[str] = (),
) -> list[str]:
    """The nodes ``video_id`` belongs on, best first; [] when no node can take it."""
    usable = [n for n in nodes if n not in drains and n not in exclude]
    pinned = [n for n in pinned_nodes(pins.get(video_id)) if n in usable]
    if pinned:
        return pinned
    want = max(policy.min_spread, 1 + viewers_of(video_id, nodes) // policy.spread_viewers)
    return rendezvous(video_id, usable, max(1, min(want, policy.max_spread)))


class Placement:
    """Mirrors what placement depends on: RTMS nodes, pins, drains, rebalance requests."""

    def __init__(self, zk: ZK, policy: Policy, nodes: NodeDirectory | None = None) -> None:
        self.policy = policy
        self.nodes = nodes or NodeDirectory(zk, zk.paths.rtms_nodes)
        self.pins = NodeDirectory(zk, zk.paths.placement)
        self.drains = NodeDirectory(zk, zk.paths.drain)
        self.rebalances = NodeDirectory(zk, zk.paths.rebalance)
        self._own_nodes = nodes is None

    async def start(self) -> None:
        if self._own_nodes:
            await self.nodes.start()
        for mirror in (self.pins, self.drains, self.rebalances):
            await mirror.start()

    def placed(self, video_id: str, exclude: Collection[str] = ()) -> list[str]:
        live = {n: i for n, i in self.nodes.nodes.items() if isinstance(i.get("sse_url"), str)}
        return place(video_id, live, self.pins.nodes, self.drains.nodes, self.policy, exclude)

    def url(self, node_id: str) -> str | None:
        url = self.nodes.nodes.get(node_id, {}).get("sse_url")
        return url if isinstance(url, str) else None
