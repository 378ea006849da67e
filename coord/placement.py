"""Where a video should live: rendezvous (highest-random-weight) hashing.

Every component computes the same answer from the same inputs, so the comment
service can redirect a viewer without asking anyone. Removing a node moves
only the videos that node held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(video_id: str, node_id: str) -> int:
    digest = hashlib.blake2b(f"{video_id}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(video_id: str, nodes: Iterable[str], count: int = 1) -> list[str]:
    """The ``count`` best nodes for ``video_id``, best first."""
    ranked = sorted(nodes, key=lambda node: _weight(video_id, node), reverse=True)
    return ranked[:count]
