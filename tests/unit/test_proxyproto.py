"""PROXY protocol v1/v2: what the listener reads from load balancers and writes to backends."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.listener import proxyproto

ports = st.integers(min_value=0, max_value=65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)


@given(src=v4, dst=v4, sport=ports, dport=ports, version=st.sampled_from(["v1", "v2"]))
def test_an_ipv4_header_built_for_a_backend_parses_back_to_the_same_addresses(
    src, dst, sport, dport, version
):
    header = proxyproto.build(version, (src, sport), (dst, dport))
    parsed = proxyproto.parse(header + b"EHLO after\r\n")
    assert parsed is not None
    addresses, used = parsed
    assert used == len(header)
    assert addresses.source == (src, sport)
    assert addresses.destination == (dst, dport)


@given(src=v6, dst=v6, sport=ports, dport=ports, version=st.sampled_from(["v1", "v2"]))
def test_an_ipv6_header_parses_back_to_the_same_addresses(src, dst, sport, dport, version):
    header = proxyproto.build(version, (src, sport), (dst, dport))
    parsed = proxyproto.parse(header)
    assert parsed is not None
    assert parsed[0].source == (src, sport)
    assert parsed[0].destination == (dst, dport)


@given(src=v4, version=st.sampled_from(["v1", "v2"]))
def test_an_ipv4_client_seen_through_a_dual_stack_socket_is_sent_as_ipv4(src, version):
    header = proxyproto.build(version, (f"::ffff:{src}", 1234), ("127.0.0.1", 25))
    parsed = proxyproto.parse(header)
    assert parsed is not None
    assert parsed[0].source == (src, 1234)


def test_a_mixed_family_pair_is_written_as_ipv6_in_v1():
    header = proxyproto.build_v1(("192.0.2.1", 1000), ("2001:db8::1", 25))
    assert header == b"PROXY TCP6 ::ffff:c000:201 2001:db8::1 1000 25\r\n"


def test_v1_is_written_exactly_as_the_specification_shows():
    assert proxyproto.build_v1(("192.0.2.7", 56324), ("198.51.100.1", 25)) == (
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"
    )


def test_v2_is_written_exactly_as_the_specification_shows():
    header = proxyproto.build_v2(("192.0.2.7", 56324), ("198.51.100.1", 25))
    assert header == (
        b"\r\n\r\n\x00\r\nQUIT\n"  # signature
        + b"\x21\x11\x00\x0c"  # version 2 PROXY, TCP over IPv4, 12 bytes
        + bytes([192, 0, 2, 7, 198, 51, 100, 1])
        + struct.pack("!HH", 56324, 25)
    )


@given(data=st.binary(max_size=120), cut=st.integers(min_value=0, max_value=120))
def test_any_prefix_of_a_valid_header_asks_for_more_and_garbage_never_crashes(data, cut):
    header = proxyproto.build_v2(("192.0.2.7", 1), ("192.0.2.8", 2))
    assert proxyproto.parse(header[: min(cut, len(header) - 1)]) is None
    try:
        proxyproto.parse(data)
    except proxyproto.ProxyError:
        pass


def test_a_v2_header_with_tlvs_is_consumed_whole():
    body = bytes([192, 0, 2, 7, 192, 0, 2, 8]) + struct.pack("!HH", 1, 2)
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(body + tlv)) + body + tlv
    parsed = proxyproto.parse(header + b"rest")
    assert parsed is not None
    assert parsed[1] == len(header)
    assert parsed[0].source == ("192.0.2.7", 1)


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"],
)
def test_v1_unknown_carries_no_address(header):
    assert proxyproto.parse(header) == (proxyproto.Addresses(None, None), len(header))


def test_v2_local_carries_no_address():
    header = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert proxyproto.parse(header) == (proxyproto.Addresses(None, None), 16)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n", "malformed PROXY v1 header"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n", "malformed PROXY v1 header"),
        (b"PROXY TCP4 1.2.3.400 1.2.3.5 1 2\r\n", "malformed PROXY v1 addresses"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "malformed PROXY v1 addresses"),
        (b"PROXY TCP6 1.2.3.4 1.2.3.5 1 2\r\n", "malformed PROXY v1 addresses"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 70000\r\n", "malformed PROXY v1 addresses"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.5 x 2\r\n", "malformed PROXY v1 addresses"),
        (b"PROXY " + b"1" * 120, "PROXY v1 line too long"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00", "unsupported PROXY version"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x00", "unsupported PROXY v2 command"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd", "unsupported or short PROXY v2"),
    ],
)
def test_a_malformed_header_is_refused_with_a_reason(header, why):
    with pytest.raises(proxyproto.ProxyError, match=why):
        proxyproto.parse(header)


def test_looks_like_header_recognises_the_start_of_either_version():
    assert proxyproto.looks_like_header(b"PRO")
    assert proxyproto.looks_like_header(b"\r\n\r\n")
    assert not proxyproto.looks_like_header(b"EHLO")
    assert not proxyproto.looks_like_header(b"")
