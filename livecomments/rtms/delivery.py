"""The gRPC side of an RTMS node: dispatchers send event batches with ``Deliver``
or, on the hot path, over one long-lived ``DeliverStream`` each.

Only a peer holding a dispatcher's certificate may deliver, and every event is
checked (:func:`rtms.wire.refusal`) before the hub sees it: a refused one is
counted and logged, never delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from livecomments.kernel.grpcauth import DISPATCHER, GrpcSecurity, refuse
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.rtms.hub import Hub
from livecomments.rtms.wire import refusal

DELIVER_ROLES = (DISPATCHER,)


class DeliveryService(pb_grpc.DeliveryServicer):  # type: ignore[misc]
    def __init__(
        self,
        hub: Hub,
        security: GrpcSecurity | None = None,
        max_frame_bytes: int = 64 * 1024,
    ) -> None:
        self._hub = hub
        self._security = security or GrpcSecurity.insecure()
        self._max_frame = max_frame_bytes

    def _deliver(self, events: Sequence[pb.Event], peer: str) -> tuple[int, int, int]:
        max_frame = self._max_frame
        valid: list[pb.Event] = []
        for event in events:
            why = refusal(event, max_frame)
            if why is None:
                valid.append(event)
            else:
                self._hub.refusals.add(why, event, peer)
        return self._hub.deliver(valid)

    async def Deliver(self, request: pb.DeliverRequest, context: Any) -> pb.DeliverReply:
        if not self._security.allows(context, DELIVER_ROLES):
            await refuse(context, DELIVER_ROLES)
        accepted, duplicates, unhosted = self._deliver(request.events, context.peer())
        return pb.DeliverReply(accepted=accepted, duplicates=duplicates, unhosted=unhosted)

    async def DeliverStream(
        self, requests: AsyncIterator[pb.DeliverRequest], context: Any
    ) -> AsyncIterator[pb.DeliverReply]:
        """One reply per request, in order (the hub takes a batch synchronously)."""
        if not self._security.allows(context, DELIVER_ROLES):
            await refuse(context, DELIVER_ROLES)
        deliver, peer = self._deliver, context.peer()
        async for request in requests:
            accepted, duplicates, unhosted = deliver(request.events, peer)
            yield pb.DeliverReply(
                id=request.id, accepted=accepted, duplicates=duplicates, unhosted=unhosted
            )
