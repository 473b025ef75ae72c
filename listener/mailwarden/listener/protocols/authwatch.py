"""What the per-protocol login watchers share: line splitting with bounds and a byte budget.

A watcher reads the start of a relayed session whose plaintext the listener sees (a plain
session, or implicit TLS the listener terminates) and counts failed logins in the server's
replies. It switches itself off (`done`) as soon as it cannot learn anything more: after a
successful login, when the session turns to TLS that the listener passes through (STARTTLS),
when the session moves on to mail, or after a fixed number of bytes. The session then drops
it, so a long session relays at full speed.

Pure: bytes in, a count of failures out; the protocol modules' tests drive them with
transcripts of real sessions."""

from __future__ import annotations

from collections.abc import Callable

from mailwarden.listener.protocols import base

# Bytes, both directions together, that a watcher reads before it gives up. A login takes a
# few hundred; a client that has not managed one in this much is not brute-forcing fast.
BUDGET = 32 * 1024
# Longer lines cannot be a status line or a login command worth reading; they are skipped.
LINE_LIMIT = 2048


class LineWatch:
    """Base for line-based protocols: subclasses implement `client_line` and `server_line`."""

    __slots__ = ("_budget", "_client", "_server", "done")

    def __init__(self, budget: int = BUDGET) -> None:
        # Made at the first bytes each way: thousands of idle sessions (and SMTP's watcher,
        # which reads no command) carry none.
        self._client: base.LineBuffer | None = None
        self._server: base.LineBuffer | None = None
        self._budget = budget
        self.done = False

    def from_client(self, data: bytes) -> None:
        if self._spend(len(data)):
            return
        if self._client is None:
            self._client = base.LineBuffer(LINE_LIMIT)
        for line in self._client.feed(data):
            if line is not None:
                self.client_line(line)
            if self.done:
                return

    def from_server(self, data: bytes) -> int:
        """Failed logins the server reported in `data`."""
        if self._spend(len(data)):
            return 0
        failures = 0
        if self._server is None:
            if data.endswith(b"\n"):
                # Whole lines, as replies nearly always come: read them in place, so that
                # the thousands of idle sessions past their greeting carry no buffer.
                return self._whole_lines(data)
            self._server = base.LineBuffer(LINE_LIMIT)
        for line in self._server.feed(data):
            if line is not None:
                failures += self.server_line(line)
            if self.done:
                break
        return failures

    def _whole_lines(self, data: bytes) -> int:
        failures = 0
        start = 0
        while not self.done:
            end = data.find(b"\n", start)
            if end < 0:
                break
            failures += self.server_line(data[start : end + 1])
            start = end + 1
        return failures

    def _spend(self, n: int) -> bool:
        self._budget -= n
        if self._budget < 0:
            self.done = True
        return self.done

    def client_line(self, line: bytes) -> None:
        """A command line from the client (CRLF included)."""

    def server_line(self, line: bytes) -> int:
        """A line from the server: how many failed logins it reports (0 or 1)."""
        raise NotImplementedError


def verb_of(line: bytes) -> tuple[bytes, bool]:
    """The command word of a line, upper-cased, and whether arguments follow it."""
    words = line.split(None, 1)
    if not words:
        return b"", False
    return words[0].upper(), len(words) > 1 and bool(words[1].strip())


class LoginObserver:
    """A watcher as the session's observer (base.Observer): `failed(client)` is called once
    per failed login; each method says whether the watcher still wants bytes. (The client
    is kept here rather than in a closure per session: one object less per session.)"""

    __slots__ = ("_client", "_failed", "_watch")

    def __init__(self, watch: LineWatch, failed: Callable[[str], None], client: str) -> None:
        self._watch = watch
        self._failed = failed
        self._client = client

    def client(self, data: bytes) -> bool:
        self._watch.from_client(data)
        return not self._watch.done

    def backend(self, data: bytes) -> bool:
        for _ in range(self._watch.from_server(data)):
            self._failed(self._client)
        return not self._watch.done
