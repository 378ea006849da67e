"""Every znode path, built in one place (layout: docs/architecture.md, "The ZooKeeper layout")."""

from __future__ import annotations

import re
import zlib

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_name(name: str) -> str:
    """Reject anything that could escape its parent znode."""
    if not _SAFE.match(name) or name in (".", ".."):
        raise ValueError(f"not a valid znode name: {name!r}")
    return name


# ``/hosted`` is split into this many buckets by a hash of the video id, so that a
# video starting or ending on a node changes one bucket's list of children (a few
# hundred names at 100,000 videos), not one list of every hosted video: a
# dispatcher re-reads the list that changed, and one list of 100,000 names cost it
# 44 ms of CPU per update (bench.zk_scale, docs/benchmarks.md, issue 15).
HOSTED_BUCKETS = 256


def hosted_bucket(video_id: str) -> str:
    """The bucket of ``/hosted`` that holds ``video_id`` (two hex digits)."""
    return f"{zlib.crc32(video_id.encode()) % HOSTED_BUCKETS:02x}"


class Paths:
    def __init__(self, root: str = "/livecomments") -> None:
        self.root = "/" + root.strip("/") if root.strip("/") else ""

    @property
    def rtms_nodes(self) -> str:
        return f"{self.root}/nodes/rtms"

    @property
    def dispatchers(self) -> str:
        return f"{self.root}/nodes/dispatcher"

    @property
    def comment_workers(self) -> str:
        return f"{self.root}/nodes/comment"

    @property
    def hosted(self) -> str:
        return f"{self.root}/hosted"

    @property
    def placement(self) -> str:
        return f"{self.root}/placement"

    @property
    def drain(self) -> str:
        return f"{self.root}/drain"

    @property
    def rebalance(self) -> str:
        """Persistent sequential children: each one asks every RTMS node to re-place."""
        return f"{self.root}/rebalance"

    def rtms_node(self, node_id: str) -> str:
        return f"{self.rtms_nodes}/{check_name(node_id)}"

    def dispatcher(self, node_id: str) -> str:
        return f"{self.dispatchers}/{check_name(node_id)}"

    def hosted_buckets(self) -> list[str]:
        return [f"{self.hosted}/{b:02x}" for b in range(HOSTED_BUCKETS)]

    def hosted_video(self, video_id: str) -> str:
        return f"{self.hosted}/{hosted_bucket(check_name(video_id))}/{video_id}"

    def hosted_by(self, video_id: str, node_id: str) -> str:
        return f"{self.hosted_video(video_id)}/{check_name(node_id)}"

    def placement_of(self, video_id: str) -> str:
        return f"{self.placement}/{check_name(video_id)}"

    def drain_of(self, node_id: str) -> str:
        return f"{self.drain}/{check_name(node_id)}"

    def parents(self) -> list[str]:
        """Persistent parents every component may rely on."""
        return [
            self.rtms_nodes,
            self.dispatchers,
            self.comment_workers,
            self.hosted,
            self.placement,
            self.drain,
            self.rebalance,
        ]
