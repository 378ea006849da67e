"""A dispatcher replica: gRPC server, ZooKeeper mirrors, membership, admin listener."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import grpc

from livecomments.coord import ZK, Membership, NodeDirectory, RoutingTable
from livecomments.coord.records import Dispatcher
from livecomments.dispatcher.router import Router
from livecomments.dispatcher.service import DispatcherService
from livecomments.kernel import metrics as m
from livecomments.kernel.admin import admin_listener, metrics_url
from livecomments.kernel.grpcauth import GrpcSecurity
from livecomments.kernel.grpchealth import GrpcHealth
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.readiness import ROUTING, Readiness
from livecomments.kernel.rpcstream import SERVER_OPTIONS
from livecomments.kernel.settings import DispatcherSettings, default_node_id

log = logging.getLogger(__name__)


class DispatcherServer:
    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self.node_id = settings.node_id or default_node_id("dispatcher", settings.port)
        self.address = f"{settings.host}:{settings.port}"
        self.zk = ZK(
            settings.zk_hosts,
            settings.zk_root,
            session_timeout=settings.zk_session_timeout,
            timeout=settings.zk_timeout,
            auth=settings.zk_auth,
        )
        self.table = RoutingTable(self.zk)
        self.directory = NodeDirectory(self.zk, self.zk.paths.rtms_nodes)
        # Refuses to start without credentials (or an explicit grpc_insecure).
        self.security = GrpcSecurity.from_settings(settings)
        self.router = Router(self.table, self.directory, settings.deliver_timeout, self.security)
        self.membership: Membership[Dispatcher] = Membership(
            self.zk, self.zk.paths.dispatcher(self.node_id)
        )
        # gRPC health (and the admin listener's /readyz): ZooKeeper connected, the
        # whole routing table read, not stopping.
        self.readiness = Readiness()
        self.zk.follow_in(self.readiness)
        self.readiness.flag(ROUTING, lambda: not self.table.loaded)
        self.health_service = GrpcHealth(
            self.readiness, [pb.DESCRIPTOR.services_by_name["Dispatcher"].full_name]
        )
        self.metrics = m.Metrics(m.DISPATCHER, self.node_id)
        self.metrics.add(self._collect)
        self.admin = admin_listener(
            settings.admin_host, settings.admin_port, self.metrics, self.health, self.readiness
        )
        self._grpc: grpc.aio.Server | None = None
        self._started = False

    def health(self) -> dict[str, Any]:
        """Alive (the admin listener answers 200); ``status`` says degraded without ZooKeeper."""
        return {
            "node_id": self.node_id,
            "status": "ok" if self.zk.state == "CONNECTED" else "degraded",
            "zookeeper": self.zk.state,
            "rtms_nodes": len(self.directory.nodes),
            "routed_videos": len(self.table.videos),
            "suspect_nodes": self.router.suspects(),
            "undelivered": self.router.undelivered,
        }

    def _collect(self) -> Iterator[m.Metric]:
        router = self.router
        yield from m.zookeeper(self.zk.state, self.zk.reconnects, self.zk.losses)
        yield m.counter(m.DISPATCHER_EVENTS, router.events)
        yield m.histogram(m.DISPATCHER_DURATION, router.latency)
        yield m.counter(m.DISPATCHER_DELIVERED, {(n,): v for n, v in router.delivered.items()})
        yield m.counter(m.DISPATCHER_DROPPED, router.dropped)
        yield m.counter(m.DISPATCHER_UNDELIVERED, router.undelivered)
        yield m.gauge(m.DISPATCHER_VIDEOS, len(self.table.videos))
        yield m.gauge(m.DISPATCHER_SUSPECTS, router.suspects())
        yield m.gauge(m.CLUSTER_NODES, {("rtms",): len(self.directory.nodes)})
        yield m.counter(m.STREAMS_OPENED, {("rtms",): router.streams.opened})
        yield m.counter(m.STREAMS_REOPENED, {("rtms",): router.streams.reopened})

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.admin is not None:  # first: a health check sees a starting replica
            await self.admin.start()
        await self.zk.start()
        # The table must be whole before any comment service can pick us.
        await self.directory.start()
        await self.table.start()
        self._grpc = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_DispatcherServicer_to_server(
            DispatcherService(self.router, self.security), self._grpc
        )
        await self.health_service.add_to(self._grpc)
        self.security.add_port(self._grpc, self.address)
        await self._grpc.start()
        metrics = metrics_url(self.settings.admin_host, self.settings.admin_port)
        await self.membership.join(Dispatcher(grpc=self.address, metrics=metrics or None))
        await self.readiness.start()
        log.info("dispatcher %s on %s", self.node_id, self.address)

    def begin_stop(self) -> None:
        """Not ready from now on (gRPC health NOT_SERVING); dispatches are still served."""
        self.readiness.begin_stop()

    async def stop(self, timeout: float = 5.0) -> None:
        if not self._started:
            return
        self._started = False
        await self.readiness.stop()
        try:
            await asyncio.wait_for(self.membership.leave(), timeout)
        except Exception as exc:
            log.warning("leaving failed: %s", exc)
        if self._grpc is not None:
            await self._grpc.stop(grace=min(2.0, timeout))
        await self.router.close()
        await self.zk.stop()
        if self.admin is not None:
            await self.admin.stop()
