"""The metrics and health port under attack (issue 12, point 6): idle, trickling and kept-alive
connections are closed on time, and a flood of them neither locks out the probes nor takes
the file descriptors that the mail ports need.

Bounds (mailwarden.listener.health.Limits): a request head whole within 10 s, an idle
keep-alive connection closed after 15 s, at most 64 connections (a new one pushes out the
one idle the longest). Before: 20 of 20 idle connections were still open after 65 s, and 300
of them under `ulimit -n 256` made SMTP clients get EOF."""

from __future__ import annotations

import socket
import time

import pytest

from mailwarden.listener import health
from tests.support.attack import (
    HEALTHZ_BOUND,
    Deadline,
    close_all,
    connect,
    http_get,
    open_clients,
    recv_some,
    recv_until,
    wait_for,
)
from tests.support.listener import service
from tests.support.misbehaving import Behaviour

LIMITS = health.Limits()
GREETING = b"220 backend\r\n"


def closed(s: socket.socket) -> bool:
    """The server closed it (EOF or reset); data before the EOF (a 408) is read past."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(90)
def test_idle_trickling_and_kept_alive_connections_to_the_metrics_port_are_closed_on_time(
    misbehaving_backend, listener_process
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service("attack/smtp", backend_port=b.port))
    port = lp.metrics_port
    started = time.monotonic()
    idle = open_clients(port, 20)
    trickling = open_clients(port, 5)
    kept = open_clients(port, 5)
    assert len(idle) == 20 and len(trickling) == 5 and len(kept) == 5
    for s in kept:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(s, b"ok\n").endswith(b"ok\n")
    kept_since = time.monotonic()
    for s in trickling:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")

    closed_at: dict[int, float] = {}
    deadline = Deadline(LIMITS.keepalive_timeout + 10)
    tick = 0
    while len(closed_at) < 30 and not deadline.expired:
        for s in (*idle, *trickling, *kept):
            if s.fileno() not in closed_at and closed(s):
                closed_at[s.fileno()] = time.monotonic()
        if tick % 10 == 0:  # one header byte a second: a trickle that never ends its head
            for s in trickling:
                if s.fileno() not in closed_at:
                    try:
                        s.send(b"X")
                    except OSError:
                        pass
        tick += 1
        time.sleep(0.1)
    assert len(closed_at) == 30, f"{30 - len(closed_at)} of 30 connections still open"
    slack = 3.0
    for s in (*idle, *trickling):
        assert closed_at[s.fileno()] - started < LIMITS.header_timeout + slack
    for s in kept:
        assert closed_at[s.fileno()] - kept_since < LIMITS.keepalive_timeout + slack
        assert closed_at[s.fileno()] - kept_since > LIMITS.keepalive_timeout - 1
    close_all([*idle, *trickling, *kept])
    assert http_get(port, "/healthz")[0] == 200
    # Counted by reason (what an operator alerts on), and said in the log.
    closed_metric = "mailwarden_metrics_port_closed_total"
    assert lp.metric(closed_metric, reason="header_timeout") == 25
    assert lp.metric(closed_metric, reason="keepalive_timeout") == 5
    assert "metrics port: connections closed by its limits" in lp.log()


def test_a_trickled_request_head_gets_408_when_its_total_time_is_up(
    misbehaving_backend, listener_process
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service("attack/smtp", backend_port=b.port))
    with connect(lp.metrics_port) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        answer = b""
        deadline = Deadline(LIMITS.header_timeout + 5)
        while not deadline.expired and not answer:
            s.sendall(b"X-Trickle: 1\r\n")  # a header line every second: never a whole head
            answer = recv_some(s, timeout=1.0)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert deadline.left > 2  # within the header timeout (+ the 1 s pacing)


@pytest.mark.timeout(120)
def test_a_flood_of_metrics_connections_under_a_low_fd_limit_leaves_mail_clients_and_probes_served(
    misbehaving_backend, listener_process
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service("attack/smtp", backend_port=b.port), nofile=256)
    flood = open_clients(lp.metrics_port, 300, timeout=30)
    try:
        assert len(flood) == 300  # every one was accepted (and most pushed out at once)
        # Those still in the kernel's backlog are taken (and pushed out) in a moment.
        wait_for(
            lambda: sum(not closed(s) for s in flood) <= LIMITS.max_connections,
            10,
            f"at most {LIMITS.max_connections} metrics connections open",
        )
        assert lp.open_fds() < 256 - 100
        # The probes still get in: a new connection pushes out an idle one.
        t0 = time.monotonic()
        assert http_get(lp.metrics_port, "/healthz")[0] == 200
        assert time.monotonic() - t0 < HEALTHZ_BOUND
        assert http_get(lp.metrics_port, "/readyz")[0] == 200
        # And SMTP clients are relayed to their backend, not closed with no reply.
        clients = [connect(lp.port()) for _ in range(40)]
        answers = [recv_until(c, b"\r\n") for c in clients]
        close_all(clients)
        assert answers == [GREETING] * 40
    finally:
        close_all(flood)
    assert lp.metric("mailwarden_metrics_port_closed_total", reason="evicted") >= 300 - 64
    assert lp.metric("mailwarden_open_files_limit", limit="soft") == 256
    assert lp.metric("mailwarden_open_files_limit", limit="hard") == 256
