"""PROXY protocol v1 and v2 (HAProxy's specification): reading it from a trusted load
balancer and writing it to a backend. Pure functions over bytes."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the specification's longest v1 line, CRLF included
V2_HEADER = 16


class ProxyError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Addresses:
    """The client as the load balancer saw it. None for LOCAL/UNKNOWN (health checks)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def looks_like_header(data: bytes) -> bool:
    """True when data starts (or could start) a PROXY header; used to refuse headers from
    peers that are not trusted to send one."""
    n = min(len(data), len(V2_SIGNATURE))
    if n == 0:
        return False
    return data[:n] == V2_SIGNATURE[:n] or data[: min(n, 6)] == V1_PREFIX[: min(n, 6)]


def parse(data: bytes) -> tuple[Addresses, int] | None:
    """Parse a header at the start of data. Returns (addresses, bytes consumed), or None
    when more bytes are needed; raises ProxyError for anything else."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data):
        return None
    raise ProxyError("no PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[Addresses, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 line too long")
        return None
    parts = data[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return Addresses(None, None), end + 2
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("malformed PROXY v1 header")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
        sport, dport = int(parts[4]), int(parts[5])
    except (ValueError, UnicodeDecodeError):
        raise ProxyError("malformed PROXY v1 addresses") from None
    want = 4 if parts[1] == b"TCP4" else 6
    if (
        src.version != want
        or dst.version != want
        or not (0 <= sport <= 65535 and 0 <= dport <= 65535)
    ):
        raise ProxyError("malformed PROXY v1 addresses")
    return Addresses((str(src), sport), (str(dst), dport)), end + 2


def _parse_v2(data: bytes) -> tuple[Addresses, int] | None:
    if len(data) < V2_HEADER:
        return None
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyError("unsupported PROXY version")
    total = V2_HEADER + length
    if len(data) < total:
        return None
    command = ver_cmd & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own connection
        return Addresses(None, None), total
    if command != 0x1:
        raise ProxyError("unsupported PROXY v2 command")
    family, proto = fam >> 4, fam & 0x0F
    body = data[V2_HEADER:total]
    if proto != 0x1:  # only STREAM makes sense in front of a mail service
        return Addresses(None, None), total
    if family == 0x1 and length >= 12:
        s, d, sp, dp = struct.unpack_from("!4s4sHH", body)
        return Addresses(
            (socket.inet_ntop(socket.AF_INET, s), sp), (socket.inet_ntop(socket.AF_INET, d), dp)
        ), total
    if family == 0x2 and length >= 36:
        s, d, sp, dp = struct.unpack_from("!16s16sHH", body)
        return Addresses(
            (socket.inet_ntop(socket.AF_INET6, s), sp),
            (socket.inet_ntop(socket.AF_INET6, d), dp),
        ), total
    if family == 0x0:
        return Addresses(None, None), total
    raise ProxyError("unsupported or short PROXY v2 address block")


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = _plain(source[0])
    dst = _plain(destination[0])
    if src.version != dst.version:
        # A mixed pair cannot be said in v1; map the IPv4 side into IPv6.
        src, dst = _as_v6(src), _as_v6(dst)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = _plain(source[0])
    dst = _plain(destination[0])
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


def _plain(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _as_v6(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(addr, ipaddress.IPv6Address):
        return addr
    return ipaddress.IPv6Address("::ffff:" + str(addr))
