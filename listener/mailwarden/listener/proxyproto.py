"""PROXY protocol v1 and v2, as HAProxy's specification defines them
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt): reading it from a trusted load
balancer and writing it to a backend. Pure functions over bytes.

One strict parser serves every caller. `parse` looks at the bytes received so far and says
"need more" (None), "here is a header of N bytes", or raises ProxyError; `HeaderReader`
accumulates TCP segments for it within a bounded buffer, and `signature` tells whether bytes
from a peer that may not send a header start like one. Every call does work bounded by the
maximum header size, so re-parsing after each segment costs no more than parsing once."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import socket
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
# The specification's longest v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6
# addresses and ports).
V1_MAX = 107
V2_HEADER = 16
# A v2 header may announce up to 65,535 bytes of addresses and TLVs. Real balancers send a
# few hundred (HAProxy's SSL and authority TLVs, AWS's VPC endpoint id); HAProxy itself reads
# a header into one 16 KiB buffer. Past this the header is refused as soon as its length
# field is read, so a trusted peer cannot make a session hold 64 KiB for it.
V2_MAX = 16 * 1024
MAX_HEADER = V2_MAX


class ProxyError(ValueError):
    pass


class Signature(enum.Enum):
    """What the first bytes of a connection say about a PROXY header."""

    NONE = "none"  # not the start of a PROXY header
    PARTIAL = "partial"  # a strict prefix of a signature: more bytes decide
    V1 = "v1"
    V2 = "v2"


@dataclasses.dataclass(frozen=True, slots=True)
class Addresses:
    """The client as the load balancer saw it. None for LOCAL/UNKNOWN (health checks)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """A complete header: what it says and how many bytes it took (the rest is payload)."""

    addresses: Addresses
    length: int
    version: int


def signature(data: bytes | bytearray) -> Signature:
    """Whether data starts with a PROXY signature (v1 "PROXY ", v2's 12 bytes), could still
    become one, or cannot. Looks at no more than 12 bytes."""
    head = bytes(data[: len(V2_SIGNATURE)])
    if head.startswith(V1_PREFIX):
        return Signature.V1
    if head == V2_SIGNATURE:
        return Signature.V2
    if V1_PREFIX.startswith(head) or V2_SIGNATURE.startswith(head):
        return Signature.PARTIAL
    return Signature.NONE


def parse_header(data: bytes | bytearray) -> Header | None:
    """Parse a header at the start of data: None when more bytes are needed, the header
    when it is complete; ProxyError for anything the specification does not allow."""
    kind = signature(data)
    if kind is Signature.V2:
        return _parse_v2(data)
    if kind is Signature.V1:
        return _parse_v1(data)
    if kind is Signature.PARTIAL:
        return None
    raise ProxyError("no PROXY protocol header")


def parse(data: bytes | bytearray) -> tuple[Addresses, int] | None:
    """`parse_header` as a pair (addresses, bytes consumed)."""
    header = parse_header(data)
    return None if header is None else (header.addresses, header.length)


class HeaderReader:
    """Accumulates the segments a header arrives in. `feed` returns the header once it is
    complete (and keeps what followed it in `rest`), None while more is needed, and raises
    ProxyError for a malformed or over-long header. Never holds more than MAX_HEADER bytes
    plus one segment; the time allowed is the caller's (a total, not per segment)."""

    __slots__ = ("_buf", "rest")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.rest = b""

    def feed(self, data: bytes) -> Header | None:
        self._buf += data
        header = parse_header(self._buf)
        if header is None:
            return None
        self.rest = bytes(self._buf[header.length :])
        self._buf = bytearray()
        return header

    @property
    def buffered(self) -> int:
        return len(self._buf)


