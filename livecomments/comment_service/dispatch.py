"""Finding a live dispatcher replica and failing over between them.

Replicas are read from ``/nodes/dispatcher`` (a watched mirror). Each replica
gets one channel and one long-lived ``DispatchStream`` on it, opened on first
use and again after it fails; requests carry an id and their replies come back
with it. Calls go round-robin; a failed call (the stream broke, or no reply
within the timeout) is retried on the next replica with bounded, jittered
backoff under one deadline (tenacity).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from livecomments.coord import NodeDirectory
from livecomments.coord.records import Dispatcher
from livecomments.kernel.errors import Unavailable
from livecomments.kernel.grpcauth import DISPATCHER, GrpcSecurity
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.rpcstream import RequestStream, StreamChannel, StreamCounts

log = logging.getLogger(__name__)

_Stream = RequestStream[pb.DispatchRequest, pb.DispatchReply]
_Replica = StreamChannel[pb.DispatchRequest, pb.DispatchReply]


class DispatchFailed(Unavailable):
    code = "dispatch_failed"


def _open_stream(channel: Any) -> Any:
    return pb_grpc.DispatcherStub(channel).DispatchStream(wait_for_ready=False)


class DispatchClient:
    def __init__(
        self, directory: NodeDirectory, timeout: float, security: GrpcSecurity | None = None
    ) -> None:
        self._directory = directory
        self._security = security
        self._timeout = timeout
        self._replicas: dict[str, _Replica] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._turn = itertools.count()
        self._addresses: list[str] = []  # derived from the directory when it changes
        self.streams = StreamCounts()  # for /metrics
        directory.add_listener(self._directory_changed)

    def _directory_changed(self) -> None:
        replicas = self._directory.view(Dispatcher.from_json).values()
        self._addresses = sorted(r.grpc for r in replicas if r.grpc)
        for address in list(self._replicas):
            if address not in self._addresses:
                task = asyncio.get_running_loop().create_task(
                    self._replicas.pop(address).close(graceful=True)
                )
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _pick(self) -> _Stream:
        addresses = self._addresses
        if not addresses:
            raise DispatchFailed("no dispatcher is registered")
        address = addresses[next(self._turn) % len(addresses)]
        replica = self._replicas.get(address)
        if replica is None:
            replica = self._replicas[address] = _Replica(
                address,
                _open_stream,
                name=f"dispatcher {address}",
                timeout=self._timeout,
                error=DispatchFailed,
                security=self._security,
                peer_role=DISPATCHER,
                counts=self.streams,
            )
        return replica.stream()

    async def dispatch(self, events: list[pb.Event]) -> pb.DispatchReply:
        request = pb.DispatchRequest(events=events)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(4) | stop_after_delay(self._timeout),
            wait=wait_random_exponential(multiplier=0.02, max=0.25),
            retry=retry_if_exception_type(DispatchFailed),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                stream = self._pick()
                try:
                    return await stream.request(request)
                except DispatchFailed as exc:
                    log.warning("%s", exc)
                    raise
        raise DispatchFailed("unreachable")  # pragma: no cover - reraise=True

    async def close(self) -> None:
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.close() for r in replicas), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
