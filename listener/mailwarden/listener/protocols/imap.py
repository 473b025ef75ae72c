"""IMAP and IMAPS refusals: an untagged BYE greeting (RFC 9051 §7.1.5), with the RFC 5530
response code UNAVAILABLE when the condition is temporary."""

from __future__ import annotations

from mailwarden.listener.protocols import base

OVER_CAPACITY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
DENIED = b"* BYE Access denied: your address is not allowed to use this service\r\n"
UNAVAILABLE = b"* BYE [UNAVAILABLE] Service temporarily unavailable, try again later\r\n"


REPLIES = base.FixedReplies(over_capacity=OVER_CAPACITY, denied=DENIED, unavailable=UNAVAILABLE)
