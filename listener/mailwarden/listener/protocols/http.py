"""HTTP and HTTPS refusals as proper HTTP/1.1 responses (RFC 9110, RFC 9112): 503 with
Retry-After over the cap (§15.6.4, §10.2.3), 403 for an address that is not allowed
(§15.5.4), 502 when the backend cannot be reached (§15.6.3).

HTTP is client-first: the listener reads the request head (bounded) before it answers, so the
client reads the response as the answer to its request rather than as a reset connection.
Every refusal says `Connection: close` and the connection is closed after it."""

from __future__ import annotations

import re

from mailwarden.listener.protocols import base

# Request heads larger than this are answered 431 (RFC 6585 §5); nginx's default of four
# 8 KiB header buffers is the same order.
HEAD_LIMIT = 16 * 1024
# Seconds a client over the cap is asked to wait before trying again.
RETRY_AFTER = 30

# RFC 9112 §3: method SP request-target SP HTTP-version.
_REQUEST_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/\d\.\d\r?\n$")
_TOKEN_START = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]")


def response(
    status: int, reason: str, text: str, *, headers: tuple[tuple[str, str], ...] = (), head: bool
) -> bytes:
    """A complete HTTP/1.1 response with a short plain-text body (none for HEAD)."""
    body = (text + "\n").encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


class Refusal:
    """Read the request head, answer it with one status, close.

    Incremental: the request line is checked once, when its end arrives, and the blank line
    that ends the head is looked for only in bytes not searched before; nothing past
    HEAD_LIMIT is kept. A head trickled one byte at a time costs what one segment costs."""

    __slots__ = ("_buf", "_headers", "_line_end", "_reason", "_searched", "_status", "_text")

    def __init__(
        self, status: int, reason: str, text: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._status = status
        self._reason = reason
        self._text = text
        self._headers = headers
        self._buf = bytearray()
        # End of the request line once it has come and been checked, else -1.
        self._line_end = -1
        # Bytes already searched for the end of the head.
        self._searched = 0

    def opening(self) -> base.Reply:
        return base.Reply()

    def feed(self, data: bytes) -> base.Reply:
        self._buf += data[: HEAD_LIMIT + 1 - len(self._buf)]
        buf = self._buf
        if self._line_end < 0:
            line_end = buf.find(b"\n")
            if line_end < 0:
                if buf and not _TOKEN_START.match(buf):
                    return self._bad_request()
                if len(buf) > HEAD_LIMIT:
                    return self._too_large()
                return base.Reply()
            if not _REQUEST_LINE.match(bytes(buf[: line_end + 1])):
                return self._bad_request()
            self._line_end = line_end
            self._searched = max(0, line_end - 1) + 3
        # The head ends with an empty line: CRLF CRLF, or bare LFs (RFC 9112 §2.2 lets a
        # recipient accept a lone LF as a line terminator). Search from just before the
        # bytes not yet searched, so a terminator cut across segments is found.
        start = max(0, self._line_end - 1, self._searched - 3)
        if buf.find(b"\r\n\r\n", start) < 0 and buf.find(b"\n\n", start) < 0:
            self._searched = len(buf)
            if len(buf) > HEAD_LIMIT:
                return self._too_large()
            return base.Reply()
        head = buf.startswith(b"HEAD ")
        return base.Reply(
            response(self._status, self._reason, self._text, headers=self._headers, head=head),
            close=True,
        )

    def _bad_request(self) -> base.Reply:
        return base.Reply(response(400, "Bad Request", "Malformed request", head=False), close=True)

    def _too_large(self) -> base.Reply:
        return base.Reply(
            response(431, "Request Header Fields Too Large", "Request head too large", head=False),
            close=True,
        )


class HTTPReplies:
    def over_capacity(self, hostname: str) -> base.Conversation:
        return Refusal(
            503,
            "Service Unavailable",
            "Too many connections, try again later",
            (("Retry-After", str(RETRY_AFTER)),),
        )

    def denied(self, hostname: str) -> base.Conversation:
        return Refusal(
            403, "Forbidden", "Access denied: your address is not allowed to use this service"
        )

    def unavailable(self, hostname: str) -> base.Conversation:
        return Refusal(502, "Bad Gateway", "Service temporarily unavailable, try again later")

    # RFC 9110 §15.6.4 and §10.2.3: 503 with the seconds until the refusal ends. (429 Too
    # Many Requests, RFC 6585 §4, counts requests of one client; this counts connections.)
    def rate_limited(self, hostname: str, retry_after: int) -> base.Conversation:
        return Refusal(
            503,
            "Service Unavailable",
            "Rate limited: too many connections from your address, try again later",
            (("Retry-After", str(retry_after)),),
        )

    def banned(self, hostname: str, retry_after: int) -> base.Conversation:
        return Refusal(
            503,
            "Service Unavailable",
            "Banned: too many failures from your address, try again later",
            (("Retry-After", str(retry_after)),),
        )


REPLIES = HTTPReplies()
