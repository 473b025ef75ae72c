"""NNTP and NNTPS: refusals (RFC 3977 §5.1.1: 400 service temporarily unavailable, 502
service permanently unavailable, then close) and the reader gate that keeps articles from
unauthenticated readers when anonymous access is off (RFC 4643: 480 until AUTHINFO
succeeds)."""

from __future__ import annotations

import functools
import re

from mailwarden.listener.protocols import base

# RFC 3977 §3.1: command lines are at most 512 octets, CRLF included.
COMMAND_LINE_LIMIT = 512
# A response line from the backend; generous, only the status code is read from it.
RESPONSE_LINE_LIMIT = 4096

OVER_CAPACITY = b"400 Too many connections, try again later\r\n"
DENIED = b"502 Access denied: your address is not allowed to use this service\r\n"
UNAVAILABLE = b"400 Service temporarily unavailable, try again later\r\n"
AUTH_REQUIRED = b"480 Authentication required\r\n"
LINE_TOO_LONG = b"501 Line too long\r\n"
# RFC 4642 §2.2.2: go ahead with TLS; cannot start TLS; TLS is already on.
STARTTLS_GO = b"382 Continue with TLS negotiation\r\n"
STARTTLS_UNAVAILABLE = b"580 Can not initiate TLS negotiation\r\n"
STARTTLS_ALREADY = b"502 TLS is already active\r\n"
STARTTLS_CAPABILITY = b"STARTTLS\r\n"
# A capability list held back to say whether STARTTLS is on offer; longer ones pass unchanged.
CAPABILITIES_LIMIT = 64 * 1024

# What an unauthenticated reader may do: learn the server's capabilities, switch mode,
# authenticate, and leave. Everything else (GROUP, ARTICLE, LIST, OVER, POST, ...) needs
# authentication.
BEFORE_AUTH = frozenset({b"CAPABILITIES", b"MODE", b"AUTHINFO", b"QUIT", b"HELP", b"DATE"})
# Responses to those commands that carry a multi-line body (RFC 3977 §3.2, §3.4.1).
MULTILINE = frozenset({b"100", b"101", b"215"})


RATE_LIMITED = b"400 Rate limited: too many connections from your address, try again later\r\n"
BANNED = b"400 Banned: too many failures from your address, try again later\r\n"


# Lines the gate does not simply refuse: a verb it lets through or answers itself (bytes'
# split() and upper() are ASCII, as this pattern is), or a line over the limit (501).
_SPECIAL = re.compile(
    rb"^(?:[ \t\r\x0b\x0c]*(?i:"
    + b"|".join(sorted(BEFORE_AUTH | {b"STARTTLS"}))
    + rb")[ \t\r\n\x0b\x0c]|[^\n]{%d})" % COMMAND_LINE_LIMIT,
    re.MULTILINE,
)

REPLIES = base.FixedReplies(
    over_capacity=OVER_CAPACITY,
    denied=DENIED,
    unavailable=UNAVAILABLE,
    rate_limited=RATE_LIMITED,
    banned=BANNED,
)


AuthResult = base.AuthResult
Output = base.GateOutput


def gate(*, anonymous: bool, starttls: bool, tls_active: bool) -> base.GateFactory | None:
    """The reader gate for a service without anonymous access (INN's readers.conf without
    an anonymous access group is the model); with it, sessions are relayed untouched."""
    if anonymous:
        return None
    return functools.partial(ReaderGate, starttls=starttls, tls_active=tls_active)


