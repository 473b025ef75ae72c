"""Who may connect: CIDR sets, IPv4 seen through IPv6 sockets, the open policy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.listener import acl


def test_an_ipv4_mapped_ipv6_client_is_judged_as_its_ipv4_address():
    allowed = acl.AddressSet(["192.0.2.0/24"])
    assert acl.client_address("::ffff:192.0.2.9") == ipaddress.IPv4Address("192.0.2.9")
    assert acl.client_address("::ffff:192.0.2.9") in allowed
    assert acl.client_address("::ffff:198.51.100.9") not in allowed


def test_a_scoped_ipv6_address_drops_its_zone():
    assert acl.client_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")


def test_ipv4_and_ipv6_rules_do_not_leak_into_each_other():
    allowed = acl.AddressSet(["0.0.0.0/0"])
    assert ipaddress.ip_address("2001:db8::1") not in allowed
    allowed6 = acl.AddressSet(["::/0"])
    assert ipaddress.ip_address("192.0.2.1") not in allowed6


def test_an_empty_set_admits_no_one_and_no_rule_admits_everyone():
    assert ipaddress.ip_address("127.0.0.1") not in acl.policy([])
    assert not acl.policy([])
    assert ipaddress.ip_address("127.0.0.1") in acl.policy(None)
    assert ipaddress.ip_address("::1") in acl.policy(None)


def test_overlapping_networks_are_merged():
    s = acl.AddressSet(
        ["192.0.2.0/25", "192.0.2.128/25", "192.0.2.7/32", "2001:db8::/33", "2001:db8:8000::/33"]
    )
    assert s.cidrs == ("192.0.2.0/24", "2001:db8::/32")


@pytest.mark.parametrize("bad", ["192.0.2.300", "not-an-address", ""])
def test_an_unusable_client_address_raises_value_error(bad):
    with pytest.raises(ValueError):
        acl.client_address(bad)


networks = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).flatmap(
    lambda a: st.integers(min_value=0, max_value=a.max_prefixlen).map(
        lambda p: ipaddress.ip_network(f"{a}/{p}", strict=False)
    )
)


@given(
    nets=st.lists(networks, max_size=8),
    probes=st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), max_size=20),
)
def test_membership_is_exactly_membership_in_one_of_the_networks(nets, probes):
    s = acl.AddressSet(str(n) for n in nets)
    for n in nets:  # the edges of each network
        probes += [n.network_address, n.broadcast_address]
    for addr in probes:
        assert (addr in s) == any(addr in n for n in nets if n.version == addr.version)
