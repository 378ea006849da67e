"""Routing events to the RTMS nodes that host their videos.

The table (video -> nodes) and the directory (node -> gRPC address) are
in-memory mirrors of ZooKeeper; nothing here reads ZooKeeper on the hot path.
Each destination has one long-lived channel, one long-lived ``DeliverStream``
on it and one sender that batches: while batches are in flight, events for that
node queue up and leave together in the next message, so a burst costs one
message per hosting node, not one per event.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from livecomments.coord import NodeDirectory, RoutingTable
from livecomments.coord.records import RtmsNode
from livecomments.kernel.grpcauth import RTMS, GrpcSecurity
from livecomments.kernel.logs import sane_request_id
from livecomments.kernel.metrics import Histogram
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.rpcstream import StreamChannel, StreamCounts

log = logging.getLogger(__name__)

SUSPECT_FOR = 3.0  # seconds a node that refused a delivery is skipped (ZooKeeper catches up)
MAX_BATCH = 2000
# Batches on one stream awaiting their reply. One would leave the stream idle
# for a round trip after each batch; a few keep it busy under load while the
# queue still fills into large batches. Four keep comments to a node in another
# region (a 150 ms round trip) from queueing at a few a second (bench.regions).
MAX_IN_FLIGHT = 4


class NodeGone(Exception):
    """The node could not be reached; it is treated as dead."""


@dataclass(slots=True)
class _Pending:
    events: list[pb.Event]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _open_stream(channel: Any) -> Any:
    return pb_grpc.DeliveryStub(channel).DeliverStream(wait_for_ready=False)


class _Sender:
    """One destination: a channel, one ``DeliverStream``, a queue, a few batches in flight.

    Each batch has the deliver timeout as its deadline. When the stream fails
    (or a batch outlives its deadline) every batch in flight fails with
    :class:`NodeGone`, and the next batch opens a new stream.
    """

    def __init__(
        self,
        node_id: str,
        address: str,
        timeout: float,
        security: GrpcSecurity | None = None,
        counts: StreamCounts | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._channel: StreamChannel[pb.DeliverRequest, pb.DeliverReply] = StreamChannel(
            address,
            _open_stream,
            name=f"{node_id} at {address}",
            timeout=timeout,
            error=NodeGone,
            security=security,
            peer_role=RTMS,
            counts=counts,
        )
        self._queue: collections.deque[_Pending] = collections.deque()
        self._flush_soon: asyncio.Handle | None = None
        self._closed = False

    def send(self, events: list[pb.Event]) -> asyncio.Future[None]:
        pending = _Pending(events)
        if self._closed:
            pending.done.set_exception(NodeGone(f"{self.node_id} closed"))
            return pending.done
        self._queue.append(pending)
        if self._flush_soon is None:
            # Everything sent during this turn of the loop goes in one batch.
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)
        return pending.done

    def _flush(self) -> None:
        self._flush_soon = None
        queue = self._queue
        while queue and not self._closed:
            stream = self._channel.stream()
            if stream.in_flight >= MAX_IN_FLIGHT:
                return  # a reply calls us again
            batch: list[_Pending] = []
            events: list[pb.Event] = []
            while queue and len(events) < MAX_BATCH:
                item = queue.popleft()
                batch.append(item)
                events.extend(item.events)
            reply = stream.request(pb.DeliverRequest(events=events))
            reply.add_done_callback(functools.partial(self._settle, batch))

    def _settle(self, batch: list[_Pending], reply: asyncio.Future[pb.DeliverReply]) -> None:
        error = NodeGone(f"{self.node_id} closed") if reply.cancelled() else reply.exception()
        for item in batch:
            if item.done.done():
                continue
            if error is None:
                item.done.set_result(None)
            else:
                item.done.set_exception(error)
        if self._queue and self._flush_soon is None:
            self._flush()

    async def close(self) -> None:
        self._closed = True
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        for item in self._queue:
            if not item.done.done():
                item.done.set_exception(NodeGone(f"{self.node_id} closed"))
        self._queue.clear()
        await self._channel.close()


def _log_dispatched(
    events: list[pb.Event],
    per_node: dict[str, tuple[list[pb.Event], list[int]]],
    sent: set[str],
) -> None:
    """The dispatcher's line of a comment's trip: once per event, with the nodes it went to
    (and those hosting its video that were skipped). Aggregates (seq 0) are left out."""
    to: dict[int, list[str]] = {}
    skipped: dict[int, list[str]] = {}
    for node_id, (_, indexes) in per_node.items():
        into = to if node_id in sent else skipped
        for index in indexes:
            into.setdefault(index, []).append(node_id)
    for index, event in enumerate(events):
        if not event.seq:
            continue
        nodes, missed = sorted(to.get(index, ())), sorted(skipped.get(index, ()))
        request_id = sane_request_id(event.request_id) or ""
        log.info(
            "dispatched: video %s comment %s seq %d to %s%s request %s",
            event.video_id, event.comment_id, event.seq, ",".join(nodes) or "no node",
            f" (skipped {','.join(missed)})" if missed else "", request_id,
            extra={
                "video_id": event.video_id,
                "comment_id": str(event.comment_id),
                "request_id": request_id,
                "seq": event.seq,
                "nodes": nodes,
                "skipped": missed,
            },
        )  # fmt: skip


class Router:
    def __init__(
        self,
        table: RoutingTable,
        directory: NodeDirectory,
        deliver_timeout: float,
        security: GrpcSecurity | None = None,
    ) -> None:
        self.table = table
        self._security = security
        self.directory = directory
        self._reports = directory.view(RtmsNode.from_json)
        self._timeout = deliver_timeout
        self._senders: dict[str, _Sender] = {}
        self._suspects: dict[str, float] = {}
        self.undelivered = 0  # events some hosting node did not take (left to the outbox)
        # For /metrics: events routed, per node the events it took and those it did
        # not get (by reason), the time each request took, the streams opened.
        self.events = 0
        self.delivered: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[tuple[str, str]] = collections.Counter()
        self.latency = Histogram()
        self.streams = StreamCounts()
        directory.add_listener(self._directory_changed)

    def _directory_changed(self) -> None:
        for node_id, sender in list(self._senders.items()):
            report = self._reports.get(node_id)
            if report is None or report.grpc != sender.address:
                del self._senders[node_id]
                asyncio.get_running_loop().create_task(sender.close())

    def _sender(self, node_id: str) -> _Sender | None:
        sender = self._senders.get(node_id)
        if sender is not None:
            return sender
        report = self._reports.get(node_id)
        address = report.grpc if report is not None else None
        if address is None:
            return None  # hosted but not a live member: its session is gone
        sender = self._senders[node_id] = _Sender(
            node_id, address, self._timeout, self._security, self.streams
        )
        return sender

    def submit(self, events: list[pb.Event]) -> asyncio.Future[pb.DispatchReply]:
        """Queue each event once for each node hosting its video; await the answers.

        The queueing happens here, before the first await, so calls submitted in
        order reach every node in that order. The reply lists the events some
        hosting node did not take (skipped as suspect or unknown, or failed): the
        caller keeps those in its outbox instead of counting them delivered.

        The answers are collected by callbacks (``_Collect``), not by a task and
        a gather per request: at 200 spaced comments/s those were ~10 % of the
        dispatcher's CPU.
        """
        started = time.perf_counter()
        now = time.monotonic()
        self.events += len(events)
        per_node: dict[str, tuple[list[pb.Event], list[int]]] = {}
        for index, event in enumerate(events):
            for node_id in self.table.nodes_for(event.video_id):
                entry = per_node.get(node_id)
                if entry is None:
                    entry = per_node[node_id] = ([], [])
                entry[0].append(event)
                entry[1].append(index)
        waits: list[tuple[str, list[int], asyncio.Future[None]]] = []
        undelivered: set[int] = set()
        dropped = 0
        for node_id, (batch, indexes) in per_node.items():
            suspect = self._suspects.get(node_id, 0.0) > now
            sender = None if suspect else self._sender(node_id)
            if sender is None:  # suspect, or hosted but not a live member
                dropped += 1
                undelivered.update(indexes)
                self.dropped[node_id, "suspect" if suspect else "not_member"] += len(indexes)
                continue
            waits.append((node_id, indexes, sender.send(batch)))
        if log.isEnabledFor(logging.INFO):
            _log_dispatched(events, per_node, {node_id for node_id, _, _ in waits})
        reply: asyncio.Future[pb.DispatchReply] = asyncio.get_running_loop().create_future()
        _Collect(self, reply, len(per_node), waits, dropped, undelivered, started)
        return reply

    async def dispatch(self, events: list[pb.Event]) -> pb.DispatchReply:
        """Send each event once to each node hosting its video; wait for their answers."""
        return await self.submit(events)

    def _answered(self, node_id: str, indexes: list[int], error: BaseException | None) -> None:
        """One node's answer to its part of a request (None: it took them all)."""
        if error is None:
            self._suspects.pop(node_id, None)
            self.delivered[node_id] += len(indexes)
        else:
            self.dropped[node_id, "failed"] += len(indexes)
            log.warning("delivery failed, suspecting node: %s", error)
            self._suspects[node_id] = time.monotonic() + SUSPECT_FOR

    def suspects(self) -> int:
        """Nodes skipped now after a failed delivery."""
        now = time.monotonic()
        return sum(1 for until in self._suspects.values() if until > now)

    async def close(self) -> None:
        senders, self._senders = list(self._senders.values()), {}
        await asyncio.gather(*(s.close() for s in senders), return_exceptions=True)


