"""What every protocol module provides: the conversations the listener holds itself when it
does not relay a session (refusals), as pure objects that turn bytes in into bytes out."""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    data: bytes = b""
    close: bool = False
    # Close with a TCP reset instead of a clean FIN (XEP-0205: refuse at the TCP level).
    reset: bool = False


class Conversation(Protocol):
    """A refusal session: `opening()` is sent as soon as the session is decided, `feed()` is
    called with whatever the client sends afterwards until a reply closes the session."""

    def opening(self) -> Reply: ...

    def feed(self, data: bytes) -> Reply: ...


class OneShot:
    """Say one thing and close: most refusals are this."""

    __slots__ = ("_reply",)

    def __init__(self, data: bytes, *, reset: bool = False) -> None:
        self._reply = Reply(data, close=True, reset=reset)

    def opening(self) -> Reply:
        return self._reply

    def feed(self, data: bytes) -> Reply:
        return self._reply


class Replies(Protocol):
    """The refusals of one protocol family, worded as its RFCs ask."""

    def over_capacity(self, hostname: str) -> Conversation: ...

    def denied(self, hostname: str) -> Conversation: ...

    def unavailable(self, hostname: str) -> Conversation: ...

    def rate_limited(self, hostname: str, retry_after: int) -> Conversation:
        """Too many new connections from the client's address (a temporary refusal)."""
        ...

    def banned(self, hostname: str, retry_after: int) -> Conversation:
        """The client's address is banned for a while after repeated failures."""
        ...


class FixedReplies:
    """Refusals that are one fixed line each and then a close (POP3, IMAP, NNTP)."""

    __slots__ = ("_banned", "_denied", "_over_capacity", "_rate_limited", "_unavailable")

    def __init__(
        self,
        *,
        over_capacity: bytes,
        denied: bytes,
        unavailable: bytes,
        rate_limited: bytes,
        banned: bytes,
    ) -> None:
        self._over_capacity = OneShot(over_capacity)
        self._denied = OneShot(denied)
        self._unavailable = OneShot(unavailable)
        self._rate_limited = OneShot(rate_limited)
        self._banned = OneShot(banned)

    # Stateless: one conversation serves every refused client (a flood is mostly these).
    def over_capacity(self, hostname: str) -> Conversation:
        return self._over_capacity

    def denied(self, hostname: str) -> Conversation:
        return self._denied

    def unavailable(self, hostname: str) -> Conversation:
        return self._unavailable

    def rate_limited(self, hostname: str, retry_after: int) -> Conversation:
        return self._rate_limited

    def banned(self, hostname: str, retry_after: int) -> Conversation:
        return self._banned


class LineBuffer:
    """Splits a byte stream into lines with a length limit. An over-long line is consumed
    up to its end and reported once as None, so the caller answers it with its protocol's
    error instead of buffering without bound."""

    __slots__ = ("_buf", "_discarding", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        self._buf += data
        lines: list[bytes | None] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.limit:
                    if not self._discarding:
                        lines.append(None)
                    self._discarding = True
                    self._buf.clear()
                return lines
            line = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.limit:
                lines.append(None)
            else:
                lines.append(line)

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest
