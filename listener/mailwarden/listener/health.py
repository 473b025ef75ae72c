"""/metrics, /healthz, /readyz (and whatever routes are plugged in, such as /status) on the
listener's own port: a small HTTP/1.1 server for GET and HEAD in the listener's event loop.

Why not a general web server: these few fixed answers need none of one, and the port shares the
process's file descriptors with the mail ports, so every connection to it is bounded here:
- a total time for a request's head, from the connection or the end of the last answer (as
  nginx's `client_header_timeout` and HAProxy's `timeout http-request` are totals, so a
  client trickling one byte at a time gains nothing);
- a keep-alive time, after which an idle connection is closed (nginx `keepalive_timeout`);
- a time to take an answer, so a client that never reads cannot hold its buffer;
- at most `max_connections` connections: a new one beyond that pushes out the connection
  idle the longest (or, if none is idle, the one whose request began first), so that idle or
  trickling clients cannot lock the kubelet's probes and the scraper out.
A route is a path -> callable returning (status, body, content type) (RFC 9110 semantics;
framing per RFC 9112)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

log = logging.getLogger(__name__)

# A route's answer: HTTP status, body, content type. Called in the event loop: no blocking.
Route = Callable[[], tuple[int, bytes, str]]

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
TEXT = "text/plain; charset=utf-8"

# Why the server closed a connection (label values of the metric main.py counts them in).
HEADER_TIMEOUT = "header_timeout"
KEEPALIVE = "keepalive_timeout"
SEND_TIMEOUT = "send_timeout"
EVICTED = "evicted"
BAD_REQUEST = "bad_request"
CLOSE_REASONS = (HEADER_TIMEOUT, KEEPALIVE, SEND_TIMEOUT, EVICTED, BAD_REQUEST)
LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Limits:
    # A request head (request line and headers) must arrive whole within this time.
    header_timeout: float = 10.0
    # An idle keep-alive connection is closed after this long. Prometheus and the kubelet
    # poll every 10-30 s; a connection reused within this time saves them a handshake.
    keepalive_timeout: float = 15.0
    # A client that does not take an answer within this time is cut.
    send_timeout: float = 10.0
    # Connections at once; a scraper and three kubelet probes need four.
    max_connections: int = 64
    # The largest request head accepted (request line and all headers).
    max_head: int = 8192
    # Requests served on one connection before it is closed.
    max_requests: int = 1000


def ready_route(ready: Callable[[], bool]) -> Route:
    def answer() -> tuple[int, bytes, str]:
        return (200, b"ready\n", TEXT) if ready() else (503, b"not ready\n", TEXT)

    return answer


def healthz() -> tuple[int, bytes, str]:
    return 200, b"ok\n", TEXT


class HealthServer:
    """Serves `routes` on host:port until closed."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        limits: Limits | None = None,
        *,
        closed: Callable[[str], None] | None = None,
    ) -> None:
        """`closed(reason)` is told of every connection the limits close (one of CLOSE_REASONS),
        for a metric."""
        self.routes = dict(routes)
        self.limits = limits or Limits()
        self.connections: set[_Connection] = set()
        self.evicted = 0  # connections closed to make room over max_connections
        self._closed = closed
        self._server: asyncio.Server | None = None
        # Closed by the limits since the last log line (at most one a minute, not one per
        # connection: an attack must not flood the log either).
        self._unlogged: dict[str, int] = {}
        self._logged_at = -LOG_INTERVAL

    def limited(self, reason: str) -> None:
        """A connection closed by a limit: counted, and logged once a minute at most."""
        if self._closed is not None:
            self._closed(reason)
        if reason == KEEPALIVE:
            return  # an idle scraper's connection: routine
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        now = asyncio.get_running_loop().time()
        if now - self._logged_at >= LOG_INTERVAL:
            self._logged_at = now
            counts = ", ".join(f"{n} {r}" for r, n in sorted(self._unlogged.items()))
            self._unlogged.clear()
            log.warning("metrics port: connections closed by its limits: %s", counts)

    async def start(self, host: str | None, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=_bound(host, port))

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def evict(self) -> None:
        """Make room: close the connection idle the longest, else the oldest request."""
        victim = min(self.connections, key=_Connection.eviction_order)
        self.connections.discard(victim)
        self.evicted += 1
        self.limited(EVICTED)
        victim.abort()

    def answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            return 404, b"not found\n", TEXT
        try:
            return route()
        except Exception:  # a broken route answers 500; the server and the listener go on
            log.exception("health route %s failed", path)
            return 500, b"internal error\n", TEXT

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)


