"""ZooKeeper coordination: membership, the hosted-video registry, routing watches, placement.

Every znode path is built in :mod:`coord.paths`; every call goes through
:class:`coord.client.ZK`, which bridges kazoo's threads into asyncio and puts a
timeout on each call (without quorum kazoo would block forever).
"""

from coord.client import ZK
from coord.membership import Membership
from coord.mirror import NodeDirectory, RoutingTable
from coord.paths import Paths
from coord.placement import Placement, Policy, place, rendezvous
from coord.registry import HostedRegistry

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
