"""Shutdown of a real `mailwarden listener` process, over real sockets: the lame duck (not
ready, still accepting), then the drain (ports closed, open sessions finish), and a second
signal that cuts it all short."""

from __future__ import annotations

import http.client
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from mailwarden.listener import config as lc
from tests.support.listener import free_port, service, wait_until
from tests.support.raw_tcp import Backend, echo_then_trailer, read_line

GREETING = b"220 shutdown-test ready\r\n"


def readyz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    finally:
        conn.close()


def accepts(port: int) -> bool:
    """A new client is admitted: it connects and gets the backend's greeting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
            return read_line(c) == GREETING
    except OSError:
        return False


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class Process:
    def __init__(self, cfg: lc.ListenerConfig, tmp: pathlib.Path) -> None:
        path = tmp / "listener.yaml"
        path.write_text(lc.dumps(cfg))
        self.log = tmp / "listener.log"
        self.metrics_port = cfg.metrics.port
        self.port = cfg.services[0].listen[0].port
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailwarden.cli", "listener", "--config", str(path)],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_until(self._ready, timeout=30, what="the listener to be ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return readyz(self.metrics_port) == 200
        except OSError:
            return False

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start(tmp_path, backend) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []
    back: Backend = backend(echo_then_trailer(GREETING, b""))

    def make(**fields: object) -> Process:
        cfg = lc.build(
            lc.ListenerConfig,
            {
                "services": [service("mail/smtp", "SMTP", backend_port=back.port)],
                "metrics": {"address": "127.0.0.1", "port": free_port()},
                **fields,
            },
        )
        p = Process(cfg, tmp_path)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def test_on_sigterm_the_lame_duck_admits_new_clients_while_readyz_says_503_then_the_port_closes_and_open_sessions_drain(  # noqa: E501
    start,
):
    p = start(lame_duck_seconds=3.0, drain_seconds=20.0)
    held = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert read_line(held) == GREETING
    signalled = time.monotonic()
    p.signal()
    wait_until(lambda: readyz(p.metrics_port) == 503, timeout=2, what="/readyz to say 503")
    # Lame duck: not ready, and still accepting.
    admitted = 0
    while time.monotonic() - signalled < 2.0:
        assert accepts(p.port), "a new client was not admitted during the lame duck"
        assert readyz(p.metrics_port) == 503
        admitted += 1
        time.sleep(0.1)
    assert admitted >= 3
    # Then the port closes...
    wait_until(lambda: refused(p.port), timeout=3, what="the port to close")
    assert time.monotonic() - signalled >= 3.0
    # ...and the open session goes on: it is drained, not cut.
    held.sendall(b"NOOP\r\n")
    assert read_line(held) == b"NOOP\r\n"
    assert p.proc.poll() is None
    held.close()
    assert p.proc.wait(10) == 0
    assert time.monotonic() - signalled < 15  # the drain ended with its last session


def test_without_a_lame_duck_sigterm_closes_the_port_at_once(start):
    p = start(drain_seconds=20.0)
    held = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert read_line(held) == GREETING
    signalled = time.monotonic()
    p.signal(signal.SIGINT)
    wait_until(lambda: refused(p.port), timeout=2, what="the port to close")
    assert time.monotonic() - signalled < 2  # no lame duck: closed at once, not after seconds
    held.sendall(b"NOOP\r\n")
    assert read_line(held) == b"NOOP\r\n"
    held.close()
    assert p.proc.wait(10) == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("phase", ["lame duck", "drain"])
def test_a_second_signal_cuts_the_shutdown_short_and_closes_open_sessions(start, second, phase):
    lame = 30.0 if phase == "lame duck" else 0.0
    p = start(lame_duck_seconds=lame, drain_seconds=30.0)
    held = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    assert read_line(held) == GREETING
    p.signal()
    if phase == "lame duck":
        wait_until(lambda: readyz(p.metrics_port) == 503, timeout=2, what="the lame duck")
    else:
        wait_until(lambda: refused(p.port), timeout=2, what="the drain")
    signalled = time.monotonic()
    p.signal(second)
    assert p.proc.wait(5) == 0
    assert time.monotonic() - signalled < 2
    held.settimeout(2)
    assert held.recv(100) == b""  # the held session was closed
    held.close()
    assert "second shutdown signal" in p.log.read_text()


def test_listen_on_a_host_has_no_lame_duck_unless_asked(tmp_path):
    manifest = tmp_path / "smtp.yaml"
    manifest.write_text(
        "apiVersion: mailwarden.io/v1alpha1\nkind: MailService\n"
        "metadata: {name: smtp}\n"
        "spec: {service: SMTP, listen: [{port: 2525}], backend: {host: 127.0.0.1, port: 25}}\n"
    )
    parser_args = ["listen", "-f", str(manifest), "--print-config"]
    default = _listen_config(parser_args)
    assert default.lame_duck_seconds == 0
    asked = _listen_config([*parser_args, "--lame-duck-seconds", "4"])
    assert asked.lame_duck_seconds == 4


def _listen_config(argv: list[str]) -> lc.ListenerConfig:
    out = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli", *argv], capture_output=True, check=True
    )
    return lc.loads(out.stdout.decode())


def test_a_negative_lame_duck_is_refused_with_exit_2(tmp_path):
    manifest = tmp_path / "smtp.yaml"
    manifest.write_text(
        "apiVersion: mailwarden.io/v1alpha1\nkind: MailService\n"
        "metadata: {name: smtp}\n"
        "spec: {service: SMTP, listen: [{port: 2525}], backend: {host: 127.0.0.1, port: 25}}\n"
    )
    out = subprocess.run(
        [
            *(sys.executable, "-m", "mailwarden.cli", "listen", "-f", str(manifest)),
            *("--lame-duck-seconds", "-1", "--print-config"),
        ],
        capture_output=True,
    )
    assert out.returncode == 2
    assert b"lame_duck_seconds" in out.stderr
