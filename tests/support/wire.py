"""Small client-side helpers shared by the protocol and TLS tests: raw sockets from a chosen
loopback address, reading until the server closes, and what the listener serves."""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import ssl
import time

from mailwarden.listener import config as lc
from tests.support import certs
from tests.support.listener import ListenerThread

HOST = "127.0.0.1"
# Loopback addresses outside the allowed list of the tests that need a denied client.
DENIED_SOURCE = "127.0.0.21"
ALLOWED = ("127.0.0.1/32",)
# The names on the listener's own certificate (what clients check).
LISTENER_NAME = "mail.example.test"
LISTENER_NAMES = (LISTENER_NAME, "example.test", "localhost", HOST)


@dataclasses.dataclass(frozen=True)
class ListenerTLS:
    ca: certs.CA
    folder: pathlib.Path
    files: lc.TLSFiles
    ca_file: pathlib.Path

    def client(self) -> ssl.SSLContext:
        return self.ca.client_context()


def make_listener_tls(ca: certs.CA, folder: pathlib.Path) -> ListenerTLS:
    cert, key = ca.issue(*LISTENER_NAMES).write(folder)
    return ListenerTLS(
        ca, folder, lc.TLSFiles(cert_file=cert, key_file=key), ca.write(folder / "ca.crt")
    )


def port_of(lt: ListenerThread, name: str = "test/svc") -> int:
    return lt.listener.endpoints()[name][0][1]


def connect(port: int, source: str = HOST, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))
    return sock


def connect_tls(
    port: int, ctx: ssl.SSLContext, source: str = HOST, server_name: str = LISTENER_NAME
) -> ssl.SSLSocket:
    return ctx.wrap_socket(connect(port, source), server_hostname=server_name)


def read_until_closed(sock: socket.socket, timeout: float = 10, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (a reset after data counts as closed)."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < limit:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            break
        except TimeoutError:
            raise AssertionError(f"server did not close; got {bytes(out)!r}") from None
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    out = bytearray()
    while marker not in out:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no {marker!r} from server; got {bytes(out)!r}") from None
        if not chunk:
            raise AssertionError(f"server closed before {marker!r}; got {bytes(out)!r}")
        out += chunk
    return bytes(out)
