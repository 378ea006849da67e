"""The rest: the viewer page, this replica's health and readiness, the OpenAPI document."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from livecomments.comment_service.api.context import (
    HEALTH,
    METRICS,
    OPENAPI,
    PAGE,
    READINESS,
    json_response,
)
from livecomments.comment_service.api.route import Ok, Route, install
from livecomments.comment_service.api.schema import Count, Model, one_of
from livecomments.kernel import readiness
from livecomments.kernel.errors import NotFound
from livecomments.kernel.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    Status = str
    ZooKeeperState = str
    Reason = str
else:
    Status = one_of(("ok", "degraded"))
    ZooKeeperState = one_of(("CONNECTED", "SUSPENDED", "LOST"))
    Reason = one_of(readiness.REASONS, "NotReadyReason")


class HistoryPages(Model):
    cache: Count | UnsetType = UNSET
    store: Count | UnsetType = UNSET


class ReplayReads(Model):
    searches: Annotated[int, Meta(ge=0, description="Searches for a range's first seq.")]
    probes: Annotated[
        int, Meta(ge=0, description="Their probes, each a read of a few seqs of the index.")
    ]
    documents: Annotated[int, Meta(ge=0, description="Documents read to answer ranges.")]


class Health(Model):
    """This replica's view of the system (``CommentServer.health``)."""

    status: Status
    zookeeper: ZooKeeperState
    worker_id: Count
    dispatchers: Count
    rtms_nodes: Count
    dispatch_failures: Count
    dispatch_undelivered: Count
    outbox_redispatched: Count
    outbox_fenced: Count
    history_pages: Annotated[
        HistoryPages,
        Meta(
            description="History pages answered from the recent-comments cache"
            " and from the store, since start."
        ),
    ]
    history_cache_entries_read: Annotated[
        int,
        Meta(
            ge=0,
            description="Entries history pages read from the recent-comments cache"
            " (their items and reply previews), since start: what pages cost.",
        ),
    ]
    pinned_store_reads: Annotated[
        int,
        Meta(
            ge=0,
            description="First pages whose pinned comment was read from the store (the"
            " Redis copy was missing), since start.",
        ),
    ]
    replay_reads: Annotated[
        ReplayReads,
        Meta(description="What replay ranges cost the store, since start."),
    ]


class Readiness(Model):
    """Whether this replica should be sent requests now (``Readiness.state``)."""

    ready: bool
    reasons: Annotated[
        list[Reason],
        Meta(description="Why not (empty when ready), stable codes in a fixed order."),
    ]


async def index(request: web.Request) -> web.Response:
    """The viewer page, with the CSP and the stream origins of the moment."""
    body, csp = request.app[PAGE]()
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-cache"}
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)


@functools.cache
def _library() -> bytes:
    return (Path(__file__).parents[1] / "static" / "livecomments.js").read_bytes()


async def client_library(request: web.Request) -> web.Response:
    """livecomments.js: the stream's client, for the viewer page and for integrators."""
    headers = {"Cache-Control": "public, max-age=300"}
    return web.Response(
        body=_library(), content_type="text/javascript", charset="utf-8", headers=headers
    )


async def health(request: web.Request) -> web.Response:
    return json_response(request.app[HEALTH]())


async def ready(request: web.Request) -> web.Response:
    is_ready, reasons = request.app[READINESS]()
    body = Readiness(ready=is_ready, reasons=list(reasons))
    return json_response(body, 200 if is_ready else 503, {"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    served = request.app[METRICS]
    if not served.public:
        raise NotFound("metrics are served on this replica's admin listener")
    return web.Response(body=served.registry.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


ROUTES = (
    Route(
        "GET",
        "/",
        index,
        "The viewer page",
        "misc",
        (Ok(200, "The HTML page.", str, media_type="text/html"),),
    ),
    Route(
        "GET",
        "/livecomments.js",
        client_library,
        "The client library",
        "misc",
        (
            Ok(
                200,
                "livecomments.js (docs/stream-protocol.md, 'Rules for a client').",
                str,
                media_type="text/javascript",
            ),
        ),
    ),
    Route(
        "GET",
        "/healthz",
        health,
        "Health of this replica",
        "misc",
        (Ok(200, "Always 200; `status` says degraded without ZooKeeper.", Health),),
    ),
    Route(
        "GET",
        "/readyz",
        ready,
        "Readiness of this replica",
        "misc",
        (
            Ok(200, "Ready: send it requests.", Readiness),
            Ok(503, "Not ready (it may still answer); `reasons` says why.", Readiness),
        ),
        notes=(
            "For load balancers and orchestrators. Not ready while ZooKeeper is not "
            "connected (`zookeeper_disconnected`), Redis or the store did not answer "
            "their last probe (`redis_unavailable`, `store_unavailable`; probed every "
            "second, the answer never waits on them), and from a SIGTERM on "
            "(`stopping`: the replica serves `shutdown_delay` = {s.shutdown_delay} s more, "
            "then stops). "
            "`/healthz` answers whether it is alive.",
        ),
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "Metrics of this replica",
        "misc",
        (Ok(200, "The Prometheus text format (version 0.0.4).", str, media_type="text/plain"),),
        notes=(
            "What every metric means: `livecomments/kernel/metrics.py`. With"
            " `admin_port` set, metrics are served on the admin listener instead and"
            " this answers 404.",
        ),
        errors={404: ("not_found",)},
    ),
    Route(
        "GET",
        "/api/openapi.json",
        openapi,
        "This document",
        "misc",
        (Ok(200, "OpenAPI 3.1.", dict[str, Any]),),
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
