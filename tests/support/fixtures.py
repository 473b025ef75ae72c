"""Fixtures shared across the suite (registered in tests/conftest.py): listeners in threads,
TCP backends of our own, the test CA and the listener's certificate."""

from __future__ import annotations

import logging
import pathlib
import socket
from collections.abc import Callable, Iterator

import pytest

from mailwarden.listener import config as lc
from tests.support import certs, wire
from tests.support.listener import ListenerThread
from tests.support.raw_tcp import Backend


@pytest.fixture
def run_listener() -> Iterator[Callable[..., ListenerThread]]:
    """Start listeners for a test; every one is stopped at the end."""
    started: list[ListenerThread] = []

    def start(*services: lc.ServiceConfig, **options: object) -> ListenerThread:
        cfg = lc.ListenerConfig(services=services, **options)  # type: ignore[arg-type]
        lt = ListenerThread(cfg).start()
        started.append(lt)
        return lt

    yield start
    for lt in started:
        lt.stop()


@pytest.fixture
def backend() -> Iterator[Callable[..., Backend]]:
    """Start TCP backends of our own; each is closed at the end of the test."""
    made: list[Backend] = []

    def make(handler: Callable[..., None], host: str = "127.0.0.1", port: int = 0) -> Backend:
        b = Backend(handler, host, port)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def silent_backend() -> Iterator[int]:
    """A port that accepts connections (in the kernel's backlog) and never answers: enough
    for an admitted session to hold its slot in refusal tests."""
    with socket.create_server((wire.HOST, 0), backlog=64) as sock:
        yield sock.getsockname()[1]


@pytest.fixture(scope="session")
def test_ca() -> certs.CA:
    return certs.make_ca()


@pytest.fixture
def listener_tls(test_ca: certs.CA, tmp_path: pathlib.Path) -> wire.ListenerTLS:
    return wire.make_listener_tls(test_ca, tmp_path / "listener-tls")


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever clients send, the listener answers in its protocol and never logs a
    traceback (an exception escaping a callback is logged by asyncio with exc_info).
    tests/listener/ and tests/protocols/ use it for every test (their conftest.py)."""
    caplog.set_level(logging.INFO)
    yield
    broken = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not broken, "\n".join(caplog.text.splitlines()[-40:])