class _Collect:
    """Builds a request's reply as its nodes answer, then resolves ``reply``."""

    __slots__ = ("_delivered", "_dropped", "_left", "_nodes", "_reply", "_router", "_started",
                 "_undelivered")  # fmt: skip

    def __init__(
        self,
        router: Router,
        reply: asyncio.Future[pb.DispatchReply],
        nodes: int,
        waits: list[tuple[str, list[int], asyncio.Future[None]]],
        dropped: int,
        undelivered: set[int],
        started: float,
    ) -> None:
        self._router, self._reply, self._nodes = router, reply, nodes
        self._delivered, self._dropped, self._undelivered = 0, dropped, undelivered
        self._started = started
        self._left = len(waits)
        if not waits:
            self._finish()
        for node_id, indexes, done in waits:
            done.add_done_callback(functools.partial(self._answer, node_id, indexes))

    def _answer(self, node_id: str, indexes: list[int], done: asyncio.Future[None]) -> None:
        try:
            error = NodeGone(f"{node_id}: cancelled") if done.cancelled() else done.exception()
            self._router._answered(node_id, indexes, error)
            if error is None:
                self._delivered += 1
            else:
                self._dropped += 1
                self._undelivered.update(indexes)
            self._left -= 1
            if self._left == 0:
                self._finish()
        except Exception as exc:  # a bug here fails this request, as a raising task would
            if not self._reply.done():
                self._reply.set_exception(exc)

    def _finish(self) -> None:
        router = self._router
        router.undelivered += len(self._undelivered)
        router.latency.observe(time.perf_counter() - self._started)
        if not self._reply.done():  # the caller may have given up (cancelled)
            self._reply.set_result(
                pb.DispatchReply(
                    nodes=self._nodes,
                    delivered=self._delivered,
                    dropped=self._dropped,
                    undelivered=sorted(self._undelivered),
                )
            )
