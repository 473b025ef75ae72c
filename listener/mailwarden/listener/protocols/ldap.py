"""LDAP and LDAPS refusals: a Notice of Disconnection (RFC 4511 §4.4.1), the unsolicited
ExtendedResponse with messageID 0 that tells a client the server is closing the session and
why, encoded in BER as RFC 4511 §5.1 asks (definite lengths, primitive strings).

LDAP is client-first, so the notice can be sent as soon as the session is decided: a client
that has not yet written its bind request reads the notice in place of the bind response."""

from __future__ import annotations

import enum

from mailwarden.listener.protocols import base

NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"


class ResultCode(enum.IntEnum):
    """RFC 4511 §4.1.9 result codes a listener has reason to send."""

    BUSY = 51
    UNAVAILABLE = 52
    UNWILLING_TO_PERFORM = 53


OVER_CAPACITY = (ResultCode.BUSY, "Too many connections, try again later")
DENIED = (
    ResultCode.UNWILLING_TO_PERFORM,
    "Access denied: your address is not allowed to use this service",
)
UNAVAILABLE = (ResultCode.UNAVAILABLE, "Service temporarily unavailable, try again later")
RATE_LIMITED = (
    ResultCode.BUSY,
    "Rate limited: too many connections from your address, try again later",
)
BANNED = (ResultCode.UNAVAILABLE, "Banned: too many failures from your address, try again later")

# BER identifiers (X.690 §8.1.2): universal and RFC 4511 application/context tags.
_SEQUENCE = 0x30
_INTEGER = 0x02
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_EXTENDED_RESPONSE = 0x78  # [APPLICATION 24], constructed
_RESPONSE_NAME = 0x8A  # [10], primitive


def _length(n: int) -> bytes:
    """Definite length: short form below 128, long form above (X.690 §8.1.3)."""
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def notice_of_disconnection(code: ResultCode, message: str) -> bytes:
    """LDAPMessage { messageID 0, ExtendedResponse { resultCode, matchedDN "",
    diagnosticMessage, responseName 1.3.6.1.4.1.1466.20036 } }, with no responseValue."""
    response = (
        _tlv(_ENUMERATED, bytes([int(code)]))
        + _tlv(_OCTET_STRING, b"")
        + _tlv(_OCTET_STRING, message.encode())
        + _tlv(_RESPONSE_NAME, NOTICE_OF_DISCONNECTION.encode())
    )
    return _tlv(_SEQUENCE, _tlv(_INTEGER, b"\x00") + _tlv(_EXTENDED_RESPONSE, response))


class LDAPReplies:
    def over_capacity(self, hostname: str) -> base.Conversation:
        return base.OneShot(notice_of_disconnection(*OVER_CAPACITY))

    def denied(self, hostname: str) -> base.Conversation:
        return base.OneShot(notice_of_disconnection(*DENIED))

    def unavailable(self, hostname: str) -> base.Conversation:
        return base.OneShot(notice_of_disconnection(*UNAVAILABLE))

    def rate_limited(self, hostname: str, retry_after: int) -> base.Conversation:
        return _RATE_LIMITED

    def banned(self, hostname: str, retry_after: int) -> base.Conversation:
        return _BANNED


_RATE_LIMITED = base.OneShot(notice_of_disconnection(*RATE_LIMITED))
_BANNED = base.OneShot(notice_of_disconnection(*BANNED))


REPLIES = LDAPReplies()
