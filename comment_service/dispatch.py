"""Finding a live dispatcher replica and failing over between them.

Replicas are read from ``/nodes/dispatcher`` (a watched mirror). Calls go
round-robin; a failed call is retried on the next replica with bounded,
jittered backoff under one deadline (tenacity).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from coord import NodeDirectory
from livecomments.errors import Unavailable
from livecomments.pb import livecomments_pb2 as pb
from livecomments.pb import livecomments_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class DispatchFailed(Unavailable):
    code = "dispatch_failed"


class DispatchClient:
    def __init__(self, directory: NodeDirectory, timeout: float) -> None:
        self._directory = directory
        self._timeout = timeout
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.DispatcherStub]] = {}
        self._turn = itertools.count()
        self._addresses: list[str] = []  # derived from the directory when it changes
        directory.add_listener(self._directory_changed)

    def _directory_changed(self) -> None:
        self._addresses = sorted(
            a for a in (i.get("grpc") for i in self._directory.nodes.values()) if isinstance(a, str)
        )
        for address in list(self._channels):
            if address not in self._addresses:
                channel, _ = self._channels.pop(address)
                asyncio.get_running_loop().create_task(channel.close())

    def _pick(self) -> tuple[str, pb_grpc.DispatcherStub]:
        addresses = self._addresses
        if not addresses:
            raise DispatchFailed("no dispatcher is registered")
        address = addresses[next(self._turn) % len(addresses)]
        entry = self._channels.get(address)
        if entry is None:
            channel = grpc.aio.insecure_channel(address)
            entry = self._channels[address] = (channel, pb_grpc.DispatcherStub(channel))
        return address, entry[1]

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
                address, stub = self._pick()
                try:
                    reply: pb.DispatchReply = await stub.Dispatch(request, timeout=self._timeout)
                    return reply
                except grpc.aio.AioRpcError as exc:
                    log.warning("dispatcher %s failed: %s", address, exc.code().name)
                    raise DispatchFailed(f"dispatcher {address}: {exc.code().name}") from exc
        raise DispatchFailed("unreachable")  # pragma: no cover - reraise=True

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        await asyncio.gather(*(c.close() for c, _ in channels.values()), return_exceptions=True)
