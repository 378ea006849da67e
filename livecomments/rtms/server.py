"""An RTMS node: wires the SSE listener, the hub, the Delivery service and ZooKeeper."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from livecomments.coord import ZK, HostedRegistry, Membership, Placement, Policy
from livecomments.coord.records import RtmsNode, busy_floor, busy_videos, worth_publishing
from livecomments.kernel import metrics as m
from livecomments.kernel.admin import admin_listener, metrics_url
from livecomments.kernel.grpcauth import GrpcSecurity
from livecomments.kernel.grpchealth import GrpcHealth
from livecomments.kernel.logs import about
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from livecomments.kernel.readiness import DRAINING, REDIS, STORE, Readiness
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.redis.timed import connect as connect_redis
from livecomments.kernel.rpcstream import SERVER_OPTIONS
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.settings import RTMSSettings, default_node_id
from livecomments.kernel.store import Store
from livecomments.kernel.stream import Position
from livecomments.kernel.tls import server_context
from livecomments.kernel.viewers import ViewerCounts
from livecomments.rtms.delivery import DeliveryService
from livecomments.rtms.hub import Hub
from livecomments.rtms.metrics import collector
from livecomments.rtms.sse import SSEListener

log = logging.getLogger(__name__)

BUSY_VIDEOS = 100  # at most this many busy videos in the node's record (the busiest)
RECONCILE_BATCH = 1000  # videos whose heads one Redis call reads


class _Backend:
    """The hub's view of the outside: head seq from Redis, history from the store, ZooKeeper."""

    def __init__(self, sequencer: Sequencer, store: Store, registry: HostedRegistry) -> None:
        self._sequencer = sequencer
        self._store = store
        self._registry = registry

    async def head(self, video_id: str) -> Position | None:
        # Below what is still in flight: a channel that starts here gets those
        # seqs by dispatch or by filling the gap, instead of counting them seen.
        return await self._sequencer.settled_head(video_id)

    async def stored_head(self, video_id: str) -> int:
        return await self._store.max_seq(video_id)

    async def fetch(self, video_id: str, lo: int, hi: int) -> list[dict[str, Any]]:
        return await self._store.comments_by_seq(video_id, lo, hi)

    async def host(self, video_id: str) -> None:
        await self._registry.host(video_id)

    async def unhost(self, video_id: str) -> None:
        await self._registry.unhost(video_id)

    async def fence(self, video_id: str, seqs: list[int]) -> None:
        await self._store.fence(video_id, seqs)

    async def heads(self, video_ids: list[str]) -> dict[str, Position | None]:
        return await self._sequencer.heads(video_ids)


