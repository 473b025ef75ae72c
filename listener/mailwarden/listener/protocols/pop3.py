"""POP3 and POP3S refusals: the greeting is -ERR with an RFC 3206 response code
(RFC 2449 extended response codes): SYS/TEMP for a passing condition, SYS/PERM for one the
client cannot fix by retrying."""

from __future__ import annotations

from mailwarden.listener.protocols import base

OVER_CAPACITY = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
DENIED = b"-ERR [SYS/PERM] Access denied: your address is not allowed to use this service\r\n"
UNAVAILABLE = b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"


REPLIES = base.FixedReplies(over_capacity=OVER_CAPACITY, denied=DENIED, unavailable=UNAVAILABLE)
