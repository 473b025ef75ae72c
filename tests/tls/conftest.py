from __future__ import annotations

import pathlib
import socket
from collections.abc import Callable, Iterator

import pytest

from mailwarden.listener import config as lc
from tests.support import certs, wire
from tests.support.listener import EVENT_LOOPS, ListenerThread
from tests.support.servers_extra import nginx, prosody, slapd, smtp_sink, test_ca

__all__ = ["listener_tls", "nginx", "prosody", "slapd", "smtp_sink", "test_ca"]


@pytest.fixture(params=sorted(EVENT_LOOPS))
def run_listener(request: pytest.FixtureRequest) -> Iterator[Callable[..., ListenerThread]]:
    """Listeners on each event loop the listener runs on: the TLS paths (implicit TLS, the
    NNTP gate's STARTTLS, the bytes that come with the PROXY header before the ClientHello)
    hand bytes to the TLS layer that `start_tls` puts in place, and the order of its first
    steps is each loop's own (the listener falls back to asyncio where uvloop is missing)."""
    started: list[ListenerThread] = []

    def start(*services: lc.ServiceConfig, **options: object) -> ListenerThread:
        cfg = lc.ListenerConfig(services=services, **options)  # type: ignore[arg-type]
        lt = ListenerThread(cfg, event_loop=request.param).start()
        started.append(lt)
        return lt

    yield start
    for lt in started:
        lt.stop()


@pytest.fixture
def listener_tls(test_ca: certs.CA, tmp_path: pathlib.Path) -> wire.ListenerTLS:
    return wire.make_listener_tls(test_ca, tmp_path / "listener-tls")


@pytest.fixture
def silent_backend() -> Iterator[int]:
    """A port that accepts connections (in the kernel's backlog) and never answers: enough
    for an admitted session to hold its slot in refusal tests."""
    with socket.create_server((wire.HOST, 0), backlog=64) as sock:
        yield sock.getsockname()[1]