class RTMSServer:
    def __init__(self, settings: RTMSSettings) -> None:
        self.settings = settings
        self.node_id = settings.node_id or default_node_id("rtms", settings.port)
        scheme = "https" if settings.tls_cert else "http"
        self.public_url = (
            settings.public_url or f"{scheme}://{settings.host}:{settings.port}"
        ).rstrip("/")
        self.zk = ZK(
            settings.zk_hosts,
            settings.zk_root,
            session_timeout=settings.zk_session_timeout,
            timeout=settings.zk_timeout,
            auth=settings.zk_auth,
        )
        self.metrics = m.Metrics(m.RTMS, self.node_id)
        self.store_latency = m.Histograms()
        self.store = Store(
            settings.mongo_uri, settings.mongo_db, settings.mongo_timeout, self.store_latency
        )
        self.redis_latency = m.Histograms()
        self.redis: Redis = connect_redis(
            settings, self.redis_latency, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        # Refuses to start without credentials (or an explicit grpc_insecure).
        self.security = GrpcSecurity.from_settings(settings)
        self.registry = HostedRegistry(self.zk, self.node_id)
        self.membership: Membership[RtmsNode] = Membership(
            self.zk, self.zk.paths.rtms_node(self.node_id)
        )
        self.backend = _Backend(
            Sequencer(self.redis, settings.redis_prefix), self.store, self.registry
        )
        self.hub = Hub(
            self.backend,
            ring_size=settings.ring_size,
            host_grace=settings.host_grace,
            max_viewer_buffer=settings.max_viewer_buffer,
            reorder_window=settings.reorder_window,
            gap_deadline=settings.gap_deadline,
            replay_limit=settings.replay_limit,
            coalesce_window=settings.coalesce_window,
            viral_deliveries=settings.viral_deliveries,
            viral_window=settings.viral_window,
            replay_page=settings.replay_page,
            write_timeout=settings.write_timeout,
            max_channels=settings.max_channels,
            channel_limit=settings.channel_limit_node,
        )
        self.placement = Placement(self.zk, Policy.from_settings(settings))
        self.boot = secrets.token_hex(6)  # this life of the node (its Redis counts say it)
        self.viewer_counts = ViewerCounts(
            self.redis, Keys(settings.redis_prefix), self.placement.boot
        )
        # /readyz and gRPC health: ZooKeeper connected, Redis and the store
        # answering, not drained by an operator, not stopping.
        self.readiness = Readiness()
        self.zk.follow_in(self.readiness)
        self.readiness.probe(REDIS, self.redis.ping)
        self.readiness.probe(STORE, self.store.ping)
        self.readiness.flag(DRAINING, lambda: self.draining)
        self.health_service = GrpcHealth(
            self.readiness, [pb.DESCRIPTOR.services_by_name["Delivery"].full_name]
        )
        self.listener = SSEListener(
            self.hub,
            retry_ms=settings.retry_ms,
            cors_origins=settings.cors_origins,
            max_viewers=settings.max_viewers,
            health=self.health,
            readiness=self.readiness.answer,
            elsewhere=self._elsewhere,
            head_timeout=settings.head_timeout,
            max_unattached=settings.max_unattached,
            max_unattached_per_peer=settings.max_unattached_per_peer,
            max_streams_per_address=settings.max_streams_per_address,
            join_limit_address=settings.join_limit_address,
            trusted_proxies=settings.trusted_proxies,
            # /metrics on the viewers' listener, unless an admin listener serves it.
            metrics=None if settings.admin_port else self.metrics.exposition,
        )
        self.metrics.add(collector(self.hub, self.listener, lambda: self.draining))
        self.metrics.add(self._collect)
        self.admin = admin_listener(
            settings.admin_host, settings.admin_port, self.metrics, self.health, self.readiness
        )
        self._rebalances_seen: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._enforcing: asyncio.Handle | None = None
        self._sse: asyncio.Server | None = None
        self._grpc: grpc.aio.Server | None = None
        self._timers: list[asyncio.Task[None]] = []
        self._started = False
        self._started_at = time.monotonic()

    def health(self) -> dict[str, Any]:
        stats, pages, listener = self.hub.stats, self.hub.pages, self.listener
        return {
            "node_id": self.node_id,
            "status": "ok" if self.zk.state == "CONNECTED" else "degraded",
            "zookeeper": self.zk.state,
            "viewers": self.hub.viewer_count,
            "videos": len(self.hub.channels),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "accepted": self.hub.stats.accepted,
            "duplicates": self.hub.stats.duplicates,
            "gap_filled": self.hub.stats.gap_filled,
            "gap_skipped": self.hub.stats.gap_skipped,
            "gap_fenced": self.hub.stats.gap_fenced,
            "reconciled": self.hub.stats.reconciled,
            "slow_dropped": self.hub.stats.slow_dropped,
            "moved": self.hub.stats.moved,
            "viral": self.hub.viral_videos(),
            "viral_entered": self.hub.stats.viral_entered,
            "viral_left": self.hub.stats.viral_left,
            # Events from the wire refused (never delivered), by reason: kind, id,
            # size, shape (livecomments/rtms/wire.py), epoch (not the video's current one).
            "events_refused": dict(self.hub.refusals.counts),
            "draining": self.draining,
            # Connection limits: connections not streaming yet, and what was refused.
            "connections": len(listener.connections),
            "unattached": listener.unattached,
            "requests_refused": dict(listener.refused),  # by error code (429/503 answers)
            "head_timeouts": listener.head_timeouts,
            "channels_created": stats.channels_created,
            "channels_failed": stats.channels_failed,
            "channels_refused": stats.channels_refused,
            # Resume: store pages read, page requests that shared a read, documents
            # read, and resumes told to reload history (too_far_behind).
            "replay_reads": pages.reads,
            "replay_shared": pages.shared,
            "replay_docs": pages.docs,
            "replay_resets": stats.replay_resets,
        }

    def _collect(self) -> Iterator[m.Metric]:
        yield from m.zookeeper(self.zk.state, self.zk.reconnects, self.zk.losses)
        yield m.histogram(m.STORE_CALLS, self.store_latency)
        yield m.histogram(m.REDIS_CALLS, self.redis_latency)

    @property
    def grpc_address(self) -> str:
        """Where dispatchers reach the Delivery service (published in ZooKeeper)."""
        s = self.settings
        return s.grpc_advertise or f"{s.grpc_host}:{s.grpc_port}"

    @property
    def draining(self) -> bool:
        return self.node_id in self.placement.drains.nodes

    def _info(self) -> RtmsNode:
        published = self.membership.record
        busy = busy_videos(
            {v: len(c.viewers) for v, c in self.hub.channels.items() if c.viewers},
            published.viewers_by_video if published is not None else {},
            busy_floor(self.settings.spread_viewers),
            BUSY_VIDEOS,
        )
        return RtmsNode(
            sse_url=self.public_url,
            grpc=self.grpc_address,
            metrics=metrics_url(
                self.settings.admin_host, self.settings.admin_port, self.public_url
            ),
            boot=self.boot,
            connections=self.hub.viewer_count,
            videos=len(self.hub.channels),
            draining=self.draining,
            viewers_by_video=busy,
            # Videos this node batches every viral_window (/healthz adds their demand).
            viral_videos=tuple(sorted(self.hub.viral_videos())[:BUSY_VIDEOS]),
        )

    # -- placement ----------------------------------------------------------------

    def _elsewhere(self, video_id: str) -> str | None:
        """The base URL of a node placed for ``video_id`` if this one is not, else None."""
        placed = self.placement.placed(video_id)
        if not placed or self.node_id in placed:
            return None
        return self.placement.url(random.choice(placed))

    def _placement_changed(self) -> None:
        """Pins, drains or rebalance requests changed: act once the burst settles."""
        if self._enforcing is None and self._started:
            self._enforcing = asyncio.get_running_loop().call_later(0.05, self._enforce)

    def _enforce(self) -> None:
        """Move viewers of videos this node should no longer serve.

        Only operator intent moves viewers: a pin elsewhere, draining this node,
        or a rebalance request. A node joining or a video shrinking back changes
        where *new* viewers go, not where existing ones are.
        """
        self._enforcing = None
        requests = set(self.placement.rebalances.nodes)
        rebalance = bool(requests - self._rebalances_seen)
        self._rebalances_seen = requests
        draining = self.draining
        published = self.membership.record
        if published is None or draining != published.draining:
            task = asyncio.ensure_future(self._report_load_safely())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for video_id in list(self.hub.channels):
            pinned = video_id in self.placement.pins.nodes
            if not (draining or pinned or rebalance):
                continue
            placed = self.placement.placed(video_id)
            if self.node_id in placed:
                continue
            target = self.placement.url(random.choice(placed)) if placed else None
            reason = "drain" if draining else "rebalance" if rebalance and not pinned else "moved"
            moved = self.hub.move(video_id, target, reason)
            if moved:
                log.info(
                    "moved %d viewers of %s to %s (%s)", moved, video_id, target, reason,
                    extra=about(video_id),
                )  # fmt: skip

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        s = self.settings
        if self.admin is not None:
            await self.admin.start()
        await self.store.start(create_indexes=False)
        await self.zk.start()
        self._grpc = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_DeliveryServicer_to_server(
            DeliveryService(self.hub, self.security, s.max_frame_bytes), self._grpc
        )
        await self.health_service.add_to(self._grpc)
        # Its own (private) address, apart from the viewers' listener.
        self.security.add_port(self._grpc, f"{s.grpc_host}:{s.grpc_port}")
        await self._grpc.start()
        ssl_ctx = server_context(s.tls_cert, s.tls_key) if s.tls_cert else None
        loop = asyncio.get_running_loop()
        self._sse = await loop.create_server(
            self.listener.protocol,
            s.host,
            s.port,
            ssl=ssl_ctx,
            backlog=4096,
            reuse_address=True,
            # The TLS handshake is held to the request head's deadline too.
            ssl_handshake_timeout=s.head_timeout if ssl_ctx else None,
        )
        await self.placement.start()
        self._rebalances_seen = set(self.placement.rebalances.nodes)  # only new ones count
        for mirror in (self.placement.pins, self.placement.drains, self.placement.rebalances):
            mirror.add_listener(self._placement_changed)
        self.placement.drains.add_listener(self.readiness.changed)
        await self.membership.join(self._info())
        self._timers = [
            asyncio.create_task(self._every(s.heartbeat_interval, self._heartbeat)),
            asyncio.create_task(self._every(s.load_report_interval, self._report_load)),
            asyncio.create_task(
                self._every(s.viewer_count_interval or s.load_report_interval, self._count_viewers)
            ),
            asyncio.create_task(self._every(s.reconcile_interval, self._reconcile)),
        ]
        self._placement_changed()  # a node that restarts while drained stays drained
        await self.readiness.start()
        log.info(
            "rtms %s: SSE %s, gRPC %s:%d (published as %s)",
            self.node_id, self.public_url, s.grpc_host, s.grpc_port, self.grpc_address,
        )  # fmt: skip

    async def _every(self, interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:
                log.exception("periodic job failed")

    async def _heartbeat(self) -> None:
        self.hub.heartbeat()

    async def _reconcile(self) -> None:
        """Every hosted video's head, read in batches: catch the deliveries we missed."""
        videos = list(self.hub.channels)
        for i in range(0, len(videos), RECONCILE_BATCH):
            self.hub.reconcile(await self.backend.heads(videos[i : i + RECONCILE_BATCH]))

    async def _report_load_safely(self) -> None:
        try:
            await self._report_load()
        except Exception as exc:  # the periodic report tries again
            log.warning("publishing the draining flag failed: %s", exc)

    async def _count_viewers(self) -> None:
        """This node's viewers per video to Redis, and (``viewer_count_interval``) each
        video's total over every live node to its viewers here."""
        counts = {v: len(c.viewers) for v, c in self.hub.channels.items() if c.viewers}
        try:
            others = await self.viewer_counts.publish(self.node_id, self.boot, counts)
        except RedisError as exc:  # one line per interval while Redis is away, no trace
            log.warning("publishing viewer counts failed: %s", exc)
            return
        if self.settings.viewer_count_interval > 0:
            self.hub.announce_viewers(lambda video, here: here + others.get(video, 0))

    async def _report_load(self) -> None:
        """Rewrite this node's record when it says something new (``worth_publishing``)."""
        info = self._info()
        if worth_publishing(self.membership.record, info, self.settings.spread_viewers):
            await self.membership.update(info)

    def begin_stop(self) -> None:
        """Not ready from now on (``/readyz`` 503 ``stopping``, gRPC health
        NOT_SERVING); viewers and deliveries are still served."""
        self.readiness.begin_stop()

    async def stop(self, timeout: float = 5.0) -> None:
        if not self._started:
            return
        self._started = False
        await self.readiness.stop()
        # 1. stop accepting viewers and deliveries
        self.listener.accepting = False
        if self._sse is not None:
            self._sse.close()
        for timer in self._timers:
            timer.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=min(1.0, timeout))
        # 2. tell viewers to go elsewhere; they resume with their last event id
        if self._enforcing is not None:
            self._enforcing.cancel()
        for video_id in list(self.hub.channels):
            placed = self.placement.placed(video_id, exclude={self.node_id})
            target = self.placement.url(random.choice(placed)) if placed else None
            self.hub.move(video_id, target, "shutdown")
        for conn in list(self.listener.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.hub.stop()
        # 3. deregister, then close backend clients
        try:
            await asyncio.wait_for(self.viewer_counts.withdraw(self.node_id, self.boot), timeout)
        except Exception as exc:  # they stop counting when the session ends anyway
            log.warning("withdrawing the viewer counts failed: %s", exc)
        try:
            await asyncio.wait_for(self.registry.clear(), timeout)
            await asyncio.wait_for(self.membership.leave(), timeout)
        except Exception as exc:
            log.warning("deregistering failed: %s", exc)
        await self.zk.stop()
        await self.redis.aclose()
        await self.store.stop()
        if self.admin is not None:
            await self.admin.stop()
