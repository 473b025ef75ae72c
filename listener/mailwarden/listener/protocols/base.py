"""What every protocol module provides: the conversations the listener holds itself when it
does not relay a session (refusals), as pure objects that turn bytes in into bytes out, and
optionally a gate that stands between client and backend at the start of a session.

A protocol module under `protocols/` is found by its catalogue wire name (`Wire.NNTP` ->
`protocols/nntp.py`) and exports:

- `REPLIES`: a `Replies` (the refusals worded as its RFCs ask);
- optionally `gate(*, anonymous, starttls, tls_active) -> GateFactory | None`: a gate for a
  service of that protocol, or None where sessions are relayed from the first byte."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable
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


class AuthResult(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclasses.dataclass(slots=True)
class GateOutput:
    """What a gate makes of the bytes it was given."""

    to_backend: bytes = b""
    to_client: bytes = b""
    # The gate is done: from now on every byte is relayed untouched.
    open: bool = False
    # An authentication result the gate saw (counted per service).
    auth: AuthResult | None = None
    # The client asked for STARTTLS and was told to go ahead: upgrade the client leg now.
    start_tls: bool = False


class Gate(Protocol):
    """Stands between client and backend until the protocol says the session may be relayed
    untouched (NNTP: until AUTHINFO succeeds). Pure: bytes in, bytes out; the session owns
    the sockets, TLS and flow control."""

    @property
    def idle(self) -> bool:
        """No client command waits for its turn or its answer (the client's EOF may pass)."""
        ...

    def from_client(self, data: bytes) -> GateOutput: ...

    def from_backend(self, data: bytes) -> GateOutput: ...

    def tls_started(self) -> None:
        """The client's leg is encrypted now (after a `start_tls` output)."""


GateFactory = Callable[[], Gate]


class Observer(Protocol):
    """Reads the first bytes of a relayed session without changing them (e.g. to see
    authentication failures). Each method returns False once it has seen enough; from then
    on the session relays without it."""

    def client(self, data: bytes) -> bool: ...

    def backend(self, data: bytes) -> bool: ...


class Observed:
    """A gate (or none) with an observer beside it: bytes go through the inner gate, or
    straight through without one, and the observer sees what each side sent. The session
    is relayed untouched once the inner gate has opened and the observer is done."""

    __slots__ = ("_gate", "_observer", "_watching")

    def __init__(self, gate: Gate | None, observer: Observer) -> None:
        self._gate = gate
        self._observer = observer
        self._watching = True

    @property
    def idle(self) -> bool:
        return self._gate is None or self._gate.idle

    def from_client(self, data: bytes) -> GateOutput:
        if self._watching:
            self._watching = self._observer.client(data)
        out = self._gate.from_client(data) if self._gate is not None else GateOutput(data)
        return self._settle(out)

    def from_backend(self, data: bytes) -> GateOutput:
        if self._watching:
            self._watching = self._observer.backend(data)
        gate = self._gate
        out = gate.from_backend(data) if gate is not None else GateOutput(to_client=data)
        return self._settle(out)

    def tls_started(self) -> None:
        if self._gate is not None:
            self._gate.tls_started()

    def _settle(self, out: GateOutput) -> GateOutput:
        if out.open:
            self._gate = None  # the inner gate is done: pass bytes through from now on
        out.open = self._gate is None and not self._watching
        return out


# A line with nothing but ASCII whitespace (what bytes.split() splits on) before its LF.
_BLANK_LINE = re.compile(rb"^[ \t\r\x0b\x0c]*\n", re.MULTILINE)


class Line(enum.Enum):
    """What `LineBuffer.pop` says besides a line."""

    TOO_LONG = "too long"


class LineBuffer:
    """Splits a byte stream into lines with a length limit. An over-long line is consumed
    up to its end and reported once as `Line.TOO_LONG` (None from `feed`), so the caller
    answers it with its protocol's error instead of buffering without bound.

    Lines are taken one at a time (`pop`) from the bytes received, so a caller that cannot
    take a line yet (a command waits for its answer) leaves the rest as received bytes, not
    as a list of lines. Every byte is looked at a bounded number of times: splitting n bytes
    costs O(n), however they are cut into segments."""

    __slots__ = ("_buf", "_discarding", "_scanned", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False
        # Bytes at the start of _buf already known to hold no line end.
        self._scanned = 0

    def push(self, data: bytes) -> None:
        self._buf += data

    def pop(self) -> bytes | Line | None:
        """The next complete line (with its line end), TOO_LONG, or None until one is
        complete."""
        buf = self._buf
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                if len(buf) > self.limit:
                    buf.clear()
                    self._scanned = 0
                    if not self._discarding:
                        self._discarding = True
                        return Line.TOO_LONG
                else:
                    self._scanned = len(buf)
                return None
            self._scanned = 0
            if self._discarding:
                # The end of a line already reported as too long.
                del buf[: end + 1]
                self._discarding = False
                continue
            if end + 1 > self.limit:
                del buf[: end + 1]
                return Line.TOO_LONG
            line = bytes(buf[: end + 1])
            # Deleting from the front of a bytearray moves its start, not its bytes.
            del buf[: end + 1]
            return line

    def take_run(self, special: re.Pattern[bytes]) -> int:
        """Take at once every complete line before the first one that `special` matches at
        its start (or that is too long), and return how many of them were not blank. For a
        caller that answers all ordinary lines alike: the scanning is done in C, so a
        segment of thousands of short lines does not cost a Python step per line."""
        buf = self._buf
        if self._discarding:
            return 0
        last = buf.rfind(b"\n")
        if last < 0:
            return 0
        found = special.search(buf, 0, last + 1)
        stop = last + 1 if found is None else found.start()
        if stop == 0:
            return 0
        lines = buf.count(b"\n", 0, stop)
        blank = len(_BLANK_LINE.findall(buf, 0, stop))
        del buf[:stop]
        self._scanned = 0
        return lines - blank

    def feed(self, data: bytes) -> list[bytes | None]:
        """Every complete line of what has come so far (None for an over-long one)."""
        self.push(data)
        lines: list[bytes | None] = []
        while (line := self.pop()) is not None:
            lines.append(None if line is Line.TOO_LONG else line)
        return lines

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest
