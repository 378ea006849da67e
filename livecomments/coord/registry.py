"""The hosted-video registry an RTMS node keeps: ``/hosted/{video}/{node}``."""

from __future__ import annotations

import logging

from kazoo.exceptions import NoNodeError, NotEmptyError

from livecomments.coord.client import ZK
from livecomments.coord.ephemeral import EphemeralSet
from livecomments.kernel.errors import LiveCommentsError
from livecomments.kernel.logs import about

log = logging.getLogger(__name__)


class HostedRegistry:
    """Which videos this node serves viewers of; re-created after a session loss."""

    def __init__(self, zk: ZK, node_id: str) -> None:
        self._zk = zk
        self._node_id = node_id
        self._nodes = EphemeralSet(zk)
        self.videos: set[str] = set()

    async def host(self, video_id: str) -> None:
        self.videos.add(video_id)
        await self._nodes.add(self._zk.paths.hosted_by(video_id, self._node_id))

    async def unhost(self, video_id: str) -> None:
        self.videos.discard(video_id)
        await self._nodes.remove(self._zk.paths.hosted_by(video_id, self._node_id))
        # Tidy the per-video parent when we were the last host; someone else may
        # have just joined it, which is fine.
        try:
            await self._zk.call(
                "delete", self._zk.client.delete_async(self._zk.paths.hosted_video(video_id))
            )
        except (NotEmptyError, NoNodeError):
            pass
        except LiveCommentsError as exc:
            log.debug("could not tidy %s: %s", video_id, exc, extra=about(video_id))

    async def clear(self) -> None:
        self.videos.clear()
        await self._nodes.clear()