# v1 fields, as section 2.1 spells them: decimal numbers without heading zeroes (so no sign,
# no `_`, no octal look-alikes), IPv4 as four such numbers of at most 255, IPv6 as hex
# groups and colons (an embedded dotted quad allowed, as inet_pton takes it; no zone id).
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_IPV4 = re.compile(
    rb"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
# Bytes a v1 line may hold before its CRLF: printable US-ASCII and the spaces between fields.
_V1_TEXT = re.compile(rb"[\x20-\x7e]*")


def _parse_v1(data: bytes | bytearray) -> Header | None:
    window = bytes(data[:V1_MAX])
    end = window.find(b"\r\n")
    line = window if end < 0 else window[:end]
    # Anything but printable text before the CRLF (a lone CR or LF, a NUL, a byte >= 0x80)
    # can never become a valid line: refuse now rather than when 107 bytes have come.
    if _V1_TEXT.fullmatch(line if end >= 0 else line.rstrip(b"\r")) is None or (
        end < 0 and b"\r" in line[:-1]
    ):
        raise ProxyError("malformed PROXY v1 header")
    if end < 0:
        if len(window) >= V1_MAX:
            raise ProxyError("PROXY v1 line too long")
        return None
    length = end + 2
    parts = line.split(b" ")
    if parts[1] == b"UNKNOWN":
        # The receiver must ignore whatever follows UNKNOWN before the CRLF.
        return Header(Addresses(None, None), length, 1)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("malformed PROXY v1 header")
    _, family, src_text, dst_text, sport_text, dport_text = parts
    address = _V1_IPV4 if family == b"TCP4" else _V1_IPV6
    if not (
        address.fullmatch(src_text)
        and address.fullmatch(dst_text)
        and _V1_PORT.fullmatch(sport_text)
        and _V1_PORT.fullmatch(dport_text)
    ):
        raise ProxyError("malformed PROXY v1 addresses")
    try:
        src = ipaddress.ip_address(src_text.decode("ascii"))
        dst = ipaddress.ip_address(dst_text.decode("ascii"))
    except ValueError:
        raise ProxyError("malformed PROXY v1 addresses") from None
    sport, dport = int(sport_text), int(dport_text)
    want = 4 if family == b"TCP4" else 6
    if src.version != want or dst.version != want or sport > 65535 or dport > 65535:
        raise ProxyError("malformed PROXY v1 addresses")
    return Header(Addresses((str(src), sport), (str(dst), dport)), length, 1)


# Section 2.2: the address family and transport byte. Only these combinations exist; any
# other must be refused. TCP over IPv4/IPv6 carries the client; the others (UDP, UNIX, UNSPEC)
# fall back to the connection's own addresses, as the specification allows.
_V2_FAMILIES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_V2_TLV = 3  # type, length (2 bytes)


def _parse_v2(data: bytes | bytearray) -> Header | None:
    if len(data) < V2_HEADER:
        return None
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyError("unsupported PROXY version")
    command = ver_cmd & 0x0F
    if command not in (0x0, 0x1):
        raise ProxyError("unsupported PROXY v2 command")
    total = V2_HEADER + length
    if total > V2_MAX:
        raise ProxyError(f"PROXY v2 header longer than {V2_MAX} bytes")
    if len(data) < total:
        return None
    if command == 0x0:
        # LOCAL: the balancer's own connection (a health check); its block is skipped
        # whatever it holds.
        return Header(Addresses(None, None), total, 2)
    need = _V2_FAMILIES.get(fam)
    if need is None or length < need:
        raise ProxyError("unsupported or short PROXY v2 address block")
    body = bytes(data[V2_HEADER:total])
    _check_tlvs(body[need:])
    if fam == 0x11:
        s, d, sp, dp = struct.unpack_from("!4s4sHH", body)
        return Header(
            Addresses(
                (socket.inet_ntop(socket.AF_INET, s), sp),
                (socket.inet_ntop(socket.AF_INET, d), dp),
            ),
            total,
            2,
        )
    if fam == 0x21:
        s, d, sp, dp = struct.unpack_from("!16s16sHH", body)
        return Header(
            Addresses(
                (socket.inet_ntop(socket.AF_INET6, s), sp),
                (socket.inet_ntop(socket.AF_INET6, d), dp),
            ),
            total,
            2,
        )
    return Header(Addresses(None, None), total, 2)


def _check_tlvs(tlvs: bytes) -> None:
    """The bytes after the address block are TLVs (section 2.2.7); they must tile it
    exactly. Their contents are not needed here and are skipped."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < _V2_TLV:
            raise ProxyError("malformed PROXY v2 TLV")
        (size,) = struct.unpack_from("!H", tlvs, at + 1)
        at += _V2_TLV + size
        if at > len(tlvs):
            raise ProxyError("malformed PROXY v2 TLV")


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = _ip(source[0])
    dst = _ip(destination[0])
    if src.version != dst.version:
        # A mixed pair cannot be said in v1; map the IPv4 side into IPv6.
        src, dst = _as_v6(src), _as_v6(dst)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = _ip(source[0])
    dst = _ip(destination[0])
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    if src.version == 4:
        body = struct.pack("!4s4sHH", src.packed, dst.packed, source[1], destination[1])
        fam = 0x11
    else:
        body = struct.pack("!16s16sHH", src.packed, dst.packed, source[1], destination[1])
        fam = 0x21
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(body)) + body


def build(version: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    return build_v2(source, destination) if version == "v2" else build_v1(source, destination)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address of `host` without a zone index; an IPv4-mapped IPv6 address as IPv4."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _as_v6(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(addr, ipaddress.IPv6Address):
        return addr
    return ipaddress.IPv6Address("::ffff:" + str(addr))