def _bound(host: str | None, port: int) -> socket.socket:
    """A listening socket on an IP address (None: every IPv4 address). Made here rather than
    by the event loop: uvloop resolves a host given as text through getaddrinfo, encoding it
    with the IDNA codec first, which imports unicodedata and stringprep into the process
    (about 0.5 MiB) for what is always a numeric address."""
    address = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Connection(asyncio.Protocol):
    __slots__ = ("_buffer", "_paused", "_served", "_since", "_timer", "server", "transport")

    def __init__(self, server: HealthServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._served = 0
        self._paused = False
        # When the connection last became idle or its current request began.
        self._since = 0.0

    # -- transport events --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        limits = self.server.limits
        if len(self.server.connections) >= limits.max_connections:
            self.server.evict()
        self.server.connections.add(self)
        self._arm(limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_timer()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._buffer and self._served:
            # The first byte of a new request: from now on the header clock runs.
            self._arm(self.server.limits.header_timeout)
        self._buffer += data
        self._serve_buffered()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._arm(self.server.limits.send_timeout)

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._arm(
                self.server.limits.header_timeout
                if self._buffer
                else self.server.limits.keepalive_timeout
            )
            self._serve_buffered()

    # -- requests ----------------------------------------------------------------------
    def _serve_buffered(self) -> None:
        limits = self.server.limits
        while not self._paused and self.transport is not None and not self.transport.is_closing():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > limits.max_head:
                    self._refuse(431, b"request head too large\n")
                return
            if end > limits.max_head:
                self._refuse(431, b"request head too large\n")
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._request(head)
        return

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[1].startswith(b"/"):
            self._refuse(400, b"bad request\n")
            return
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            self._refuse(505, b"HTTP/1.1 only\n")
            return
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                self._refuse(400, b"bad header\n")
                return
            headers[name.lower()] = value.strip()
        # No request here has a body; one announced would have to be read or the framing of
        # the next request is lost (RFC 9112 §6.3), so the connection ends.
        if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
            self._refuse(413, b"no request body expected\n")
            return
        connection = headers.get(b"connection", b"").lower()
        close = (
            connection == b"close"
            or (version == b"HTTP/1.0" and connection != b"keep-alive")
            or self._served + 1 >= self.server.limits.max_requests
        )
        if method not in (b"GET", b"HEAD"):
            self._refuse(405, b"GET or HEAD only\n", allow=True)
            return
        status, body, ctype = self.server.answer("GET", target.decode("latin-1"))
        self._respond(status, body, ctype, close=close, head_only=method == b"HEAD")

    def _refuse(self, status: int, body: bytes, *, allow: bool = False) -> None:
        """A request this server does not serve: said, counted, closed."""
        self.server.limited(BAD_REQUEST)
        self._respond(status, body, TEXT, close=True, allow=allow)

    def _respond(
        self,
        status: int,
        body: bytes,
        ctype: str,
        *,
        close: bool,
        head_only: bool = False,
        allow: bool = False,
    ) -> None:
        transport = self.transport
        if transport is None:
            return
        self._served += 1
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            + ("Allow: GET, HEAD\r\n" if allow else "")
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode("latin-1")
        transport.write(head if head_only else head + body)
        if close:
            self._cancel_timer()
            transport.close()
        elif not self._paused:
            self._arm(
                self.server.limits.header_timeout
                if self._buffer
                else self.server.limits.keepalive_timeout
            )

    # -- timers ------------------------------------------------------------------------
    def eviction_order(self) -> tuple[bool, float]:
        """Idle connections first (False sorts first), the longest idle first."""
        return bool(self._buffer) or self._paused, self._since

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._timer = loop.call_later(seconds, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        if self._paused:
            self.server.limited(SEND_TIMEOUT)
            self.abort()
        elif self._buffer:
            # A request began and did not finish in time: say so, then close.
            self.server.limited(HEADER_TIMEOUT)
            self._respond(408, b"request timeout\n", TEXT, close=True)
            self.abort_later()
        else:
            # Nothing asked since the connection (a header timeout) or since the last answer.
            self.server.limited(KEEPALIVE if self._served else HEADER_TIMEOUT)
            self.abort()

    def abort_later(self) -> None:
        # The 408 gets a moment to leave; a client that does not read it is cut anyway.
        asyncio.get_running_loop().call_later(1.0, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
