"""SMTP, SMTPS and Submission: refusals in SMTP's words.

RFC 5321 §3.1: a server that refuses a client at connection time answers the greeting with
554 and then 503 to every command but QUIT. RFC 3463 gives the enhanced status codes; RFC 7504
the 521/556 alternatives that we do not use because 554 is what clients expect."""

from __future__ import annotations

from mailwarden.listener.protocols import base

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included.
COMMAND_LINE_LIMIT = 512
# Commands a refused client may send before the listener gives up on it.
REFUSAL_COMMAND_BUDGET = 20

OVER_CAPACITY = "421 4.7.0 {host} Error: too many connections, try again later\r\n"
DENIED_GREETING = (
    "554 5.7.1 {host} Access denied: your address is not allowed to use this service\r\n"
)
BAD_SEQUENCE = "503 5.5.1 Error: access denied, only QUIT is accepted\r\n"
LINE_TOO_LONG = "500 5.5.2 Error: line too long\r\n"
BYE = "221 2.0.0 Bye\r\n"
TOO_MANY_ERRORS = "421 4.7.0 {host} Error: too many errors\r\n"
UNAVAILABLE = "421 4.4.1 {host} Service temporarily unavailable, try again later\r\n"


class DeniedSession:
    """554 greeting, then 503 to anything but QUIT (RFC 5321 §3.1)."""

    __slots__ = ("_budget", "_host", "_lines")

    def __init__(self, host: str) -> None:
        self._host = host
        self._lines = base.LineBuffer(COMMAND_LINE_LIMIT)
        self._budget = REFUSAL_COMMAND_BUDGET

    def opening(self) -> base.Reply:
        return base.Reply(DENIED_GREETING.format(host=self._host).encode())

    def feed(self, data: bytes) -> base.Reply:
        out = bytearray()
        for line in self._lines.feed(data):
            if line is None:
                out += LINE_TOO_LONG.encode()
            elif line.strip().upper() == b"QUIT":
                return base.Reply(bytes(out) + BYE.encode(), close=True)
            else:
                out += BAD_SEQUENCE.encode()
            self._budget -= 1
            if self._budget <= 0:
                out += TOO_MANY_ERRORS.format(host=self._host).encode()
                return base.Reply(bytes(out), close=True)
        return base.Reply(bytes(out))


class SMTPReplies:
    def over_capacity(self, hostname: str) -> base.Conversation:
        return base.OneShot(OVER_CAPACITY.format(host=hostname).encode())

    def denied(self, hostname: str) -> base.Conversation:
        return DeniedSession(hostname)

    def unavailable(self, hostname: str) -> base.Conversation:
        return base.OneShot(UNAVAILABLE.format(host=hostname).encode())


REPLIES = SMTPReplies()
