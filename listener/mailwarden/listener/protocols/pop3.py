"""POP3 and POP3S refusals: the greeting is -ERR with an RFC 3206 response code
(RFC 2449 extended response codes): SYS/TEMP for a passing condition, SYS/PERM for one the
client cannot fix by retrying."""

from __future__ import annotations

from mailwarden.listener.protocols import authwatch, base

OVER_CAPACITY = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
DENIED = b"-ERR [SYS/PERM] Access denied: your address is not allowed to use this service\r\n"
UNAVAILABLE = b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"
RATE_LIMITED = (
    b"-ERR [SYS/TEMP] Rate limited: too many connections from your address, try again later\r\n"
)
BANNED = b"-ERR [SYS/TEMP] Banned: too many failures from your address, try again later\r\n"


REPLIES = base.FixedReplies(
    over_capacity=OVER_CAPACITY,
    denied=DENIED,
    unavailable=UNAVAILABLE,
    rate_limited=RATE_LIMITED,
    banned=BANNED,
)


# Commands whose -ERR is a failed login (RFC 1939 §7, RFC 5034 §4).
LOGIN_COMMANDS = frozenset({b"USER", b"PASS", b"APOP", b"AUTH"})
# What the first reply answers.
_GREETING = b"(greeting)"
# Commands remembered while waiting for their replies (pipelining, RFC 2449 §6.6).
_IN_FLIGHT_LIMIT = 64


class AuthWatch(authwatch.LineWatch):
    """Failed POP3 logins: -ERR in reply to USER, PASS, APOP or AUTH. Replies come in the
    order of the commands, so the watcher pairs them; a SASL exchange (`+ ` challenges, the
    client's answers) belongs to its AUTH. Off after a successful login (+OK to PASS, APOP
    or AUTH), after +OK to STLS (TLS the listener does not see), or when the budget is
    spent."""

    __slots__ = ("_body", "_in_flight", "_sasl")

    def __init__(self, budget: int = authwatch.BUDGET) -> None:
        super().__init__(budget)
        self._in_flight: list[tuple[bytes, bool]] = [(_GREETING, False)]
        self._body = False  # inside a multi-line reply
        self._sasl = False  # the client's next line answers a SASL challenge

    def client_line(self, line: bytes) -> None:
        if self._sasl:
            self._sasl = False
            return
        if len(self._in_flight) < _IN_FLIGHT_LIMIT:
            self._in_flight.append(authwatch.verb_of(line))

    def server_line(self, line: bytes) -> int:
        if self._body:
            if line.rstrip(b"\r\n") == b".":
                self._body = False
            return 0
        if line.startswith(b"+ ") or line.rstrip(b"\r\n") == b"+":
            self._sasl = True  # a challenge: the AUTH command stays in flight
            return 0
        if not self._in_flight:
            return 0
        verb, args = self._in_flight.pop(0)
        if line[:3].upper() == b"+OK":
            if verb in (b"PASS", b"APOP", b"STLS") or (verb == b"AUTH" and args):
                self.done = True  # logged in, or TLS from here on
            elif verb in (b"CAPA", b"AUTH"):
                self._body = True  # a capability or mechanism list follows
            return 0
        if line[:4].upper() == b"-ERR":
            self._sasl = False
            return 1 if verb in LOGIN_COMMANDS else 0
        return 0
