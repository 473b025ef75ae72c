"""Issue 12, point 1: one client must not freeze every service. The listener's own parsers
(the NNTP reader gate, the XMPP refusal's stream header, the HTTP refusal's head) cost time
in proportion to what a client sends, so /healthz and other services keep answering while
one client floods them.

Figures on the starting code: 1 MiB of `X\\n` at the NNTP gate took 77 s of listener CPU
(16 KiB 0.11 s, 64 KiB 3.35 s, 128 KiB 12.6 s), /healthz and every service frozen
meanwhile; 256 KiB of `<stream ` without `>` to a refused XMPP client stalled the loop 18 s.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support import refusals
from tests.support.attack import (
    HEALTHZ_BOUND,
    Deadline,
    HealthzWatch,
    connect,
    recv_until,
)
from tests.support.listener import service
from tests.support.misbehaving import Behaviour

AUTH_REQUIRED = refusals.line("nntp", "auth_required")


class Drain(threading.Thread):
    """Reads everything a socket receives, counting bytes, until EOF, `want` bytes, or the
    deadline."""

    def __init__(self, sock: socket.socket, want: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.want = want
        self.deadline = Deadline(timeout)
        self.received = 0

    def run(self) -> None:
        while self.received < self.want and not self.deadline.expired:
            self.sock.settimeout(max(0.05, self.deadline.left))
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            self.received += len(chunk)


@pytest.mark.timeout(90)
def test_a_megabyte_of_short_lines_at_the_nntp_gate_costs_seconds_not_minutes(
    misbehaving_backend, listener_process
):
    """1 MiB of `X\\n` in one write: every line is answered 480 and the listener spends
    under 10 s of CPU on it (a few tenths of a second here; 77 s before), while /healthz
    and an SMTP service on the same listener answer within 1 s."""
    news = misbehaving_backend(Behaviour.NNTP)
    mail = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(
        service("attack/nntp", "NNTP", backend_port=news.port, anonymous=False),
        service("attack/smtp", "SMTP", backend_port=mail.port),
    )
    s = connect(lp.port(0))
    assert recv_until(s, b"\r\n") == b"200 news ready\r\n"
    lines = 1024 * 1024 // 2
    drain = Drain(s, lines * len(AUTH_REQUIRED), timeout=60)
    drain.start()
    cpu = lp.cpu_seconds()
    greeting_waits = []
    with HealthzWatch(lp.metrics_port) as watch:
        s.sendall(b"X\n" * lines)
        while drain.is_alive() and len(greeting_waits) < 20:
            start = time.monotonic()
            with connect(lp.port(1)) as other:
                assert recv_until(other, b"\r\n", timeout=30) == b"220 backend\r\n"
            greeting_waits.append(time.monotonic() - start)
            time.sleep(0.1)
        drain.join(60)
    used = lp.cpu_seconds() - cpu
    s.close()
    assert drain.received == lines * len(AUTH_REQUIRED)
    assert used < 10, f"{used:.1f} s of CPU for 1 MiB"
    assert watch.worst < HEALTHZ_BOUND, f"/healthz took {watch.worst:.2f} s"
    assert max(greeting_waits, default=0) < HEALTHZ_BOUND


@pytest.mark.timeout(60)
def test_a_stream_header_that_never_ends_is_refused_at_4_kib_without_stalling_the_loop(
    listener_process,
):
    """256 KiB of `<stream ` without `>` from a client the XMPP service refuses: it gets its
    stream error as soon as the 4 KiB bound is passed, and /healthz stays under 1 s (the
    loop stalled 18 s before)."""
    lp = listener_process(service("attack/xmpp", "XMPP", allow=()))
    with HealthzWatch(lp.metrics_port) as watch:
        s = connect(lp.port())
        start = time.monotonic()
        try:
            s.sendall(b"<stream " * (256 * 1024 // 8))
        except OSError:
            pass  # the listener answered and closed before taking everything
        answer = recv_until(s, b"</stream:stream>", timeout=20)
        took = time.monotonic() - start
        s.close()
        time.sleep(0.3)
    assert b"<policy-violation" in answer
    assert answer.endswith(b"</stream:stream>")
    assert took < 5, f"the refusal took {took:.1f} s"
    assert watch.worst < HEALTHZ_BOUND, f"/healthz took {watch.worst:.2f} s"


@pytest.mark.timeout(60)
def test_a_request_head_trickled_in_small_pieces_costs_what_one_segment_costs(
    listener_process,
):
    """An HTTP client the service refuses sends its 16 KiB head 64 bytes at a time: the
    listener's CPU for it stays under 2 s and the answer is the 431 for an over-long head."""
    lp = listener_process(service("attack/http", "HTTP", allow=()))
    s = connect(lp.port())
    cpu = lp.cpu_seconds()
    s.sendall(b"GET / HTTP/1.1\r\n")
    piece = b"X-Filler: " + b"a" * 52 + b"\r\n"
    sent = 0
    deadline = Deadline(20)
    while sent < 17 * 1024 and not deadline.expired:
        try:
            s.sendall(piece)
        except OSError:
            break
        sent += len(piece)
    answer = recv_until(s, b"\r\n", timeout=10)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431")
    assert lp.cpu_seconds() - cpu < 2
