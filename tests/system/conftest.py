"""Fixtures that start the real system: ZooKeeper, Redis, the MongoDB-wire store, our processes.

Backends start once per test session; each test module gets its own cluster of
our processes in its own namespace (ZooKeeper root, Redis key prefix, database).
When a test fails, the logs of that cluster's processes are attached to the report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright

from livecomments.cli.cluster import Backends, Cluster
from livecomments.cli.launcher import missing_system_packages
from tests.conftest import NO_LIMITS, make_cluster
from tests.support import Api, client_session


@pytest.fixture(scope="session")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("livecomments")


@pytest.fixture(scope="session")
def backends(run_root: Path) -> Iterator[Backends]:
    missing = missing_system_packages()
    if missing:
        pytest.fail(f"missing system packages (run `make test` as root): {' '.join(missing)}")
    # A 3-member ZooKeeper ensemble, as in production (deploy/zookeeper).
    started = Backends.start(run_root / "backends", zk_members=3, memory_store=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cluster(
    run_root: Path, backends: Backends, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """Two dispatchers, two RTMS nodes, one comment service (TLS), shared by a module.

    A module may set ``CLUSTER_ENV`` (extra ``LIVECOMMENTS_*`` settings) and
    ``CLUSTER_SHAPE`` (how many of each process) for its cluster.
    """
    started = make_cluster(
        run_root,
        backends,
        request.module.__name__.rsplit(".", 1)[-1],
        extra_env={**NO_LIMITS, **getattr(request.module, "CLUSTER_ENV", {})},
    )
    shape = {"dispatchers": 2, "rtms": 2, "comment_services": 1}
    shape.update(getattr(request.module, "CLUSTER_SHAPE", {}))
    started.start(**shape)
    yield started
    started.stop()


@pytest.fixture
async def session(cluster: Cluster) -> AsyncIterator[aiohttp.ClientSession]:
    # Closing waits until each connection has closed (aiohttp >= 3.12), and aborts the
    # TLS connections closed earlier whose shutdown is still under way (see support.py).
    async with client_session(cluster.ca_file) as http:
        yield http


@pytest.fixture
def api(cluster: Cluster, session: aiohttp.ClientSession) -> Api:
    return Api(cluster.services["comment-1"].url, session)


CHROMIUM = "/usr/lib/chromium/chromium"  # Debian's; a browser is never downloaded


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, with the flags this machine needs (no network but loopback).

    One per module: each test opens contexts of its own (a context is a fresh
    profile: no cookies, storage or cache shared with another).
    """
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--ignore-certificate-errors",
            ],
        )  # fmt: skip
        yield launched
        await launched.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Cluster):
                report.sections.append(("livecomments logs", value.logs()))
    return report
