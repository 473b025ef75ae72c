"""The relay itself, with a TCP backend of our own that can see every byte: exactness in both
directions, half-close either way, caps under a burst, IPv6."""

from __future__ import annotations

import os
import socket
import threading

from tests.support import refusals
from tests.support.listener import service, wait_until
from tests.support.raw_tcp import (
    connect,
    echo_then_trailer,
    greeter,
    read_line,
    read_until_eof,
)

GREETING = b"220 relay-test ready\r\n"
OVER_CAP = refusals.line("smtp", "over_cap")


def test_every_byte_arrives_in_order_both_ways_and_the_client_half_close_reaches_the_backend(
    run_listener, backend
):
    trailer = b"after your EOF: 250 bye\r\n"
    back = backend(echo_then_trailer(GREETING, trailer))
    svc = service("mail/smtp", "SMTP", backend_port=back.port)
    lt = run_listener(svc)
    # Every byte value, in a pattern that would show any loss, duplication or reordering.
    payload = os.urandom(3 * 1024 * 1024) + bytes(range(256)) * 64
    received = bytearray()
    with connect(svc.listen[0].port) as s:
        s.settimeout(30)

        def reader() -> None:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        view = memoryview(payload)
        for i in range(0, len(payload), 50_000):  # in pieces of odd sizes
            s.sendall(view[i : i + 50_000])
        s.shutdown(socket.SHUT_WR)  # half-close: the backend must see EOF and still answer
        t.join(30)
    assert bytes(received) == GREETING + payload + trailer
    wait_until(lambda: lt.active("mail/smtp") == 0, what="the session to end")
    assert lt.metric(
        "mailwarden_relayed_bytes_total", service="mail/smtp", direction="upstream"
    ) == len(payload)
    assert lt.metric(
        "mailwarden_relayed_bytes_total", service="mail/smtp", direction="downstream"
    ) == len(GREETING + payload + trailer)
    assert lt.metric("mailwarden_session_duration_seconds_count", service="mail/smtp") == 1


def test_the_backend_half_close_reaches_the_client_and_the_client_can_still_send(
    run_listener, backend
):
    got: list[bytes] = []
    news = os.urandom(200_000)
    upload = os.urandom(300_000)

    def speak_then_listen(conn: socket.socket) -> None:
        conn.sendall(news)
        conn.shutdown(socket.SHUT_WR)
        data = bytearray()
        while chunk := conn.recv(65536):
            data += chunk
        got.append(bytes(data))

    back = backend(speak_then_listen)
    svc = service("mail/pop3", "POP3", backend_port=back.port)
    run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_until_eof(s) == news  # the backend's EOF arrived, the socket is half-open
        s.sendall(upload)
        s.shutdown(socket.SHUT_WR)
        wait_until(lambda: bool(got), what="the backend to receive the upload")
    assert got == [upload]


def test_a_burst_of_n_plus_k_simultaneous_clients_against_a_cap_of_n_admits_exactly_n(
    run_listener, backend
):
    n, k = 20, 15
    back = backend(greeter(GREETING))
    svc = service("mail/smtp", "SMTP", backend_port=back.port, max_connections=n)
    lt = run_listener(svc)
    port = svc.listen[0].port
    barrier = threading.Barrier(n + k)
    answers: list[bytes] = []
    lock = threading.Lock()
    clients: list[socket.socket] = []

    def client(i: int) -> None:
        barrier.wait(10)
        s = connect(port, source=f"127.0.1.{i + 1}")
        line = read_line(s)
        with lock:
            answers.append(line)
            clients.append(s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n + k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    try:
        assert answers.count(GREETING) == n
        assert answers.count(OVER_CAP) == k
        assert lt.active("mail/smtp") == n
        assert (
            lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="over_cap") == k
        )
        assert back.connections == n
    finally:
        for s in clients:
            s.close()
    wait_until(lambda: lt.active("mail/smtp") == 0, what="the sessions to end")


