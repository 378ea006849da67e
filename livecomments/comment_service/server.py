"""A comment-service process: the HTTPS app plus its clients of the backends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from livecomments.comment_service import access
from livecomments.comment_service.admission import Admission
from livecomments.comment_service.api import context as keys
from livecomments.comment_service.app import STATIC, build_app
from livecomments.comment_service.auth import Accounts
from livecomments.comment_service.browser import Cors, ViewerPage, check_origins, origin_of
from livecomments.comment_service.comments import Comments
from livecomments.comment_service.dispatch import DispatchClient
from livecomments.comment_service.filter import ContentFilter, load_scorer
from livecomments.comment_service.idempotency import Idempotency
from livecomments.comment_service.limits import Limiter, LoginLimits, PostLimits
from livecomments.comment_service.metrics import ServiceMetrics
from livecomments.comment_service.moderation import Moderation
from livecomments.comment_service.outbox import Outbox
from livecomments.comment_service.pinned import PinnedCache
from livecomments.comment_service.policy import Policies
from livecomments.comment_service.reactions import Reactions
from livecomments.comment_service.recent import RecentCache
from livecomments.comment_service.replay import Replay
from livecomments.coord import ZK, NodeDirectory, Placement, Policy
from livecomments.coord.membership import WorkerLease
from livecomments.coord.records import RtmsNode
from livecomments.kernel import metrics as m
from livecomments.kernel.admin import admin_listener, metrics_url
from livecomments.kernel.grpcauth import GrpcSecurity
from livecomments.kernel.ids import Snowflake
from livecomments.kernel.rates import Rate
from livecomments.kernel.readiness import REDIS, STORE, Readiness
from livecomments.kernel.redis.direct import DirectScripts
from livecomments.kernel.redis.keys import Keys
from livecomments.kernel.redis.timed import connect as connect_redis
from livecomments.kernel.sequencer import Sequencer
from livecomments.kernel.settings import CommentServiceSettings, default_node_id
from livecomments.kernel.store import Store
from livecomments.kernel.tls import server_context
from livecomments.kernel.viewers import ViewerCounts

log = logging.getLogger(__name__)


class CommentServer:
    def __init__(self, settings: CommentServiceSettings) -> None:
        if not settings.jwt_secret:
            raise ValueError("set LIVECOMMENTS_JWT_SECRET (shared by every replica)")
        self.settings = settings
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
        # The node id its logs carry too (cli/main.py): the service has no setting for one.
        self.node_id = default_node_id("comment-service", settings.port)
        self.metrics = m.Metrics(m.COMMENT_SERVICE, self.node_id)
        self.store_latency = m.Histograms()
        self.store = Store(
            settings.mongo_uri, settings.mongo_db, settings.mongo_timeout, self.store_latency
        )
        self.redis_latency = m.Histograms()
        self.redis: Redis = connect_redis(
            settings, self.redis_latency, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.sequencer = Sequencer(self.redis, settings.redis_prefix, self.store, outbox=True)
        self.replay = Replay(self.store, self.sequencer)
        # /readyz: ZooKeeper connected, Redis and the store answering, not stopping.
        self.readiness = Readiness()
        self.zk.follow_in(self.readiness)
        self.readiness.probe(REDIS, self.redis.ping)
        self.readiness.probe(STORE, self.store.ping)
        self.dispatchers = NodeDirectory(self.zk, self.zk.paths.dispatchers)
        self.rtms_nodes = NodeDirectory(self.zk, self.zk.paths.rtms_nodes)
        self.placement = Placement(self.zk, Policy.from_settings(settings), self.rtms_nodes)
        self.viewer_counts = ViewerCounts(
            self.redis, Keys(settings.redis_prefix), self.placement.boot
        )
        self.dispatch = DispatchClient(
            self.dispatchers, settings.dispatch_timeout, GrpcSecurity.from_settings(settings)
        )
        # The scripts every post runs, each on a connection of its own (see direct.py).
        self.direct = DirectScripts(self.redis)
        self.recent = RecentCache(
            self.redis,
            self.sequencer,
            settings.redis_prefix,
            settings.recent_cache_size,
            settings.recent_cache_ttl,
            direct=self.direct,
        )
        self.pins = PinnedCache(self.redis, settings.redis_prefix)
        self.outbox = Outbox(
            self.redis,
            settings.redis_prefix,
            self.store,
            self.dispatch,
            self.recent,
            age=settings.outbox_age,
            interval=settings.outbox_interval,
            fence_after=settings.outbox_fence_after,
        )
        self.lease = WorkerLease(self.zk)
        self.accounts = Accounts(
            self.store,
            self.redis,
            settings.redis_prefix,
            settings.jwt_secret,
            settings.jwt_ttl,
            hashing=settings.password_hashing,
        )
        self.limiter = Limiter(self.redis, settings.redis_prefix)
        self.policies = Policies(self.store, self.redis, self.limiter)
        self.content_filter = ContentFilter(
            load_scorer(settings.filter_scorer, settings.filter_words_file),
            settings.filter_hold_threshold,
            settings.filter_refuse_threshold,
        )
        self.post_limits = PostLimits(
            Rate.parse(settings.post_limit_user),
            Rate.parse(settings.post_limit_ip),
            settings.duplicate_window,
        )
        self.login_limits = LoginLimits.from_settings(settings)  # parsed once, checked at start
        for spec in (settings.login_limit_account, settings.login_limit_ip,
                     settings.register_limit_ip, settings.react_limit_user,
                     settings.report_limit_user, settings.moderate_limit_user,
                     settings.history_limit_ip, settings.history_limit_user):  # fmt: skip
            Rate.parse(spec)  # a typo in a limit fails at start, not on the first request
        self.reactions = Reactions(
            self.redis,
            settings.redis_prefix,
            self.store,
            self.dispatch,
            push_interval=settings.reaction_push_interval,
            flush_interval=settings.reaction_flush_interval,
        )
        # CORS and the page's policy: malformed values fail at start, not in a browser.
        self.cors = Cors(settings.cors_origins, self.public_url)
        check_origins(settings.rtms_origins, "rtms_origins")
        self.viewer_page = ViewerPage(STATIC / "index.html", settings.frame_ancestors)
        # /metrics: on the public listener, unless an admin listener serves it.
        self.served_metrics = ServiceMetrics(self.metrics, public=not settings.admin_port)
        self.metrics.add(self._collect)
        self.admin = admin_listener(
            settings.admin_host, settings.admin_port, self.metrics, self.health, self.readiness
        )
        # Both need the Snowflake worker id leased in start().
        self.ids: Snowflake = None  # type: ignore[assignment]
        self.comments: Comments = None  # type: ignore[assignment]
        self.moderation: Moderation = None  # type: ignore[assignment]
        self._runner: web.AppRunner | None = None
        self._started = False

    def stream_origins(self) -> list[str]:
        """Origins the viewer page may stream from: the configured ones, then the
        RTMS nodes up now (their public URLs, as the stream redirect names them)."""
        nodes = self.rtms_nodes.view(RtmsNode.from_json).values()
        live = (origin_of(node.sse_url or "") for node in nodes)
        return [*self.settings.rtms_origins, *sorted({o for o in live if o})]

    def page(self) -> tuple[bytes, str]:
        """The viewer page and its Content-Security-Policy, for the RTMS nodes up now."""
        return self.viewer_page.render(self.stream_origins())

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.zk.state == "CONNECTED" else "degraded",
            "zookeeper": self.zk.state,
            "worker_id": self.lease.worker_id,
            "dispatchers": len(self.dispatchers.nodes),
            "rtms_nodes": len(self.rtms_nodes.nodes),
            "dispatch_failures": self.comments.dispatch_failures if self.comments else 0,
            "dispatch_undelivered": self.comments.undelivered if self.comments else 0,
            "outbox_redispatched": self.outbox.redispatched,
            "outbox_fenced": self.outbox.fenced,
            "history_pages": dict(self.comments.page_reads) if self.comments else {},
            "history_cache_entries_read": self.recent.entries_read,
            "pinned_store_reads": self.pins.fills,
            "replay_reads": {
                "searches": self.replay.searches,
                "probes": self.replay.probes,
                "documents": self.replay.documents_read,
            },
        }

    def _collect(self) -> Iterator[m.Metric]:
        comments, outbox = self.comments, self.outbox
        yield from m.zookeeper(self.zk.state, self.zk.reconnects, self.zk.losses)
        yield m.counter(m.DISPATCH_FAILURES, comments.dispatch_failures if comments else 0)
        yield m.counter(m.DISPATCH_UNDELIVERED, comments.undelivered if comments else 0)
        yield m.gauge(m.OUTBOX_DEPTH, outbox.depth)
        yield m.gauge(m.OUTBOX_AGE, outbox.oldest_age)
        yield m.counter(m.OUTBOX_REDISPATCHED, outbox.redispatched)
        yield m.counter(m.OUTBOX_FENCED, outbox.fenced)
        pages = comments.page_reads if comments else {}
        yield m.counter(m.HISTORY_PAGES, {(s,): pages.get(s, 0) for s in ("cache", "store")})
        yield m.gauge(
            m.CLUSTER_NODES,
            {("dispatcher",): len(self.dispatchers.nodes), ("rtms",): len(self.rtms_nodes.nodes)},
        )
        yield m.counter(m.STREAMS_OPENED, {("dispatcher",): self.dispatch.streams.opened})
        yield m.counter(m.STREAMS_REOPENED, {("dispatcher",): self.dispatch.streams.reopened})
        yield m.histogram(m.STORE_CALLS, self.store_latency)
        yield m.histogram(m.REDIS_CALLS, self.redis_latency)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        s = self.settings
        if self.admin is not None:
            await self.admin.start()
        await self.store.start(create_indexes=True)
        await self.zk.start()
        await self.dispatchers.start()
        await self.rtms_nodes.start()
        await self.placement.start()
        settings = self.settings
        worker = await self.lease.acquire(
            self.public_url,
            metrics_url(settings.admin_host, settings.admin_port, self.public_url),
            settings.worker_range,
        )
        self.ids = ids = Snowflake(worker)
        self.comments = Comments(
            self.store,
            self.sequencer,
            self.dispatch,
            ids,
            content_filter=self.content_filter,
            limiter=self.limiter,
            policies=self.policies,
            admission=Admission(
                self.redis, self.limiter, self.sequencer, self.post_limits, direct=self.direct
            ),
            recent=self.recent,
            pins=self.pins,
            revoked_key=self.accounts.revoked_key,
            idempotency=Idempotency(self.redis, s.redis_prefix, s.idempotency_window),
            stage=self.served_metrics.stage,
        )
        self.moderation = Moderation(self.store, self.comments, ids, s.flag_threshold)
        self.reactions.start()
        self.outbox.start()
        app = build_app(s)
        self.provide(app)
        self._runner = web.AppRunner(
            app,
            access_log=access.LOGGER if s.access_log else None,
            access_log_class=access.AccessLogger,
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        ssl_ctx = server_context(s.tls_cert, s.tls_key) if s.tls_cert else None
        site = web.TCPSite(self._runner, s.host, s.port, ssl_context=ssl_ctx, backlog=1024)
        await site.start()
        await self.readiness.start()
        log.info("comment service on %s (worker %d)", self.public_url, worker)

    def provide(self, app: web.Application) -> None:
        """Give the handlers the services they use, each under its key."""
        app[keys.ACCOUNTS] = self.accounts
        app[keys.USERS] = self.store
        app[keys.IDS] = self.ids
        app[keys.COMMENTS] = self.comments
        app[keys.REACTIONS] = self.reactions
        app[keys.MODERATION] = self.moderation
        app[keys.HELD] = self.store
        app[keys.POLICIES] = self.policies
        app[keys.LIMITER] = self.limiter
        app[keys.LOGIN_LIMITS] = self.login_limits
        app[keys.PLACEMENT] = self.placement
        app[keys.VIEWER_COUNTS] = self.viewer_counts
        app[keys.REPLAY] = self.replay
        app[keys.CORS] = self.cors
        app[keys.PAGE] = self.page
        app[keys.HEALTH] = self.health
        app[keys.READINESS] = self.readiness.state
        app[keys.METRICS] = self.served_metrics

    def begin_stop(self) -> None:
        """Not ready from now on (``/readyz`` 503 ``stopping``); requests are still served."""
        self.readiness.begin_stop()

    async def stop(self, timeout: float = 5.0) -> None:
        if not self._started:
            return
        self._started = False
        await self.readiness.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.reactions.stop()
        await self.outbox.stop()
        try:
            await asyncio.wait_for(self.lease.release(), timeout)
        except Exception as exc:
            log.warning("releasing the worker id failed: %s", exc)
        await self.dispatch.close()
        await self.zk.stop()
        await self.direct.close()
        await self.redis.aclose()
        await self.store.stop()
        if self.admin is not None:
            await self.admin.stop()
