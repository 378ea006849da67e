"""ZooKeeper coordination: membership, the hosted-video registry, routing watches, placement.

Every znode path is built in :mod:`livecomments.coord.paths`; every call goes through
:class:`coord.client.ZK`, which bridges kazoo's threads into asyncio and puts a
timeout on each call (without quorum kazoo would block forever).
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
