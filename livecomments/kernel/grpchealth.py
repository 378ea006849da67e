"""The standard ``grpc.health.v1`` service on a gRPC port, following a :class:`Readiness`.

It answers for the whole server (``""``) and for each of our services on that
port (``livecomments.v1.Dispatcher``, ``livecomments.v1.Delivery``): all SERVING
when the process is ready, all NOT_SERVING otherwise (ZooKeeper lost, a
backend down, draining, stopping). ``Watch`` streams see every change.

The health service checks no role: any caller that passed the port's mutual
TLS handshake (a certificate from the deployment's CA, e.g. the operator's)
may ask. So a probe dials with a certificate, as any client does::

    grpc_health_probe -addr=10.0.0.5:9701 -tls -tls-ca-cert ca.pem \\
        -tls-client-cert operator.pem -tls-client-key operator.key \\
        -tls-server-name dispatcher.livecomments
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from livecomments.kernel.readiness import Readiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE = "grpc.health.v1.Health"


class GrpcHealth:
    """Adds the health service to a server and keeps its statuses in step with readiness."""

    def __init__(self, readiness: Readiness, services: Iterable[str]) -> None:
        self.services = ("", *services)
        self.servicer = health_aio.HealthServicer()
        self._readiness = readiness
        self._applied: bool | None = None
        self._applying: asyncio.Task[None] | None = None
        readiness.add_listener(lambda ready, reasons: self._follow())

    async def add_to(self, server: grpc.aio.Server) -> None:
        """Serve it on ``server`` (before it starts), with the current answer applied."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        await self._apply()

    def _follow(self) -> None:
        # One task applies the newest answer, so two quick changes cannot land out of order.
        if self._applying is None or self._applying.done():
            self._applying = asyncio.ensure_future(self._apply())

    async def _apply(self) -> None:
        while (ready := self._readiness.ready) != self._applied:
            self._applied = ready
            status = SERVING if ready else NOT_SERVING
            for service in self.services:
                await self.servicer.set(service, status)
