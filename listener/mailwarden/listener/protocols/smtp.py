"""SMTP, SMTPS and Submission: refusals in SMTP's words.

RFC 5321 §3.1: a server that refuses a client at connection time answers the greeting with
554 and then 503 to every command but QUIT. RFC 3463 gives the enhanced status codes; RFC 7504
the 521/556 alternatives that we do not use because 554 is what clients expect."""

from __future__ import annotations

from mailwarden.listener.protocols import authwatch, base

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
# RFC 3463 §3.8: X.7.0, other security or policy status (Postfix's anvil and postscreen say
# 421 4.7.0 too).
RATE_LIMITED = (
    "421 4.7.0 {host} Error: rate limited: too many connections from your address, "
    "try again later\r\n"
)
BANNED = "421 4.7.0 {host} Error: banned: too many failures from your address, try again later\r\n"


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

    def rate_limited(self, hostname: str, retry_after: int) -> base.Conversation:
        return base.OneShot(RATE_LIMITED.format(host=hostname).encode())

    def banned(self, hostname: str, retry_after: int) -> base.Conversation:
        return base.OneShot(BANNED.format(host=hostname).encode())


REPLIES = SMTPReplies()


class AuthWatch(authwatch.LineWatch):
    """Failed SMTP AUTH (RFC 4954 §6: 535 5.7.8 authentication credentials invalid) in the
    server's replies. Only the server's replies are read: in SMTP they are all status lines,
    so message content can never look like one. Off after 235 (authenticated), after a
    second 220 (STARTTLS accepted: what follows is TLS the listener does not see) and after
    354 (the client sends mail rather than logging in)."""

    __slots__ = ("_greeted",)

    def __init__(self, budget: int = authwatch.BUDGET) -> None:
        super().__init__(budget)
        self._greeted = False

    def from_client(self, data: bytes) -> None:
        # Only the budget: commands tell nothing the replies do not.
        self._spend(len(data))

    def server_line(self, line: bytes) -> int:
        if line[3:4] == b"-":  # a line of a multi-line reply; its last line decides
            return 0
        code = line[:3]
        if not self._greeted:
            self._greeted = True
            return 0
        if code == b"535":
            return 1
        if code in (b"235", b"220", b"354"):
            self.done = True
        return 0
