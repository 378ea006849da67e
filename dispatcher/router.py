"""Routing events to the RTMS nodes that host their videos.

The table (video -> nodes) and the directory (node -> gRPC address) are
in-memory mirrors of ZooKeeper; nothing here reads ZooKeeper on the hot path.
Each destination has one long-lived channel and one sender that batches: while
a Deliver is in flight, events for that node queue up and leave together in
the next one, so a burst costs one message per hosting node, not one per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from coord import NodeDirectory, RoutingTable
from livecomments.pb import livecomments_pb2 as pb
from livecomments.pb import livecomments_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SUSPECT_FOR = 3.0  # seconds a node that refused a delivery is skipped (ZooKeeper catches up)
MAX_BATCH = 2000


class NodeGone(Exception):
    """The node could not be reached; it is treated as dead."""


@dataclass
class _Pending:
    events: list[pb.Event]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Sender:
    """One destination: a channel, a queue, one Deliver in flight at a time."""

    def __init__(self, node_id: str, address: str, timeout: float) -> None:
        self.node_id = node_id
        self.address = address
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 3_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )
        self._stub = pb_grpc.DeliveryStub(self._channel)
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"sender-{node_id}")

    def send(self, events: list[pb.Event]) -> asyncio.Future[None]:
        pending = _Pending(events)
        self._queue.append(pending)
        self._wakeup.set()
        return pending.done

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch: list[_Pending] = []
                size = 0
                while self._queue and size < MAX_BATCH:
                    item = self._queue.pop(0)
                    batch.append(item)
                    size += len(item.events)
                await self._deliver(batch)

    async def _deliver(self, batch: list[_Pending]) -> None:
        request = pb.DeliverRequest(events=[e for item in batch for e in item.events])
        error: Exception | None = None
        try:
            await self._stub.Deliver(request, timeout=self._timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            error = NodeGone(f"{self.node_id} at {self.address}: {exc.code().name} {exc.details()}")
        for item in batch:
            if item.done.done():
                continue
            if error is None:
                item.done.set_result(None)
            else:
                item.done.set_exception(error)

    async def close(self) -> None:
        self._task.cancel()
        for item in self._queue:
            if not item.done.done():
                item.done.set_exception(NodeGone(f"{self.node_id} closed"))
        self._queue.clear()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


class Router:
    def __init__(
        self, table: RoutingTable, directory: NodeDirectory, deliver_timeout: float
    ) -> None:
        self.table = table
        self.directory = directory
        self._timeout = deliver_timeout
        self._senders: dict[str, _Sender] = {}
        self._suspects: dict[str, float] = {}
        directory.add_listener(self._directory_changed)

    def _directory_changed(self) -> None:
        for node_id, sender in list(self._senders.items()):
            info = self.directory.nodes.get(node_id)
            if info is None or info.get("grpc") != sender.address:
                del self._senders[node_id]
                asyncio.get_running_loop().create_task(sender.close())

    def _sender(self, node_id: str) -> _Sender | None:
        sender = self._senders.get(node_id)
        if sender is not None:
            return sender
        address = self.directory.nodes.get(node_id, {}).get("grpc")
        if not isinstance(address, str):
            return None  # hosted but not a live member: its session is gone
        sender = self._senders[node_id] = _Sender(node_id, address, self._timeout)
        return sender

    async def dispatch(self, events: list[pb.Event]) -> pb.DispatchReply:
        """Send each event once to each node hosting its video; wait for their answers."""
        now = time.monotonic()
        per_node: dict[str, list[pb.Event]] = {}
        for event in events:
            for node_id in self.table.nodes_for(event.video_id):
                per_node.setdefault(node_id, []).append(event)
        waits: list[tuple[str, asyncio.Future[None]]] = []
        dropped = 0
        for node_id, batch in per_node.items():
            if self._suspects.get(node_id, 0.0) > now:
                dropped += 1
                continue
            sender = self._sender(node_id)
            if sender is None:
                dropped += 1
                continue
            waits.append((node_id, sender.send(batch)))
        delivered = 0
        if waits:
            results = await asyncio.gather(*(w for _, w in waits), return_exceptions=True)
            for (node_id, _), result in zip(waits, results, strict=True):
                if result is None:
                    delivered += 1
                    self._suspects.pop(node_id, None)
                else:
                    dropped += 1
                    log.warning("delivery failed, suspecting node: %s", result)
                    self._suspects[node_id] = time.monotonic() + SUSPECT_FOR
        return pb.DispatchReply(nodes=len(per_node), delivered=delivered, dropped=dropped)

    async def close(self) -> None:
        senders, self._senders = list(self._senders.values()), {}
        await asyncio.gather(*(s.close() for s in senders), return_exceptions=True)
