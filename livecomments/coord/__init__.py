"""ZooKeeper coordination: membership, the hosted-video registry, routing watches,
placement, and operator intent.

Every znode path is built in :mod:`livecomments.coord.paths`, every payload is a
record in :mod:`livecomments.coord.records`; every call goes through
:class:`coord.client.ZK`, which bridges kazoo's threads into asyncio and puts a
timeout on each call (without quorum kazoo would block forever). Operators'
pins, drains and rebalance requests are written by :mod:`coord.intents` and
read by :mod:`coord.placement`.
"""

from livecomments.coord.client import ZK
from livecomments.coord.membership import Membership
from livecomments.coord.mirror import NodeDirectory, RoutingTable
from livecomments.coord.paths import Paths
from livecomments.coord.placement import Placement, Policy, place, rendezvous
from livecomments.coord.registry import HostedRegistry

__all__ = [
    "ZK",
    "HostedRegistry",
    "Membership",
    "NodeDirectory",
    "Paths",
    "Placement",
    "Policy",
    "RoutingTable",
    "place",
    "rendezvous",
]
