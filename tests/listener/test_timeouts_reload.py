"""Timeouts, and a new configuration put in force without dropping the sessions in flight."""

from __future__ import annotations

import msgspec
import pytest

from mailwarden.listener import config as lc
from mailwarden.listener import server
from tests.support import refusals
from tests.support.listener import service, wait_until
from tests.support.raw_tcp import (
    closed_by_peer,
    connect,
    echo_then_trailer,
    exchange,
    greeter,
    read_line,
    read_until_eof,
)

GREETING = b"220 reload-test ready\r\n"
DENIED = refusals.line("smtp", "denied")
OVER_CAP = refusals.line("smtp", "over_cap")


def test_an_idle_relayed_session_is_closed_after_the_idle_timeout(run_listener, backend):
    back = backend(greeter(GREETING))
    svc = service("mail/smtp", "SMTP", backend_port=back.port, timeouts={"idle": 0.5})
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_line(s) == GREETING
        assert closed_by_peer(s, timeout=5)
    wait_until(lambda: lt.active("mail/smtp") == 0, what="the slot to be released")


def test_a_session_that_keeps_talking_outlives_the_idle_timeout(run_listener, backend):
    back = backend(echo_then_trailer(GREETING, b""))
    svc = service("mail/smtp", "SMTP", backend_port=back.port, timeouts={"idle": 0.6})
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_line(s) == GREETING
        for i in range(8):  # ~1.6 s of traffic, one line every 0.2 s
            assert exchange(s, b"NOOP %d\r\n" % i) == b"NOOP %d\r\n" % i
            s.settimeout(0.2)
            with pytest.raises(TimeoutError):  # quiet in between, and not closed
                s.recv(1)
            s.settimeout(5)
        assert lt.active("mail/smtp") == 1


def test_a_reload_changes_who_may_connect_and_the_cap_while_an_open_session_survives(
    run_listener, backend
):
    back = backend(echo_then_trailer(GREETING, b"bye\r\n"))
    before = service(
        "mail/smtp",
        "SMTP",
        backend_port=back.port,
        allow=("127.0.0.10/32", "127.0.0.20/32"),
        max_connections=5,
    )
    lt = run_listener(before)
    port = before.listen[0].port
    with connect(port, source="127.0.0.10") as kept:
        assert read_line(kept) == GREETING
        after = msgspec.structs.replace(before, allow=("127.0.0.20/32",), max_connections=1)
        lt.reload(lc.ListenerConfig(services=(after,)))
        # The open session is still relayed, though its address is no longer allowed.
        assert exchange(kept, b"still here\r\n") == b"still here\r\n"
        # New connections follow the new rules: the address is denied ...
        with connect(port, source="127.0.0.10") as s:
            assert read_line(s) == DENIED
        # ... and the cap of 1 is taken by the surviving session.
        with connect(port, source="127.0.0.20") as s:
            assert read_until_eof(s) == OVER_CAP
        assert exchange(kept, b"and still\r\n") == b"and still\r\n"
    wait_until(lambda: lt.active("mail/smtp") == 0, what="the kept session to end")
    with connect(port, source="127.0.0.20") as s:
        assert read_line(s) == GREETING
    assert lt.metric("mailwarden_connection_cap", service="mail/smtp", scope="service") == 1
    assert lt.metric("mailwarden_config_reloads_total", result="success") == 2


def test_a_reload_that_cannot_bind_is_refused_counted_and_the_old_config_stays(
    run_listener, backend
):
    back = backend(greeter(GREETING))
    svc = service("mail/smtp", "SMTP", backend_port=back.port)
    lt = run_listener(svc)
    # Another service on the backend's own port: the bind fails.
    clash = service(
        "mail/other", "IMAP", port=back.port, backend_port=back.port, address="127.0.0.1"
    )
    with pytest.raises(server.ReloadError):
        lt.reload(lc.ListenerConfig(services=(svc, clash)))
    assert lt.metric("mailwarden_config_reloads_total", result="failure") == 1
    assert sorted(lt.listener.services) == ["mail/smtp"]
    with connect(svc.listen[0].port) as s:
        assert read_line(s) == GREETING
