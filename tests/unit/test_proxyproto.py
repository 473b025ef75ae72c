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


def test_signature_tells_a_header_from_a_prefix_of_one_and_from_anything_else():
    assert proxyproto.signature(b"") is proxyproto.Signature.PARTIAL
    assert proxyproto.signature(b"PRO") is proxyproto.Signature.PARTIAL
    assert proxyproto.signature(b"\r\n\r\n") is proxyproto.Signature.PARTIAL
    assert proxyproto.signature(b"PROXY TCP4") is proxyproto.Signature.V1
    assert proxyproto.signature(proxyproto.V2_SIGNATURE + b"!") is proxyproto.Signature.V2
    assert proxyproto.signature(b"EHLO") is proxyproto.Signature.NONE
    assert proxyproto.signature(b"PROPFIND / HTTP/1.1") is proxyproto.Signature.NONE


V1_GOOD = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"


@pytest.mark.parametrize(
    "header",
    [
        # Section 2.1: ports are decimal without heading zeroes, so no sign, no `_`.
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1_000 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 +25 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 \xd9\xa1 25\r\n",
        # IPv4 without heading zeroes; IPv6 without a zone id.
        b"PROXY TCP4 192.0.2.07 198.51.100.1 1 25\r\n",
        b"PROXY TCP6 fe80::1%eth0 fe80::2 1 25\r\n",
        # Exactly one space between fields, an exact CRLF.
        b"PROXY TCP4  192.0.2.7 198.51.100.1 1 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25 \r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\r\r\n",
        b"PROXY TCP4 192.0.2.7\r198.51.100.1 1 25\r\n",
        b"PROXY UNKNOWN\n",
    ],
)
def test_v1_is_refused_unless_it_is_exactly_what_the_specification_spells(header):
    with pytest.raises(proxyproto.ProxyError):
        proxyproto.parse(header)


def test_v1_refuses_a_lone_line_feed_before_the_whole_line_has_come():
    with pytest.raises(proxyproto.ProxyError):
        proxyproto.parse(b"PROXY TCP4 1.2.3.4\n")


def test_v1_embedded_ipv4_in_ipv6_is_taken_as_inet_pton_takes_it():
    parsed = proxyproto.parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 25\r\n")
    assert parsed is not None
    assert parsed[0].source == ("::ffff:c000:207", 1)


@pytest.mark.parametrize("cut", range(1, len(V1_GOOD)))
def test_v1_split_anywhere_is_read_whole_by_the_header_reader(cut):
    reader = proxyproto.HeaderReader()
    assert reader.feed(V1_GOOD[:cut]) is None
    header = reader.feed(V1_GOOD[cut:] + b"EHLO x\r\n")
    assert header is not None
    assert header.length == len(V1_GOOD)
    assert header.addresses.source == ("192.0.2.7", 56324)
    assert reader.rest == b"EHLO x\r\n"


def _v2_with_tlvs(size: int) -> bytes:
    """A legal v2 header of `size` bytes: TCP over IPv4 and NOOP TLVs (section 2.2.7)."""
    body = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 40000, 25)
    room = size - proxyproto.V2_HEADER - len(body)
    tlvs = b""
    while room:
        n = min(room - 3, 250)
        tlvs += b"\x04" + struct.pack("!H", n) + b"\0" * n
        room -= 3 + n
    return proxyproto.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body + tlvs)) + body + tlvs


@pytest.mark.parametrize("cut", [1, 6, 12, 15, 16, 17, 300, 630])
def test_a_legal_631_byte_v2_header_in_two_segments_is_accepted(cut):
    header = _v2_with_tlvs(631)
    assert len(header) == 631
    reader = proxyproto.HeaderReader()
    assert reader.feed(header[:cut]) is None
    parsed = reader.feed(header[cut:] + b"payload")
    assert parsed is not None
    assert (parsed.length, parsed.version) == (631, 2)
    assert parsed.addresses.source == ("192.0.2.7", 40000)
    assert reader.rest == b"payload"


def test_a_v2_header_longer_than_the_bound_is_refused_as_soon_as_its_length_is_read():
    fixed = proxyproto.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 65535)
    with pytest.raises(proxyproto.ProxyError, match="longer than"):
        proxyproto.HeaderReader().feed(fixed)


@pytest.mark.parametrize(
    "fam",
    [0x13, 0x41, 0xFF, 0x01],
)
def test_v2_families_the_specification_does_not_define_are_refused(fam):
    header = proxyproto.V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", 12) + b"\0" * 12
    with pytest.raises(proxyproto.ProxyError):
        proxyproto.parse(header)


def test_v2_tlvs_that_do_not_tile_the_block_are_refused():
    body = bytes(8) + struct.pack("!HH", 1, 2) + b"\x04\x00\x09abc"
    header = proxyproto.V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    with pytest.raises(proxyproto.ProxyError, match="TLV"):
        proxyproto.parse(header)


def test_the_reader_refuses_bytes_that_are_no_header_at_once():
    with pytest.raises(proxyproto.ProxyError, match="no PROXY"):
        proxyproto.HeaderReader().feed(b"EHLO x\r\n")
