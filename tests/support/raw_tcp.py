"""Raw-socket clients (for the exact bytes a library client would hide) and a small TCP
backend of our own for the relay tests that need to see both directions byte for byte."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

TIMEOUT = 5.0


def connect(port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection from `source` (any 127.0.0.x is local, so the listener sees it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.bind((source, 0))
    s.connect((host, port))
    return s


def read_line(s: socket.socket) -> bytes:
    """One line, byte by byte, so nothing after it is consumed."""
    out = bytearray()
    while not out.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_until_eof(s: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything the peer sends until it closes; fails if it does not close in time."""
    s.settimeout(timeout)
    out = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def closed_by_peer(s: socket.socket, timeout: float = TIMEOUT) -> bool:
    try:
        return read_until_eof(s, timeout) == b"" or True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def exchange(s: socket.socket, line: bytes) -> bytes:
    s.sendall(line)
    return read_line(s)


class Backend:
    """A threaded TCP server on loopback running `handler(conn)` for each connection."""

    def __init__(
        self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(256)
        self.port: int = self.sock.getsockname()[1]
        self.handler = handler
        self.connections = 0
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            with conn:
                self.handler(conn)
        except OSError as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self._stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._accepter.join(5)
        deadline = time.monotonic() + 5
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


def greeter(greeting: bytes) -> Callable[[socket.socket], None]:
    """Greets, then holds the connection until the client leaves."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(greeting)
        while conn.recv(65536):
            pass

    return handle


def echo_then_trailer(greeting: bytes, trailer: bytes) -> Callable[[socket.socket], None]:
    """Greets, echoes every byte until the client half-closes, then sends `trailer` (so the
    client can see the half-close arrived and the way back still works) and closes."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(greeting)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
        conn.sendall(trailer)
        conn.shutdown(socket.SHUT_WR)

    return handle