class ReaderGate:
    """Stands between a reader and the news server until AUTHINFO succeeds.

    One command is in flight at a time: a command the reader may send is forwarded and the
    next one waits until the server's response is complete, so the gate always knows which
    command a response answers and sees the 281 that opens the session.

    With `starttls` the gate offers STARTTLS itself (RFC 4642): it lists STARTTLS in the
    news server's capabilities (and takes it out whenever it is not on offer) and answers
    the command with 382, so the session can
    encrypt the reader's leg while the gate keeps reading its commands; the leg to the news
    server stays as it is. `tls_active` says the reader's leg is already encrypted."""

    __slots__ = (
        "_body_start",
        "_client",
        "_held",
        "_in_flight",
        "_response",
        "_server",
        "offer_starttls",
        "opened",
        "tls_active",
    )

    def __init__(self, *, starttls: bool = False, tls_active: bool = False) -> None:
        self._client = base.LineBuffer(COMMAND_LINE_LIMIT)
        self._server = bytearray()
        # The greeting is the first response the gate waits for.
        self._in_flight: bytes | None = b"(greeting)"
        self._response: bytes | None = None  # status code of a multi-line body being read
        self._body_start = False
        self.opened = False
        self.offer_starttls = starttls and not tls_active
        self.tls_active = tls_active
        # A CAPABILITIES response held back until complete, to add STARTTLS to it.
        self._held: bytearray | None = None

    @property
    def idle(self) -> bool:
        """No command of the reader waits for its answer or for its turn. (Whenever no
        command is in flight the gate has taken every complete line it holds.)"""
        return self._in_flight is None

    def from_client(self, data: bytes) -> Output:
        if self.opened:
            return Output(to_backend=data, open=True)
        # Commands wait as the bytes they came in, taken one line at a time when their turn
        # comes: holding them as a list of lines cost a Python object per line.
        self._client.push(data)
        return self._advance(Output())

    def from_backend(self, data: bytes) -> Output:
        if self.opened:
            return Output(to_client=data, open=True)
        if self._held is None and self._in_flight == b"CAPABILITIES":
            self._held = bytearray()
        if self._held is not None:
            out = Output()
            self._held += data
        else:
            out = Output(to_client=data)
        self._server += data
        while self._in_flight is not None:
            if not self._consume_response(out):
                break
        if self._held is not None:
            if self._in_flight is None:
                out.to_client += _capabilities(bytes(self._held), self.offer_starttls)
                self._held = None
            elif len(self._held) > CAPABILITIES_LIMIT:
                out.to_client += bytes(self._held)
                self._held = bytearray()  # the rest of this response passes unchanged
        if self.opened:
            out.to_backend += self._flush_client()
            out.open = True
            return out
        return self._advance(out)

    def tls_started(self) -> None:
        """The reader's leg is encrypted now: STARTTLS is no longer offered."""
        self.tls_active = True
        self.offer_starttls = False

    def _consume_response(self, out: Output) -> bool:
        """Consume one complete response from the server buffer; False if incomplete."""
        if self._response is None:
            end = self._server.find(b"\n")
            if end < 0:
                if len(self._server) > RESPONSE_LINE_LIMIT:
                    self._server.clear()
                return False
            status = bytes(self._server[:3])
            del self._server[: end + 1]
            command = self._in_flight or b""
            if status in MULTILINE and command != b"AUTHINFO":
                self._response = status
                self._body_start = True
            else:
                self._finish(command, status, out)
                return True
        if self._body_start and self._server.startswith(b".\r\n"):
            end, size = 0, 3
        else:
            end, size = self._server.find(b"\r\n.\r\n"), 5
        if end < 0:
            # Keep only what could be the start of the terminator.
            if len(self._server) > 4:
                del self._server[:-4]
                self._body_start = False
            return False
        del self._server[: end + size]
        self._response = None
        self._in_flight = None
        return True

    def _finish(self, command: bytes, status: bytes, out: Output) -> None:
        self._in_flight = None
        if command == b"AUTHINFO":
            if status == b"281":
                self.opened = True
                out.auth = AuthResult.SUCCESS
            elif status in (b"481", b"482", b"502"):
                out.auth = AuthResult.FAILURE

    def _advance(self, out: Output) -> Output:
        # Replies are gathered in one buffer: thousands of refused commands in one segment
        # must cost time in proportion to their number, not its square.
        replies = bytearray(out.to_client)
        while self._in_flight is None and not self.opened:
            # Lines the gate refuses alike (480) are taken in bulk; one Python step per line
            # made a segment of short lines hold the event loop for a tenth of a second.
            refused = self._client.take_run(_SPECIAL)
            if refused:
                replies += AUTH_REQUIRED * refused
            line = self._client.pop()
            if line is None:
                break
            if line is base.Line.TOO_LONG:
                replies += LINE_TOO_LONG
                continue
            words = line.split(None, 1)
            verb = words[0].upper() if words else b""
            if verb == b"STARTTLS":
                if self.offer_starttls:
                    replies += STARTTLS_GO
                    out.start_tls = True
                    # RFC 4642 §2.2.2: nothing may be pipelined behind STARTTLS; whatever
                    # was is dropped rather than read as if it came over TLS.
                    self._client.take_rest()
                    break
                replies += STARTTLS_ALREADY if self.tls_active else STARTTLS_UNAVAILABLE
            elif verb in BEFORE_AUTH:
                out.to_backend += line
                self._in_flight = verb
            elif verb:
                replies += AUTH_REQUIRED
        out.to_client = bytes(replies)
        return out

    def _flush_client(self) -> bytes:
        return self._client.take_rest()


def _capabilities(response: bytes, offer_starttls: bool) -> bytes:
    """A complete CAPABILITIES response as the gate makes it true: STARTTLS is listed when
    the gate offers it and never otherwise, since the gate answers STARTTLS itself and the
    news server's own TLS (on the leg the reader never sees) is not what the reader gets."""
    if not response.startswith(b"101") or not response.endswith(b"\r\n.\r\n"):
        return response
    lines = response[: -len(b".\r\n")].split(b"\r\n")[:-1]
    kept = [line for line in lines if line.split(b" ", 1)[0].upper() != b"STARTTLS"]
    if offer_starttls:
        kept.append(STARTTLS_CAPABILITY.rstrip())
    return b"\r\n".join(kept) + b"\r\n.\r\n"
