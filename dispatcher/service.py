"""The Dispatcher gRPC service the comment service calls."""

from __future__ import annotations

from typing import Any

from dispatcher.router import Router
from livecomments.pb import livecomments_pb2 as pb
from livecomments.pb import livecomments_pb2_grpc as pb_grpc


class DispatcherService(pb_grpc.DispatcherServicer):  # type: ignore[misc]
    def __init__(self, router: Router) -> None:
        self._router = router

    async def Dispatch(self, request: pb.DispatchRequest, context: Any) -> pb.DispatchReply:
        return await self._router.dispatch(list(request.events))

    async def Routes(self, request: pb.RoutesRequest, context: Any) -> pb.RoutesReply:
        table = self._router.table.videos
        wanted = list(request.video_ids) or list(table)
        reply = pb.RoutesReply(live_nodes=sorted(self._router.directory.nodes))
        for video_id in wanted:
            nodes = table.get(video_id)
            if nodes:
                reply.videos[video_id].node_ids.extend(sorted(nodes))
        return reply
