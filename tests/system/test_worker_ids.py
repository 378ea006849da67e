"""Snowflake worker ids leased in a range of the cluster's own (a real ZooKeeper).

Clusters (cells) that share one MongoDB must never make the same comment id, so
each leases its comment services' worker ids from a range of its own
(``LIVECOMMENTS_WORKER_IDS``); inside the range, no two live processes share one.
"""

from __future__ import annotations

import pytest

from livecomments.cli.cluster import Backends
from livecomments.coord.client import ZK
from livecomments.coord.membership import WorkerLease
from livecomments.kernel.errors import Unavailable
from tests.support import unique


async def test_workers_lease_distinct_ids_inside_their_range_only(backends: Backends) -> None:
    zk = ZK(backends.zk_hosts, f"/{unique('workers')}", timeout=10.0)
    await zk.start()
    leases = [WorkerLease(zk) for _ in range(4)]
    try:
        first = await leases[0].acquire(ids=(700, 702))
        second = await leases[1].acquire(ids=(700, 702))
        third = await leases[2].acquire(ids=(700, 702))
        assert sorted((first, second, third)) == [700, 701, 702]
        with pytest.raises(Unavailable):  # the range is full
            await leases[3].acquire(ids=(700, 702))
        await leases[1].release()
        assert await leases[3].acquire(ids=(700, 702)) == second  # the freed one
    finally:
        for lease in leases:
            await lease.release()
        await zk.stop()
