"""Readiness: /readyz and the gRPC health service answer what an operator needs to know.

The module runs on backends of its own (a 3-member ZooKeeper ensemble, Redis and
the store), since it stops Redis and two ZooKeeper members; every test puts back
what it stopped. Each test sees, from outside: ``/readyz`` on the comment
service and on the RTMS nodes (200, or 503 with the reasons), ``grpc.health.v1``
Check on the dispatcher's and the RTMS nodes' gRPC ports (with an operator's
certificate, as a probe would), and ``/healthz``, which stays 200 throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from livecomments.cli.cluster import Backends, Cluster
from livecomments.kernel.grpcauth import DISPATCHER, RTMS
from livecomments.kernel.metrics import EXPOSITION_MAX_AGE
from livecomments.kernel.pb import livecomments_pb2 as pb
from livecomments.kernel.pb import livecomments_pb2_grpc as pb_grpc
from tests.conftest import NO_LIMITS, make_cluster
from tests.support import Api, Viewer, cli, unique, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SESSION_TIMEOUT = 4.0
# Long enough for the checks made while a stopping process still serves (a few
# requests); the test never measures it.
SHUTDOWN_DELAY = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_NAMES = {DISPATCHER: "livecomments.v1.Dispatcher", RTMS: "livecomments.v1.Delivery"}


@pytest.fixture(scope="module")
def own_backends(run_root: Path) -> Iterator[Backends]:
    """Backends of this module alone: its tests stop Redis and ZooKeeper members."""
    started = Backends.start(run_root / "readiness", zk_members=3, memory_store=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cluster(run_root: Path, own_backends: Backends) -> Iterator[Cluster]:
    """One dispatcher, two RTMS nodes, one comment service, on this module's backends
    (named ``cluster`` so the shared ``session`` and ``api`` fixtures use it)."""
    env = {**NO_LIMITS, "LIVECOMMENTS_ZK_SESSION_TIMEOUT": str(SESSION_TIMEOUT)}
    started = make_cluster(run_root, own_backends, "readiness", extra_env=env)
    started.start(dispatchers=1, rtms=2, comment_services=1)
    yield started
    started.stop()


# -- what a probe sees --------------------------------------------------------------


async def readyz(session: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{base}/readyz") as response:
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await response.json()
        assert body["ready"] == (response.status == 200), body
        return response.status, body


async def alive(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/healthz") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def grpc_health(cluster: Cluster, name: str, service: str = "") -> int:
    """Check(service) on ``name``'s gRPC port, with an operator's certificate."""
    proc = cluster.services[name]
    address, role = (
        (proc.url, DISPATCHER)
        if proc.kind == "dispatcher"
        else (f"127.0.0.1:{proc.env['LIVECOMMENTS_GRPC_PORT']}", RTMS)
    )
    async with cluster.grpc_security().channel(address, role) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def grpc_statuses(cluster: Cluster, name: str) -> set[int]:
    """The statuses of the whole server and of its livecomments service."""
    role = DISPATCHER if cluster.services[name].kind == "dispatcher" else RTMS
    return {
        await grpc_health(cluster, name, ""),
        await grpc_health(cluster, name, SERVICE_NAMES[role]),
    }


def url(cluster: Cluster, name: str) -> str:
    return cluster.services[name].url


async def readiness_metrics(
    session: aiohttp.ClientSession, cluster: Cluster, name: str
) -> tuple[int, set[str]]:
    """``livecomments_ready`` and the reasons ``livecomments_not_ready`` gives, scraped
    (after waiting out the exposition's cache: an answer made after what happened)."""
    await asyncio.sleep(EXPOSITION_MAX_AGE + 0.05)
    async with session.get(cluster.services[name].metrics_url) as response:
        text = await response.text()
    ready, reasons = -1, set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "livecomments_ready":
                ready = int(sample.value)
            elif sample.name == "livecomments_not_ready" and sample.value == 1:
                reasons.add(sample.labels["reason"])
    return ready, reasons


def admin(cluster: Cluster, name: str) -> str:
    """A dispatcher's admin listener (plain HTTP: /metrics, /healthz, /readyz)."""
    return cluster.services[name].metrics_url.removesuffix("/metrics")


async def until_readyz(
    session: aiohttp.ClientSession, base: str, want: int, reason: str | None, timeout: float
) -> dict[str, Any]:
    """Until ``base``'s /readyz answers ``want`` (naming ``reason``, if given)."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        status, body = await readyz(session, base)
        seen["last"] = (status, body)
        return status == want and (reason is None or reason in body["reasons"])

    try:
        await wait_until(check, timeout, f"{base}/readyz {want} {reason or ''}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer {seen.get('last')}") from None
    return dict(seen["last"][1])


async def until_grpc(cluster: Cluster, name: str, want: int, timeout: float) -> None:
    async def check() -> bool:
        try:
            return await grpc_statuses(cluster, name) == {want}
        except grpc.aio.AioRpcError:
            return False

    await wait_until(check, timeout, f"{name} gRPC health {want}")


# -- the tests ----------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_healthy_cluster_is_ready(cluster: Cluster, session: aiohttp.ClientSession) -> None:
    for name in ("comment-1", "rtms-1", "rtms-2"):
        status, body = await readyz(session, url(cluster, name))
        assert (status, body) == (200, {"ready": True, "reasons": []}), name
        assert (await alive(session, url(cluster, name)))["status"] == "ok"
    status, body = await readyz(session, admin(cluster, "dispatcher-1"))
    assert (status, body) == (200, {"ready": True, "reasons": []})
    for name in ("dispatcher-1", "rtms-1"):
        assert await grpc_statuses(cluster, name) == {SERVING}, name
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await grpc_health(cluster, name, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.timeout(60)
async def test_the_health_service_is_behind_the_same_mutual_tls(cluster: Cluster) -> None:
    """A probe needs a certificate from the cluster's CA, like any client; any role will do."""
    address = url(cluster, "dispatcher-1")
    async with grpc.aio.insecure_channel(address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(plain).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    for role in ("operator", "comment-service", "rtms"):
        async with cluster.grpc_security(role).channel(address, DISPATCHER) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == SERVING, role


@pytest.mark.timeout(120)
async def test_redis_down_makes_the_comment_service_and_rtms_not_ready(
    cluster: Cluster, own_backends: Backends, session: aiohttp.ClientSession
) -> None:
    redis = own_backends.procs["redis"]
    redis.stop()
    try:
        for name in ("comment-1", "rtms-1", "rtms-2"):
            body = await until_readyz(session, url(cluster, name), 503, "redis_unavailable", 30)
            assert body["reasons"] == ["redis_unavailable"], (name, body)
            await alive(session, url(cluster, name))  # alive all along
        await until_grpc(cluster, "rtms-1", NOT_SERVING, 30)
        # A dispatcher needs no Redis.
        assert await grpc_statuses(cluster, "dispatcher-1") == {SERVING}
        # The metrics say the same as /readyz.
        for name in ("comment-1", "rtms-1", "dispatcher-1"):
            assert await readiness_metrics(session, cluster, name) == (
                (0, {"redis_unavailable"}) if name != "dispatcher-1" else (1, set())
            ), name
    finally:
        own_backends.restart("redis")
    for name in ("comment-1", "rtms-1", "rtms-2"):
        await until_readyz(session, url(cluster, name), 200, None, 30)
    await until_grpc(cluster, "rtms-1", SERVING, 30)
    assert await readiness_metrics(session, cluster, "comment-1") == (1, set())


@pytest.mark.timeout(180)
async def test_without_zookeeper_quorum_nothing_is_ready(
    cluster: Cluster, own_backends: Backends, session: aiohttp.ClientSession
) -> None:
    members = sorted(n for n in own_backends.procs if n.startswith("zookeeper"))
    stopped = members[:2]
    for name in stopped:
        own_backends.procs[name].stop()
    try:
        for name in ("comment-1", "rtms-1", "rtms-2"):
            await until_readyz(session, url(cluster, name), 503, "zookeeper_disconnected", 60)
        await until_grpc(cluster, "dispatcher-1", NOT_SERVING, 60)
        await until_grpc(cluster, "rtms-2", NOT_SERVING, 60)
        await until_readyz(
            session, admin(cluster, "dispatcher-1"), 503, "zookeeper_disconnected", 5
        )
        assert (await alive(session, url(cluster, "comment-1")))["status"] == "degraded"
    finally:
        for name in stopped:
            own_backends.restart(name)
    for name in ("comment-1", "rtms-1", "rtms-2"):
        await until_readyz(session, url(cluster, name), 200, None, 90)
    await until_grpc(cluster, "dispatcher-1", SERVING, 90)
    await until_grpc(cluster, "rtms-2", SERVING, 90)
    await until_readyz(session, admin(cluster, "dispatcher-1"), 200, None, 10)


@pytest.mark.timeout(120)
async def test_a_drained_rtms_node_is_not_ready_until_undrained(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    await cli(cluster, "drain", "rtms-2")
    try:
        body = await until_readyz(session, url(cluster, "rtms-2"), 503, "draining", 30)
        assert body["reasons"] == ["draining"]
        await until_grpc(cluster, "rtms-2", NOT_SERVING, 30)
        # The other node, and the comment service, are unaffected.
        assert (await readyz(session, url(cluster, "rtms-1")))[0] == 200
        assert (await readyz(session, url(cluster, "comment-1")))[0] == 200
    finally:
        await cli(cluster, "undrain", "rtms-2")
    await until_readyz(session, url(cluster, "rtms-2"), 200, None, 30)
    await until_grpc(cluster, "rtms-2", SERVING, 30)


@pytest.mark.timeout(120)
async def test_sigterm_turns_not_ready_while_serving_then_stops(
    cluster: Cluster, api: Api, session: aiohttp.ClientSession
) -> None:
    """Processes started with a shutdown delay: after SIGTERM they answer /readyz 503
    ``stopping`` (gRPC health NOT_SERVING) and go on serving posts and streams, then exit."""
    delay = {"LIVECOMMENTS_SHUTDOWN_DELAY": str(SHUTDOWN_DELAY)}
    cluster.extra_env.update(delay)
    try:
        comment = cluster.start_comment_service()
        rtms = cluster.start_rtms()
    finally:
        for key in delay:
            cluster.extra_env.pop(key)
    rtms_name = next(n for n, s in cluster.services.items() if s is rtms)
    stopping_api = Api(comment.url, session)
    token = await api.register(unique("poster"))
    video = unique("stop")
    # ?redirected=1: served here even if placement would send the viewer elsewhere.
    stream = f"{rtms.url}/stream/{video}?redirected=1"
    before = await Viewer(stream, session).connect()
    try:
        assert before.status == 200
        assert (await readyz(session, comment.url))[0] == 200
        assert (await readyz(session, rtms.url))[0] == 200
        await wait_until(lambda: _routes_to(cluster, video, rtms_name), 15, "routed")
        await stopping_api.post(video, "before SIGTERM", token)
        await before.wait_for(1)

        before.expect_end()  # it ends with `moved` once the node stops
        comment.proc.terminate()  # SIGTERM, as systemd or Kubernetes sends it
        rtms.proc.terminate()
        for base in (comment.url, rtms.url):
            body = await until_readyz(session, base, 503, "stopping", SHUTDOWN_DELAY)
            assert body["reasons"] == ["stopping"], (base, body)
        assert await grpc_statuses(cluster, rtms_name) == {NOT_SERVING}
        # Still serving: a post on the stopping comment service, a new stream on the
        # stopping node, and both streams get the comment.
        during = await Viewer(stream, session).connect()
        try:
            assert during.status == 200
            posted = await stopping_api.post(video, "after SIGTERM", token)
            got = await during.wait_for(1)
            assert got[-1].json()["id"] == posted["id"]
            assert (await before.wait_for(2))[-1].json()["id"] == posted["id"]
        finally:
            during.expect_end()
            await during.close()
        await wait_until(
            lambda: not comment.proc.alive() and not rtms.proc.alive(), 60, "both exited"
        )
        assert comment.proc.popen.returncode == 0, comment.proc.log_tail()
        assert rtms.proc.popen.returncode == 0, rtms.proc.log_tail()
        assert any(e.event == "moved" for e in before.events)
    finally:
        await before.close()
        comment.proc.kill()  # if it has not exited (a failure above), it goes now
        rtms.proc.kill()


async def _routes_to(cluster: Cluster, video: str, node: str) -> bool:
    """Whether the dispatcher routes ``video`` to ``node`` (so a post reaches its viewers)."""
    async with cluster.grpc_security().channel(url(cluster, "dispatcher-1"), DISPATCHER) as ch:
        reply = await pb_grpc.DispatcherStub(ch).Routes(pb.RoutesRequest(video_ids=[video]))
    return video in reply.videos and node in reply.videos[video].node_ids


@pytest.mark.timeout(120)
async def test_a_second_signal_during_the_delay_forces_the_exit(
    cluster: Cluster, session: aiohttp.ClientSession
) -> None:
    cluster.extra_env["LIVECOMMENTS_SHUTDOWN_DELAY"] = "600"  # longer than the test may run
    try:
        comment = cluster.start_comment_service()
    finally:
        cluster.extra_env.pop("LIVECOMMENTS_SHUTDOWN_DELAY")
    try:
        comment.proc.terminate()
        await until_readyz(session, comment.url, 503, "stopping", 30)
        comment.proc.terminate()
        await wait_until(lambda: not comment.proc.alive(), 60, "forced exit")
        assert comment.proc.popen.returncode == 1
    finally:
        comment.proc.kill()


@pytest.mark.timeout(120)
async def test_a_store_that_does_not_answer_makes_them_not_ready(
    cluster: Cluster, own_backends: Backends, session: aiohttp.ClientSession
) -> None:
    """Last in the module: the in-memory store comes back empty."""
    own_backends.procs["store"].stop()
    try:
        for name in ("comment-1", "rtms-1"):
            body = await until_readyz(session, url(cluster, name), 503, "store_unavailable", 30)
            assert body["reasons"] == ["store_unavailable"], (name, body)
        await until_grpc(cluster, "rtms-1", NOT_SERVING, 30)
    finally:
        own_backends.restart("store")
    for name in ("comment-1", "rtms-1"):
        await until_readyz(session, url(cluster, name), 200, None, 60)
    await until_grpc(cluster, "rtms-1", SERVING, 30)
