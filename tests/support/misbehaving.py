"""Backends that misbehave, for the attack suite: each is a real TCP server on 127.0.0.1
served by one asyncio loop in a background thread, so a test can hold thousands of backend
connections without thousands of threads.

    backend = MisbehavingBackend(Behaviour.SILENT).start()
    ... service(backend_port=backend.port) ...
    backend.stop()

(or the `misbehaving_backend` fixture of tests/support/attack.py, which stops them for you).

Behaviours (what a listener in front of them must survive):
- GREETER: sends `greeting`, then answers each line with `reply` (`echo=True`: echoes bytes).
- SILENT: accepts and reads, never writes (a hung server).
- SLOW_READER: greets, then reads at most `rate` bytes per second (a small receive buffer).
- BLASTER: greets, then writes `blast` bytes in total as fast as the peer reads them.
- RESETTER: resets every connection at once (SO_LINGER 0), or after its greeting with
  `greeting_first=True`.
- BLACK_HOLE: listens but never accepts: once its tiny backlog is full the kernel drops the
  SYNs, so a connect hangs until the connector's own timeout.
- NNTP: a news server: greets `200`, answers CAPABILITIES, AUTHINFO USER/PASS (281 for the
  password `secret`, 481 otherwise) and everything else with `reply`.
`greet_after` delays the greeting (a backend slow to greet) for every behaviour that greets.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from typing import Any


class Behaviour(enum.Enum):
    GREETER = "greeter"
    SILENT = "silent"
    SLOW_READER = "slow-reader"
    BLASTER = "blaster"
    RESETTER = "resetter"
    BLACK_HOLE = "black-hole"
    NNTP = "nntp"


NNTP_CAPABILITIES = b"101 Capability list:\r\nVERSION 2\r\nREADER\r\nAUTHINFO USER\r\n.\r\n"


def _reset(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Conn(asyncio.Protocol):
    def __init__(self, owner: MisbehavingBackend) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.paused = False
        self.left = owner.blast
        self.greeted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        owner = self.owner
        owner.connections += 1
        owner.open.add(self)
        b = owner.behaviour
        if b is Behaviour.RESETTER and not owner.greeting_first:
            _reset(transport)
            return
        if b is Behaviour.SLOW_READER:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if b is not Behaviour.SILENT:
            if owner.greet_after > 0:
                owner.loop.call_later(owner.greet_after, self._greet)
            else:
                self._greet()

    def _greet(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        self.greeted = True
        owner = self.owner
        t.write(owner.greeting)
        if owner.behaviour is Behaviour.RESETTER:
            _reset(t)
        elif owner.behaviour is Behaviour.BLASTER:
            self._blast()
        elif owner.behaviour is Behaviour.SLOW_READER:
            self._throttle()

    def _blast(self) -> None:
        t = self.transport
        chunk = b"x" * 65536
        while t is not None and not self.paused and self.left > 0 and not t.is_closing():
            n = min(len(chunk), self.left)
            t.write(chunk[:n])
            self.left -= n
            self.owner.bytes_sent += n

    def _throttle(self) -> None:
        """Read `rate` bytes per second: resume reading for a moment each tenth of a second."""
        t = self.transport
        if t is None or t.is_closing():
            return
        t.pause_reading()
        self.owner.loop.call_later(0.1, self._let_in)

    def _let_in(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        self.budget = self.owner.rate / 10
        t.resume_reading()

    budget = 0.0

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.owner.behaviour is Behaviour.BLASTER:
            self._blast()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner.bytes_received += len(data)
        t = self.transport
        assert t is not None
        b = owner.behaviour
        if b is Behaviour.SLOW_READER:
            self.budget -= len(data)
            if self.budget <= 0:
                self._throttle()
            return
        if b is Behaviour.GREETER and owner.echo:
            if self.greeted:
                t.write(data)
            return
        if b not in (Behaviour.GREETER, Behaviour.NNTP) or not self.greeted:
            return
        self.buf += data
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.buf.clear()
                return
            line = bytes(self.buf[: end + 1])
            del self.buf[: end + 1]
            t.write(self._answer(line))

    def _answer(self, line: bytes) -> bytes:
        owner = self.owner
        if owner.behaviour is not Behaviour.NNTP:
            return owner.reply
        words = line.split()
        verb = words[0].upper() if words else b""
        if verb == b"CAPABILITIES":
            return NNTP_CAPABILITIES
        if verb == b"AUTHINFO" and len(words) >= 2 and words[1].upper() == b"USER":
            return b"381 Password required\r\n"
        if verb == b"AUTHINFO" and len(words) >= 3 and words[1].upper() == b"PASS":
            return b"281 Ok\r\n" if words[2] == b"secret" else b"481 Authentication failed\r\n"
        if verb == b"QUIT":
            return b"205 Bye\r\n"
        return owner.reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.open.discard(self)
        self.transport = None


class MisbehavingBackend:
    """One backend on 127.0.0.1:`port`. Counters are read from the test's thread; they are
    plain ints written by one thread, good enough for the bounds tests assert."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        greeting: bytes | None = None,
        reply: bytes = b"250 ok\r\n",
        echo: bool = False,
        greet_after: float = 0.0,
        rate: int = 1024,
        blast: int = 64 * 1024 * 1024,
        greeting_first: bool = False,
        backlog: int = 4096,
    ) -> None:
        self.behaviour = behaviour
        if greeting is None:
            greeting = b"200 news ready\r\n" if behaviour is Behaviour.NNTP else b"220 backend\r\n"
        self.greeting = greeting
        self.reply = b"480 Authentication required\r\n" if behaviour is Behaviour.NNTP else reply
        self.echo = echo
        self.greet_after = greet_after
        self.rate = rate
        self.blast = blast
        self.greeting_first = greeting_first
        self.backlog = backlog
        self.connections = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.open: set[_Conn] = set()
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._hole: socket.socket | None = None

    def start(self) -> MisbehavingBackend:
        if self.behaviour is Behaviour.BLACK_HOLE:
            self._hole = socket.socket()
            self._hole.bind(("127.0.0.1", 0))
            self._hole.listen(0)
            self.port = self._hole.getsockname()[1]
            # Fill the accept queue so that every later SYN is dropped.
            self._fillers = []
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError, OSError):
                    s.connect(("127.0.0.1", self.port))
                self._fillers.append(s)
            return self
        self._thread.start()
        self._server = self._call(
            self.loop.create_server(
                lambda: _Conn(self), "127.0.0.1", 0, backlog=self.backlog, reuse_address=True
            )
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def open_connections(self) -> int:
        return len(self.open)

    def reset_all(self) -> None:
        """Reset every open connection now (a backend that crashes mid-session)."""

        def job() -> None:
            for c in list(self.open):
                if c.transport is not None:
                    _reset(c.transport)

        self.loop.call_soon_threadsafe(job)

    def stop(self) -> None:
        if self._hole is not None:
            for s in self._fillers:
                s.close()
            self._hole.close()
            return
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for c in list(self.open):
                if c.transport is not None:
                    c.transport.abort()

        with contextlib.suppress(Exception):
            self._call(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
