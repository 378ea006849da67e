"""Who the client is: trusted proxies (exact addresses or CIDR ranges) and X-Forwarded-For.

One implementation for every listener that counts clients by address (the
comment service's rate limits, the RTMS node's connection limits), so they
agree on who the client is.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# An IPv6 subscriber gets a /64 (often a /56 or /48): counting single IPv6
# addresses would give one client 2^64 of them. Limits key an IPv6 client by its /64.
IPV6_LIMIT_PREFIX = 64


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's ::ffff:a.b.c.d is a.b.c.d
    return address


class TrustedProxies:
    """The peers allowed to say who the client is, as addresses or CIDR ranges.

    ``TrustedProxies(["10.0.0.5", "10.1.0.0/16", "fd00::/8"])``; anything else
    raises ``ValueError`` (at start-up, where a typo should stop the process).
    """

    __slots__ = ("_exact", "_networks")

    def __init__(self, specs: Iterable[str]) -> None:
        self._exact: set[IPAddress] = set()
        self._networks: list[IPNetwork] = []
        for spec in specs:
            spec = spec.strip()
            if not spec:
                continue
            if "/" in spec:
                try:
                    network = ipaddress.ip_network(spec, strict=False)
                except ValueError:
                    raise ValueError(f"trusted_proxies: {spec!r} is not a CIDR range") from None
                if network.num_addresses == 1:
                    self._exact.add(network.network_address)
                else:
                    self._networks.append(network)
            else:
                address = _address(spec)
                if address is None:
                    raise ValueError(f"trusted_proxies: {spec!r} is not an address or a CIDR range")
                self._exact.add(address)

    @staticmethod
    @functools.cache  # settings are frozen: parse each distinct list once per process
    def of(specs: tuple[str, ...]) -> TrustedProxies:
        return TrustedProxies(specs)

    def __bool__(self) -> bool:
        return bool(self._exact or self._networks)

    def trusts(self, peer: str | None) -> bool:
        if not self or not peer:
            return False
        address = _address(peer)
        return address is not None and self._trusts(address)

    def _trusts(self, address: IPAddress) -> bool:
        if address in self._exact:
            return True
        return any(address in network for network in self._networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: ``peer``, or from X-Forwarded-For when ``peer`` is trusted.

        Hops are read from the right, skipping our own proxies: the first other
        address is the one the outermost trusted proxy saw, which a client cannot
        forge. A malformed hop ends the walk (the peer is answered).
        """
        peer = peer or "unknown"
        if not forwarded_for or not self.trusts(peer):
            return peer
        for hop in reversed(forwarded_for.split(",")):
            address = _address(hop)
            if address is None:
                break
            if self._trusts(address):
                continue
            return str(address)
        return peer


def limit_key(address: str) -> str:
    """What per-address limits count: the IPv4 address, or the IPv6 /64 it is in."""
    parsed = _address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, IPV6_LIMIT_PREFIX), strict=False))
    return str(parsed)
