"""Which IP addresses the server may connect to when a user names the URL.

URL previews make the server fetch what users ask for, from wherever DNS
says it is. Unchecked, that is a way into the operator's network: a user
could read the admin pages of a router, a metadata service at
169.254.169.254 or a database's HTTP port through the previews. So every
address a host name resolves to is judged here before anything connects.

Invariants
----------

* **An address is judged by what it reaches.** An IPv4 address written
  in IPv6 form (IPv4-mapped ``::ffff:a.b.c.d``, or the deprecated
  IPv4-compatible ``::a.b.c.d``) is judged as the IPv4 address it is: the
  operating system connects there, whatever the denylist says about
  ``::ffff:0:0/96``. Other ways of embedding an IPv4 address (NAT64,
  6to4, Teredo) are denied whole by default, as their relays could reach
  anything.
* **The allowlist wins.** An address in both lists is allowed, so an
  operator can open one private host without rewriting the defaults.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_URL_PREVIEW_DENYLIST",
    "AddressPolicy",
    "IpAddress",
    "IpNetwork",
    "effective_address",
    "parse_network",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every range that is not the public internet: what a fetch on a user's
#: behalf must not reach unless the operator says so.
DEFAULT_URL_PREVIEW_DENYLIST: Final[tuple[str, ...]] = (
    # IPv4: "this network", private, shared (CGNAT), loopback, link-local.
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    # IETF protocol assignments, documentation, the old 6to4 relay anycast.
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    # Benchmarking, documentation.
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    # Multicast, reserved and the broadcast address.
    "224.0.0.0/4",
    "240.0.0.0/4",
    # IPv6: unspecified, loopback, IPv4-mapped (judged as IPv4 anyway).
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    # NAT64 (well-known and local-use prefixes), discard-only.
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    # IETF protocol assignments (Teredo among them), documentation, 6to4.
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    # Unique-local, site-local (deprecated), link-local, multicast.
    "fc00::/7",
    "fec0::/10",
    "fe80::/10",
    "ff00::/8",
)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """A denylist with its exceptions; see the module's invariants."""

    denied: tuple[IpNetwork, ...]
    allowed: tuple[IpNetwork, ...] = ()

    @classmethod
    def from_strings(cls, denied: Iterable[str], allowed: Iterable[str] = ()) -> AddressPolicy:
        """A policy from CIDR strings (``10.0.0.0/8``, ``::1``); a bare
        address is a network of one. Raises ValueError naming a bad entry."""
        return cls(
            denied=tuple(parse_network(entry) for entry in denied),
            allowed=tuple(parse_network(entry) for entry in allowed),
        )

    def allows(self, address: str | IpAddress) -> bool:
        """Whether a connection to ``address`` may be made.

        A string that is not an IP address is refused: what cannot be
        judged is not reached.
        """
        try:
            judged = effective_address(address)
        except ValueError:
            return False
        if _within(judged, self.allowed):
            return True
        return not _within(judged, self.denied)


def parse_network(entry: str) -> IpNetwork:
    """One CIDR entry of a list; ValueError saying what is wrong with it."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or network") from None


def effective_address(address: str | IpAddress) -> IpAddress:
    """The address a connection to ``address`` reaches: an IPv6 form of an
    IPv4 address is that IPv4 address. A scope (``fe80::1%eth0``) is
    dropped: it names the interface, not the address."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        packed = address.packed
        # IPv4-compatible (::a.b.c.d), deprecated but still routed as IPv4
        # by some stacks; :: and ::1 are themselves, not 0.0.0.0 and 0.0.0.1.
        if packed[:12] == bytes(12) and int(address) > 1:
            return ipaddress.IPv4Address(packed[12:])
    return address


def _within(address: IpAddress, networks: tuple[IpNetwork, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)
