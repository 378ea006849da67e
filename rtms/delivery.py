"""The gRPC side of an RTMS node: dispatchers call ``Deliver`` with event batches."""

from __future__ import annotations

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
