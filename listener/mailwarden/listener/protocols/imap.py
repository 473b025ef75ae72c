"""IMAP and IMAPS refusals: an untagged BYE greeting (RFC 9051 §7.1.5), with the RFC 5530
response code UNAVAILABLE when the condition is temporary."""

from __future__ import annotations

from mailwarden.listener.protocols import authwatch, base

OVER_CAPACITY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
DENIED = b"* BYE Access denied: your address is not allowed to use this service\r\n"
UNAVAILABLE = b"* BYE [UNAVAILABLE] Service temporarily unavailable, try again later\r\n"
RATE_LIMITED = (
    b"* BYE [UNAVAILABLE] Rate limited: too many connections from your address, try again later\r\n"
)
BANNED = b"* BYE [UNAVAILABLE] Banned: too many failures from your address, try again later\r\n"


REPLIES = base.FixedReplies(
    over_capacity=OVER_CAPACITY,
    denied=DENIED,
    unavailable=UNAVAILABLE,
    rate_limited=RATE_LIMITED,
    banned=BANNED,
)


# Commands whose tagged NO is a failed login (RFC 9051 §6.2.2, §6.2.3).
LOGIN_COMMANDS = frozenset({b"LOGIN", b"AUTHENTICATE"})
# Tags remembered while waiting for their completion.
_TAG_LIMIT = 16


class AuthWatch(authwatch.LineWatch):
    """Failed IMAP logins: a tagged NO completing LOGIN or AUTHENTICATE. Tags pair commands
    with their completions, so pipelining and untagged data in between do not matter. Off
    after a successful login (tagged OK, or a PREAUTH greeting), after OK to STARTTLS (TLS
    the listener does not see), or when the budget is spent."""

    __slots__ = ("_tags",)

    def __init__(self, budget: int = authwatch.BUDGET) -> None:
        super().__init__(budget)
        self._tags: dict[bytes, bytes] = {}

    def client_line(self, line: bytes) -> None:
        # tag SP command [SP arguments]; a SASL answer or a literal's text has no such shape
        # and is ignored.
        words = line.split(None, 2)
        if len(words) < 2:
            return
        verb = words[1].upper()
        if (verb in LOGIN_COMMANDS or verb == b"STARTTLS") and len(self._tags) < _TAG_LIMIT:
            self._tags[words[0]] = verb

    def server_line(self, line: bytes) -> int:
        if line.startswith(b"*"):
            if line[:10].upper() == b"* PREAUTH ":
                self.done = True
            return 0
        words = line.split(None, 2)
        if len(words) < 2:
            return 0
        verb = self._tags.pop(words[0], None)
        if verb is None:
            return 0
        status = words[1].upper()
        if status == b"OK":
            self.done = True  # logged in, or TLS from here on
        elif status == b"NO" and verb in LOGIN_COMMANDS:
            return 1
        return 0
