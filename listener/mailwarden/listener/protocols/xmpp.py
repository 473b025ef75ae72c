"""XMPP and XMPPS refusals.

Over the cap the connection is refused at the TCP level, before any byte (XEP-0205 §3:
a server under load "MAY refuse TCP connections"), so clients back off as they would from a
busy server. Otherwise RFC 6120 §4.9.1.2 applies: even when the error is known at once the
receiving entity first sends its own stream header, then the stream error, then closes the
stream; it waits for the client's stream header (bounded) to answer in the right namespace."""

from __future__ import annotations

import re
import secrets

from mailwarden.listener.protocols import base

# An initial stream header is one short tag (plus the optional XML declaration); anything
# longer is not a client starting a stream.
HEADER_LIMIT = 4096

STREAMS_NS = "http://etherx.jabber.org/streams"
ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
CLIENT_NS = "jabber:client"
SERVER_NS = "jabber:server"

POLICY_VIOLATION = (
    "policy-violation",
    "Access denied: your address is not allowed to use this service",
)
RATE_LIMITED = (
    "policy-violation",
    "Rate limited: too many connections from your address, try again later",
)
BANNED = ("policy-violation", "Banned: too many failures from your address, try again later")
REMOTE_CONNECTION_FAILED = (
    "remote-connection-failed",
    "Service temporarily unavailable, try again later",
)

_STREAM_TAG = re.compile(rb"<([A-Za-z_][\w.-]*:)?stream(\s[^>]*)?>", re.DOTALL)
_ATTRIBUTE = re.compile(rb"""([\w:.-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")""")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


def stream_attributes(header: bytes) -> dict[str, str]:
    """The attributes of a client's initial stream header, or {} if there is none."""
    match = _STREAM_TAG.search(header)
    if match is None:
        return {}
    return {
        m.group(1).decode("utf-8", "replace"): (m.group(2) or m.group(3) or b"").decode(
            "utf-8", "replace"
        )
        for m in _ATTRIBUTE.finditer(match.group(2) or b"")
    }


def stream_error(condition: str, text: str, *, to: dict[str, str], hostname: str) -> bytes:
    """Our stream header answering the client's, the stream error, and the stream's end."""
    ns = to.get("xmlns", CLIENT_NS)
    if ns not in (CLIENT_NS, SERVER_NS):
        ns = CLIENT_NS
    domain = to.get("to", "")
    if not _DOMAIN.match(domain):
        domain = hostname
    header = (
        "<?xml version='1.0'?>"
        f"<stream:stream xmlns={_quoteattr(ns)}"
        f" xmlns:stream='{STREAMS_NS}'"
        f" id='{secrets.token_hex(8)}'"
        f" from={_quoteattr(domain)}"
        " version='1.0'>"
    )
    error = (
        f"<stream:error><{condition} xmlns='{ERRORS_NS}'/>"
        f"<text xmlns='{ERRORS_NS}' xml:lang='en'>{_escape(text)}</text>"
        "</stream:error></stream:stream>"
    )
    return (header + error).encode()


class StreamRefusal:
    """Wait for the client's stream header, answer with a stream error, close.

    The header is looked for incrementally: a tag ends at a `>`, so each time one arrives
    only the bytes since the previous `>` are searched, and nothing past HEADER_LIMIT is
    kept. Every byte is searched once, however the client cuts or trickles them."""

    __slots__ = ("_buf", "_condition", "_hostname", "_searched", "_text")

    def __init__(self, condition: tuple[str, str], hostname: str) -> None:
        self._condition, self._text = condition
        self._hostname = hostname
        self._buf = bytearray()
        # Where the next search starts: just after the last `>` already searched up to.
        self._searched = 0

    def opening(self) -> base.Reply:
        return base.Reply()

    def feed(self, data: bytes) -> base.Reply:
        room = HEADER_LIMIT + 1 - len(self._buf)
        self._buf += data[:room]
        buf = self._buf
        while True:
            end = buf.find(b">", self._searched)
            if end < 0:
                break
            match = _STREAM_TAG.search(buf, self._searched, end + 1)
            self._searched = end + 1
            if match is not None:
                return self._answer(stream_attributes(match.group(0)))
        if len(buf) > HEADER_LIMIT:
            # Not a client starting a stream: answer in the default namespace.
            return self._answer({})
        return base.Reply()

    def _answer(self, attributes: dict[str, str]) -> base.Reply:
        return base.Reply(
            stream_error(self._condition, self._text, to=attributes, hostname=self._hostname),
            close=True,
        )


class XMPPReplies:
    def over_capacity(self, hostname: str) -> base.Conversation:
        return base.OneShot(b"", reset=True)

    def denied(self, hostname: str) -> base.Conversation:
        return StreamRefusal(POLICY_VIOLATION, hostname)

    def unavailable(self, hostname: str) -> base.Conversation:
        return StreamRefusal(REMOTE_CONNECTION_FAILED, hostname)

    # RFC 6120 §4.9.3.14: policy-violation, with the text saying which policy.
    def rate_limited(self, hostname: str, retry_after: int) -> base.Conversation:
        return StreamRefusal(RATE_LIMITED, hostname)

    def banned(self, hostname: str, retry_after: int) -> base.Conversation:
        return StreamRefusal(BANNED, hostname)


REPLIES = XMPPReplies()


# XML escaping (XML 1.0 §2.4, §3.3.3) as xml.sax.saxutils does it, without importing it: it
# brings urllib.request, http.client and email with it (about 1.5 MiB of a listener pod).
def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _quoteattr(value: str) -> str:
    value = _escape(value).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' in value:
        if "'" in value:
            return '"' + value.replace('"', "&quot;") + '"'
        return "'" + value + "'"
    return '"' + value + '"'
