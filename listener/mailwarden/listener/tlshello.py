"""Reading a client's TLS ClientHello before OpenSSL does, for one answer OpenSSL cannot get
to the client through asyncio's or uvloop's TLS layer (issue 12, point 9): the
`protocol_version` alert for a client that offers only TLS 1.0 or 1.1. Pure: bytes in,
verdict out. (RFC 8446 §4.1.2 and §4.2.1 for the ClientHello and supported_versions, RFC
5246 §7.4.1.2 for the layout shared with TLS 1.0-1.2.)"""

from __future__ import annotations

import enum


class Hello(enum.Enum):
    """What the first bytes of an implicit-TLS connection say before OpenSSL sees them."""

    NEED_MORE = "need more"
    PASS = "pass"  # a ClientHello OpenSSL can take (or not one at all: OpenSSL says so)


# RFC 8446 §6 / RFC 5246 §7.2: alert level fatal (2), protocol_version (70).
_FATAL_PROTOCOL_VERSION = b"\x02\x46"
_TLS12 = 0x0303
_HANDSHAKE, _CLIENT_HELLO, _SUPPORTED_VERSIONS = 0x16, 0x01, 0x002B


def screen(data: bytes | bytearray) -> Hello | bytes:
    """A client that offers only TLS 1.0 or 1.1 gets a `protocol_version` alert, as RFC 8446
    §4.2.1 asks ("If the supported_versions extension is absent and the server only
    supports versions greater than ClientHello.legacy_version, the server MUST abort the
    handshake with a protocol_version alert"). OpenSSL writes that alert, but asyncio's and
    uvloop's TLS layers drop what OpenSSL has to send when a handshake fails, so the client
    saw a bare close. Returns the alert record to send, or whether to wait or let OpenSSL
    have the bytes. Reads at most one TLS record; anything it cannot parse passes."""
    if not data or data[0] != _HANDSHAKE:
        return Hello.PASS
    if len(data) < 11:
        return Hello.NEED_MORE
    record_length = int.from_bytes(data[3:5], "big")
    if data[5] != _CLIENT_HELLO:
        return Hello.PASS
    legacy_version = int.from_bytes(data[9:11], "big")
    if legacy_version >= _TLS12:
        return Hello.PASS
    hello_length = int.from_bytes(data[6:9], "big")
    if 4 + hello_length > record_length:
        return Hello.PASS  # a ClientHello over several records: leave it to OpenSSL
    if len(data) < 9 + hello_length:
        return Hello.NEED_MORE
    hello = bytes(data[9 : 9 + hello_length])
    if _offers_tls12_or_later(hello):
        return Hello.PASS
    version = max(0x0300, min(legacy_version, int.from_bytes(data[1:3], "big")))
    return bytes([0x15]) + version.to_bytes(2, "big") + b"\x00\x02" + _FATAL_PROTOCOL_VERSION


def _offers_tls12_or_later(hello: bytes) -> bool:
    """Whether a ClientHello body lists TLS 1.2 or later in supported_versions (True too
    where the body cannot be read: OpenSSL then decides)."""
    try:
        at = 2 + 32  # legacy_version, random
        at += 1 + hello[at]  # legacy_session_id
        at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher_suites
        at += 1 + hello[at]  # legacy_compression_methods
        if at >= len(hello):
            return False  # no extensions at all
        end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
        at += 2
        while at + 4 <= min(end, len(hello)):
            kind = int.from_bytes(hello[at : at + 2], "big")
            size = int.from_bytes(hello[at + 2 : at + 4], "big")
            body = hello[at + 4 : at + 4 + size]
            if kind == _SUPPORTED_VERSIONS and body:
                versions = body[1 : 1 + body[0]]
                return any(
                    int.from_bytes(versions[i : i + 2], "big") >= _TLS12
                    for i in range(0, len(versions) - 1, 2)
                )
            at += 4 + size
    except IndexError:
        return True
    return False
