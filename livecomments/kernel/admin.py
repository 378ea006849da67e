"""A process's admin listener: ``/metrics``, ``/healthz`` and ``/readyz`` on a private address.

Plain HTTP, meant for the private network (Prometheus, a load balancer's or an
orchestrator's health checks), never for the internet. The dispatcher has one
always (its only other listener is gRPC); the comment service and the RTMS get
one when ``admin_port`` is set, and then their public listener no longer serves
``/metrics``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from livecomments.kernel.metrics import CONTENT_TYPE, Metrics
from livecomments.kernel.metrics import readiness as readiness_metrics
from livecomments.kernel.readiness import Readiness

log = logging.getLogger(__name__)


def admin_listener(
    host: str,
    port: int,
    metrics: Metrics,
    health: Callable[[], dict[str, Any]],
    readiness: Readiness,
) -> AdminListener | None:
    """What every process does for operators: its readiness in its metrics, and its
    admin listener (None when ``port`` is 0: then the public listener serves them)."""
    metrics.add(lambda: readiness_metrics(readiness.state()))
    return AdminListener(host, port, metrics, health, readiness.answer) if port else None


def metrics_url(admin_host: str, admin_port: int, public_url: str = "") -> str:
    """Where Prometheus (and ``livecomments top``) reads a process's metrics.

    Its admin listener when it has one, else its public listener; "" when neither.
    """
    if admin_port:
        host = admin_host if admin_host not in ("", "0.0.0.0", "::") else socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{admin_port}/metrics"
    return f"{public_url}/metrics" if public_url else ""


class AdminListener:
    """``GET /metrics`` (Prometheus text format), ``GET /healthz`` (200, JSON) and
    ``GET /readyz`` (200 or 503 with the reasons: ``Readiness.answer``)."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Callable[[], dict[str, Any]],
        readiness: Callable[[], tuple[int, dict[str, Any]]],
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._health = health
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("admin listener (/metrics, /healthz, /readyz) on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _serve_health(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._health()), content_type="application/json")

    async def _serve_ready(self, request: web.Request) -> web.Response:
        status, body = self._readiness()
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