def test_ipv6_loopback_clients_are_relayed_and_checked_against_ipv6_cidrs(run_listener, backend):
    back = backend(greeter(GREETING), host="::1")
    allowed = service(
        "mail/smtp6",
        "SMTP",
        address="::1",
        backend_host="::1",
        backend_port=back.port,
        allow=("::1/128",),
    )
    denied = service(
        "mail/imap6",
        "IMAP",
        address="::1",
        backend_host="::1",
        backend_port=back.port,
        allow=("2001:db8::/32", "127.0.0.0/8"),
    )
    lt = run_listener(allowed, denied)
    with connect(allowed.listen[0].port, source="::1", host="::1") as s:
        assert read_line(s) == GREETING
        s.sendall(b"QUIT\r\n")
    with connect(denied.listen[0].port, source="::1", host="::1") as s:
        assert read_until_eof(s) == refusals.line("imap", "denied")
    assert lt.metric("mailwarden_connections_total", service="mail/smtp6", outcome="accepted") == 1
    assert lt.metric("mailwarden_connections_total", service="mail/imap6", outcome="denied") == 1


def test_the_nntp_gate_sees_a_greeting_that_arrives_the_moment_the_backend_connects(
    run_listener, backend
):
    # A news server that greets at once: its greeting may reach the listener before the
    # coroutine that connected to it resumes. The gate must still be in place to see it,
    # or it waits forever for a greeting that already went by.
    back = backend(greeter(b"200 quick news\r\n"))
    svc = service("news/nntp", "NNTP", backend_port=back.port)
    lt = run_listener(svc)
    for _ in range(100):
        with connect(svc.listen[0].port) as s:
            assert read_line(s) == b"200 quick news\r\n"
            s.sendall(b"GROUP misc.test\r\n")
            assert read_line(s) == refusals.line("nntp", "auth_required")
    assert lt.metric("mailwarden_connections_total", service="news/nntp", outcome="accepted") == 100


def test_a_client_that_says_everything_and_half_closes_before_the_backend_answers_loses_nothing(
    run_listener, backend
):
    # What `printf 'EHLO x\r\nQUIT\r\n' | nc -N host port` does: the bytes and the EOF
    # reach the listener while it is still connecting to the backend.
    back = backend(echo_then_trailer(GREETING, b"221 bye\r\n"))
    svc = service("mail/smtp", "SMTP", backend_port=back.port)
    run_listener(svc)
    for _ in range(30):
        with connect(svc.listen[0].port) as s:
            s.sendall(b"EHLO x\r\nQUIT\r\n")
            s.shutdown(socket.SHUT_WR)
            assert read_until_eof(s) == GREETING + b"EHLO x\r\nQUIT\r\n221 bye\r\n"


def _says_bye_and_closes(conn: socket.socket) -> None:
    """An SMTP-like backend that ends the session first: 221 to QUIT, then its FIN."""
    conn.sendall(GREETING)
    buf = b""
    while b"QUIT\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            return
        buf += chunk
        if buf.endswith(b"\r\n") and not buf.endswith(b"QUIT\r\n"):
            conn.sendall(b"250 ok\r\n")
    conn.sendall(b"221 bye\r\n")


def test_sessions_whose_backend_closes_first_free_their_slots_with_a_login_watcher_too(
    run_listener, backend
):
    """The backend says 221 and closes, then the client closes: the session ends at once,
    whether it is relayed plainly or watched for failed logins (auto-ban on). Found by the
    benchmark: with auto-ban configured, every such session stayed half-open until the idle
    timeout (595 of 600 still open), so slots leaked and the session rate fell by half."""
    back = backend(_says_bye_and_closes)
    plain = service("mail/plain", "SMTP", backend_port=back.port, max_connections=3)
    watched = service(
        "mail/watched",
        "SMTP",
        backend_port=back.port,
        max_connections=3,
        auto_ban={"after_failures": 1000, "within_seconds": 60},
    )
    lt = run_listener(plain, watched)
    for svc in (plain, watched):
        for _ in range(5):
            with connect(svc.listen[0].port) as s:
                s.settimeout(10)
                assert read_line(s) == GREETING
                s.sendall(b"EHLO test\r\n")
                assert read_line(s) == b"250 ok\r\n"
                s.sendall(b"QUIT\r\n")
                assert read_line(s) == b"221 bye\r\n"
                assert read_until_eof(s) == b""
            wait_until(lambda svc=svc: lt.active(svc.name) == 0, what=f"{svc.name} session to end")
