"""Who may connect: a set of CIDRs checked once per connection."""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(host: str) -> IPAddress:
    """The address a policy decision is about; IPv4 seen through a dual-stack socket
    (::ffff:192.0.2.1) is judged as the IPv4 address it is."""
    return parse_client(host)[0]


# Parsing an address string costs more than the rest of the policy decision, and the same
# clients come back again and again: remember the last few thousand. Invalid input raises
# ValueError every time (exceptions are not cached).
@functools.lru_cache(maxsize=4096)
def parse_client(host: str) -> tuple[IPAddress, str]:
    """client_address(host) and its canonical text, as the limiter and logs name it."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr, str(addr)


class AddressSet:
    """CIDRs merged into sorted, disjoint integer ranges, so a lookup is one bisect."""

    __slots__ = ("_v4_ends", "_v4_starts", "_v6_ends", "_v6_starts", "cidrs")

    def __init__(self, cidrs: Iterable[str]) -> None:
        nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        v4 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 4))
        v6 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 6))
        self.cidrs: tuple[str, ...] = tuple(str(n) for n in (*v4, *v6))
        self._v4_starts = [int(n.network_address) for n in v4]
        self._v4_ends = [int(n.broadcast_address) for n in v4]
        self._v6_starts = [int(n.network_address) for n in v6]
        self._v6_ends = [int(n.broadcast_address) for n in v6]

    def __contains__(self, addr: IPAddress) -> bool:
        if addr.version == 4:
            starts, ends = self._v4_starts, self._v4_ends
        else:
            starts, ends = self._v6_starts, self._v6_ends
        value = int(addr)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __bool__(self) -> bool:
        return bool(self._v4_starts or self._v6_starts)


class Everyone:
    """The policy when no IPAddressGroup is named."""

    __slots__ = ()
    cidrs: tuple[str, ...] = ("0.0.0.0/0", "::/0")

    def __contains__(self, addr: IPAddress) -> bool:
        return True


def policy(allow: Iterable[str] | None) -> AddressSet | Everyone:
    return Everyone() if allow is None else AddressSet(allow)
