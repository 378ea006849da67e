"""The Dispatcher gRPC service the comment service calls."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from livecomments.dispatcher.router import Router
from livecomments.kernel.grpcauth import COMMENT_SERVICE, GrpcSecurity, refuse
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Only comment services send events for delivery (the outbox sweep included).
DISPATCH_ROLES = (COMMENT_SERVICE,)


class DispatcherService(pb_grpc.DispatcherServicer):  # type: ignore[misc]
    def __init__(self, router: Router, security: GrpcSecurity | None = None) -> None:
        self._router = router
        self._security = security or GrpcSecurity.insecure()

    async def Dispatch(self, request: pb.DispatchRequest, context: Any) -> pb.DispatchReply:
        if not self._security.allows(context, DISPATCH_ROLES):
            await refuse(context, DISPATCH_ROLES)
        return await self._router.dispatch(list(request.events))

    async def DispatchStream(
        self, requests: AsyncIterator[pb.DispatchRequest], context: Any
    ) -> AsyncIterator[pb.DispatchReply]:
        """Each request is routed as it arrives (so in order) and answered when its
        nodes have answered: replies carry the request's id and may overtake each other."""
        if not self._security.allows(context, DISPATCH_ROLES):
            await refuse(context, DISPATCH_ROLES)
        replies: asyncio.Queue[pb.DispatchReply | BaseException | None] = asyncio.Queue()
        reader = asyncio.create_task(self._route_all(requests, replies))
        try:
            while (reply := await replies.get()) is not None:
                if isinstance(reply, BaseException):
                    await context.abort(grpc.StatusCode.INTERNAL, f"dispatch failed: {reply}")
                else:
                    yield reply
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _route_all(
        self,
        requests: AsyncIterator[pb.DispatchRequest],
        replies: asyncio.Queue[pb.DispatchReply | BaseException | None],
    ) -> None:
        # Each request's reply future puts its answer in the queue when it resolves
        # (a callback: no task per request).
        answering: set[asyncio.Future[pb.DispatchReply]] = set()

        def answer(request_id: int, routed: asyncio.Future[pb.DispatchReply]) -> None:
            answering.discard(routed)
            if routed.cancelled():
                return
            error = routed.exception()
            if error is not None:  # the stream fails; the caller retries elsewhere
                log.error("dispatch failed", exc_info=error)
                replies.put_nowait(error)
                return
            reply = routed.result()
            reply.id = request_id
            replies.put_nowait(reply)

        try:
            async for request in requests:
                routed = self._router.submit(list(request.events))
                answering.add(routed)
                routed.add_done_callback(functools.partial(answer, request.id))
            if answering:  # the caller is done sending: answer what is in flight
                await asyncio.wait(set(answering))
        finally:
            for routed in list(answering):
                routed.cancel()
            replies.put_nowait(None)

    async def Routes(self, request: pb.RoutesRequest, context: Any) -> pb.RoutesReply:
        """Read-only: any authenticated component or an operator's tool may ask."""
        table = self._router.table.videos
        wanted = list(request.video_ids) or list(table)
        reply = pb.RoutesReply(live_nodes=sorted(self._router.directory.nodes))
        for video_id in wanted:
            nodes = table.get(video_id)
            if nodes:
                reply.videos[video_id].node_ids.extend(sorted(nodes))
        return reply
