"""The gRPC side of an RTMS node: dispatchers send event batches with ``Deliver``
or, on the hot path, over one long-lived ``DeliverStream`` each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from livecomments.pb import livecomments_pb2 as pb
from livecomments.pb import livecomments_pb2_grpc as pb_grpc
from rtms.hub import Hub


class DeliveryService(pb_grpc.DeliveryServicer):  # type: ignore[misc]
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def Deliver(self, request: pb.DeliverRequest, context: Any) -> pb.DeliverReply:
        accepted, duplicates, unhosted = self._hub.deliver(request.events)
        return pb.DeliverReply(accepted=accepted, duplicates=duplicates, unhosted=unhosted)

    async def DeliverStream(
        self, requests: AsyncIterator[pb.DeliverRequest], context: Any
    ) -> AsyncIterator[pb.DeliverReply]:
        """One reply per request, in order (the hub takes a batch synchronously)."""
        deliver = self._hub.deliver
        async for request in requests:
            accepted, duplicates, unhosted = deliver(request.events)
            yield pb.DeliverReply(
                id=request.id, accepted=accepted, duplicates=duplicates, unhosted=unhosted
            )
