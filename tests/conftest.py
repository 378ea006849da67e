"""What the unit tests and the system tests share.

The fixtures that start servers (backends, cluster, session, api, browser) are in
tests/system/conftest.py, so `make test-fast` (tests/unit) imports no server code.
``NO_LIMITS`` and ``make_cluster`` are here for the system modules that build a
cluster of their own (they import them from ``tests.conftest``); ``make_cluster``
imports the cluster code only when it is called.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from livecomments.cli.cluster import Backends, Cluster

_namespaces = itertools.count(1)

# Under pytest-xdist (``make test`` runs the system modules on several workers) every
# worker starts its own backends and clusters: give each a port range of its own
# (below the kernel's ephemeral ports), so no two workers ever pick the same port.
# A range given by whoever runs the tests is split among the workers; the default
# one-process range set below (which workers inherit from the controller) is not used.
_DEFAULTED = "LIVECOMMENTS_TEST_PORT_RANGE_DEFAULTED"
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw"):
    _index = int(_worker[2:])
    _given = "" if os.environ.pop(_DEFAULTED, "") else os.environ.get("LIVECOMMENTS_PORT_RANGE")
    if _given:
        _lo, _hi = (int(part) for part in _given.split("-", 1))
        _size = (_hi - _lo + 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        _first, _last = _lo + _index * _size, _lo + (_index + 1) * _size - 1
    else:
        _first, _last = 20000 + 1500 * _index, 20000 + 1500 * _index + 1499
    os.environ["LIVECOMMENTS_PORT_RANGE"] = f"{_first}-{_last}"
elif "LIVECOMMENTS_PORT_RANGE" not in os.environ:
    # One process: a range below the ephemeral ports all the same. A port the kernel
    # picks (bind to 0) can be taken by an outgoing connection between the choice and
    # the server's bind ("address already in use"), and the browser and load tests
    # open many.
    os.environ["LIVECOMMENTS_PORT_RANGE"] = "23000-24999"
    os.environ[_DEFAULTED] = "1"

# Limits high enough that tests about something else never meet them; the
# tests of the limits set their own through their module's CLUSTER_ENV.
NO_LIMITS = {
    f"LIVECOMMENTS_{name}": "100000/1"
    for name in (
        "POST_LIMIT_USER", "POST_LIMIT_IP", "LOGIN_LIMIT_ACCOUNT", "LOGIN_LIMIT_IP",
        "REGISTER_LIMIT_IP", "REACT_LIMIT_USER", "REPORT_LIMIT_USER", "MODERATE_LIMIT_USER",
        "HISTORY_LIMIT_IP", "HISTORY_LIMIT_USER",
    )
} | {
    "LIVECOMMENTS_DUPLICATE_WINDOW": "0",
    # The RTMS listener's per-address and per-node limits: every test viewer
    # comes from 127.0.0.1 (tests/system/test_rtms_hardening.py sets its own).
    "LIVECOMMENTS_MAX_STREAMS_PER_ADDRESS": "100000",
    "LIVECOMMENTS_MAX_UNATTACHED_PER_PEER": "100000",
    "LIVECOMMENTS_JOIN_LIMIT_ADDRESS": "100000/1",
    "LIVECOMMENTS_CHANNEL_LIMIT_NODE": "100000/1",
    # Every video placed on both RTMS nodes, so tests may open streams on either
    # node directly; the placement tests set 1 and see the redirects.
    "LIVECOMMENTS_MIN_SPREAD": "2",
    # Hundreds of sign-ups and logins: argon2id at its test-only cost (the default,
    # RFC 9106's, takes ~0.15 s of CPU a hash; tests/unit/test_passwords.py checks it).
    "LIVECOMMENTS_PASSWORD_HASHING": "test-only",
}  # fmt: skip


def make_cluster(run_root: Path, backends: Backends, name: str, **kwargs: object) -> Cluster:
    """A cluster (not started) in a namespace of its own on the shared ``backends``."""
    from livecomments.cli.cluster import Cluster

    namespace = f"t{next(_namespaces)}-{name}"
    return Cluster(run_root / namespace, backends, namespace=namespace, **kwargs)  # type: ignore[arg-type]


# The system modules that take longest start first, so the workers of `make test`
# (pytest-xdist hands out one module at a time) end together instead of one worker
# starting the longest module last. From `pytest --durations=0`; order only, no skips.
LONGEST_FIRST = (
    "test_fault_suite", "test_delivery_races", "test_browser", "test_rtms_hardening",
    "test_faults", "test_cli", "test_openapi", "test_viral", "test_promises",
    "test_accounts_hardening",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def module_rank(item: pytest.Item) -> int:
        return rank.get(item.path.stem, len(rank))

    items.sort(key=module_rank)
