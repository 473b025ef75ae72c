"""Costs the benchmark found and the listener must not grow back: a finished session is freed
by reference counting (no garbage for the cyclic collector, whose full passes stall every
session), and an idle relayed session does not keep the local address or a pending buffer."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Iterator

import pytest

from bench.backend import SMTPLike
from mailwarden.listener import session
from tests.support.listener import ListenerThread, free_port, service, wait_until

pytestmark = pytest.mark.bench


@pytest.fixture
def relay(run_listener: Callable[..., ListenerThread]) -> Iterator[tuple[ListenerThread, int]]:
    """A listener relaying to the benchmark's SMTP-like backend, served in its own loop."""
    backend_port = free_port()
    svc = service(backend_port=backend_port, allow=("127.0.0.0/8",), max_connections=50)
    lt = run_listener(svc)
    server = lt.call(_serve(lt, backend_port))
    yield lt, svc.listen[0].port
    lt.run(server.close)


async def _serve(lt: ListenerThread, port: int) -> asyncio.AbstractServer:
    return await lt.loop.create_server(SMTPLike, "127.0.0.1", port)


def smtp_session(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(100).startswith(b"220")
        s.sendall(b"QUIT\r\n")
        assert s.recv(100).startswith(b"221")


def live_sessions() -> int:
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, session.ClientConnection | session.BackendConnection)
    )


def test_finished_sessions_are_freed_without_the_cyclic_collector(
    relay: tuple[ListenerThread, int],
) -> None:
    lt, port = relay
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            smtp_session(port)
        wait_until(
            lambda: (
                lt.run(lambda: sum(len(r.sessions) for r in lt.listener.services.values())) == 0
            ),
            what="sessions to end",
        )
        wait_until(lambda: live_sessions() == 0, what="session objects to be freed")
    finally:
        gc.enable()


def test_an_idle_relayed_session_holds_no_local_address_and_no_buffer(
    relay: tuple[ListenerThread, int],
) -> None:
    lt, port = relay
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(100).startswith(b"220")

        def idle() -> list[tuple[object, object]]:
            return [
                (c._local, c._pending)
                for r in lt.listener.services.values()
                for c in r.sessions
                if c.state is session.State.RELAY
            ]

        wait_until(lambda: len(lt.run(idle)) == 1, what="the session to be relayed")
        assert lt.run(idle) == [(None, b"")]
        s.sendall(b"QUIT\r\n")
        assert s.recv(100).startswith(b"221")
