"""Accepting stops while file descriptors run short and resumes when they are free (issue 12,
point 5; docs/decisions/0007): here with the limit the listener sees lowered for the test, on
an endpoint bound on every address (an IPv4 and an IPv6 socket, both kept and reopened)."""

from __future__ import annotations

import select
import socket
import time

import pytest

from mailwarden.listener import descriptors
from tests.support.listener import free_port, service, wait_until
from tests.support.raw_tcp import greeter

GREETING = b"220 held\r\n"


def _greeted(socks: list[socket.socket], wait: float) -> list[socket.socket]:
    """The clients greeted within `wait` seconds."""
    out: list[socket.socket] = []
    pending = list(socks)
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
        for s in ready:
            s.settimeout(2)
            if s.recv(64) == GREETING:
                out.append(s)
            pending.remove(s)
    return out


def test_accepting_pauses_near_the_limit_and_resumes_on_both_families(
    run_listener, backend, monkeypatch: pytest.MonkeyPatch
):
    b = backend(greeter(GREETING))
    port = free_port("::")
    # Room for about 20 sessions above what the process holds now.
    limit = (descriptors.count_open() or 100) + 2 * 20 + 2 * descriptors.MIN_RESERVE + 40
    monkeypatch.setattr(descriptors, "soft_limit", lambda: limit)
    monkeypatch.setattr(descriptors, "RESERVE_FRACTION", 10**6)  # the reserve is MIN_RESERVE
    lt = run_listener(service(address=None, port=port, backend_port=b.port))
    lt.run(lambda: lt.listener._fds.measure(0))

    clients = []
    for i in range(80):
        host, family = ("::1", socket.AF_INET6) if i % 2 else ("127.0.0.1", socket.AF_INET)
        s = socket.socket(family)
        s.settimeout(5)
        s.connect((host, port))
        clients.append(s)
    first = _greeted(clients, wait=3)
    assert 0 < len(first) < 80
    assert lt.metric("mailwarden_accept_paused") == 1
    assert lt.metric("mailwarden_fd_shortages_total") >= 1

    served = list(first)
    waiting = [s for s in clients if s not in first]
    for s in first:
        s.close()
    for _ in range(10):
        if not waiting:
            break
        more = _greeted(waiting, wait=3)
        served += more
        waiting = [s for s in waiting if s not in more]
        for s in more:
            s.close()
    assert waiting == []
    assert len(served) == 80
    wait_until(lambda: lt.metric("mailwarden_accept_paused") == 0, what="accepting again")
    # Both sockets of the endpoint were reopened.
    for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        with socket.socket(family) as s:
            s.settimeout(5)
            s.connect((host, port))
            assert s.recv(64) == GREETING
