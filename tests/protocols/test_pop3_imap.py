"""POP3 and IMAP in front of a real Dovecot: relay, refusals in RFC 3206 / RFC 5530 words,
PROXY protocol towards Dovecot."""

from __future__ import annotations

import imaplib
import poplib
import re

import pytest

from tests.support import refusals
from tests.support.listener import free_port, service
from tests.support.mail_servers import MAIL_PASSWORD, MAIL_USER
from tests.support.raw_tcp import connect, read_line, read_until_eof

ALLOWED = ("127.0.0.1/32", "127.0.0.10/32", "127.0.0.31/32", "127.0.0.32/32")

POP3_DENIED = refusals.line("pop3", "denied")
POP3_OVER_CAP = refusals.line("pop3", "over_cap")
POP3_UNAVAILABLE = refusals.line("pop3", "backend_down")
IMAP_DENIED = refusals.line("imap", "denied")
IMAP_OVER_CAP = refusals.line("imap", "over_cap")
IMAP_UNAVAILABLE = refusals.line("imap", "backend_down")

pytestmark = pytest.mark.servers


def outcome(lt, name: str, what: str) -> float:
    return lt.metric("mailwarden_connections_total", service=name, outcome=what)


def test_a_pop3_client_logs_in_to_dovecot_through_the_listener(run_listener, dovecot):
    svc = service("mail/pop3", "POP3", backend_port=dovecot.pop3_port, allow=ALLOWED)
    lt = run_listener(svc)
    client = poplib.POP3("127.0.0.1", svc.listen[0].port, timeout=10)
    assert client.getwelcome().startswith(b"+OK Dovecot")
    client.user(MAIL_USER)
    assert client.pass_(MAIL_PASSWORD).startswith(b"+OK")
    count, _size = client.stat()
    assert count >= 0
    client.quit()
    assert outcome(lt, "mail/pop3", "accepted") == 1


def test_a_denied_pop3_client_gets_err_sys_perm_and_is_closed(run_listener, dovecot):
    svc = service("mail/pop3", "POP3", backend_port=dovecot.pop3_port, allow=("127.0.0.10/32",))
    lt = run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.66") as s:
        assert read_until_eof(s) == POP3_DENIED
    # poplib (from 127.0.0.1, not allowed either) reports the refused greeting.
    with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
        poplib.POP3("127.0.0.1", svc.listen[0].port, timeout=5)
    assert outcome(lt, "mail/pop3", "denied") == 2


def test_over_the_cap_a_pop3_client_gets_err_sys_temp(run_listener, dovecot):
    svc = service(
        "mail/pop3", "POP3", backend_port=dovecot.pop3_port, allow=ALLOWED, max_connections=1
    )
    lt = run_listener(svc)
    first = poplib.POP3("127.0.0.1", svc.listen[0].port, timeout=10)
    try:
        with connect(svc.listen[0].port, source="127.0.0.10") as s:
            assert read_until_eof(s) == POP3_OVER_CAP
        assert first.user(MAIL_USER).startswith(b"+OK")  # the admitted session goes on
    finally:
        first.quit()
    assert outcome(lt, "mail/pop3", "over_cap") == 1


def test_with_dovecot_unreachable_a_pop3_client_gets_err_sys_temp(run_listener):
    svc = service("mail/pop3", "POP3", backend_port=free_port())
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_until_eof(s) == POP3_UNAVAILABLE
    assert outcome(lt, "mail/pop3", "backend_error") == 1


def test_an_imap_client_logs_in_to_dovecot_through_the_listener(run_listener, dovecot):
    svc = service("mail/imap", "IMAP", backend_port=dovecot.imap_port, allow=ALLOWED)
    lt = run_listener(svc)
    box = imaplib.IMAP4("127.0.0.1", svc.listen[0].port, timeout=10)
    assert box.welcome.startswith(b"* OK")
    assert box.login(MAIL_USER, MAIL_PASSWORD)[0] == "OK"
    assert box.select("INBOX")[0] == "OK"
    box.logout()
    assert outcome(lt, "mail/imap", "accepted") == 1


def test_a_denied_imap_client_gets_a_bye_greeting_and_is_closed(run_listener, dovecot):
    svc = service("mail/imap", "IMAP", backend_port=dovecot.imap_port, allow=("127.0.0.10/32",))
    lt = run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.66") as s:
        assert read_until_eof(s) == IMAP_DENIED
    with pytest.raises(imaplib.IMAP4.error, match="Access denied"):
        imaplib.IMAP4("127.0.0.1", svc.listen[0].port, timeout=5)
    assert outcome(lt, "mail/imap", "denied") == 2


def test_over_the_cap_an_imap_client_gets_bye_unavailable(run_listener, dovecot):
    svc = service(
        "mail/imap",
        "IMAP",
        backend_port=dovecot.imap_port,
        allow=ALLOWED,
        max_connections_per_address=1,
    )
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as first:
        assert read_line(first).startswith(b"* OK")
        with connect(svc.listen[0].port) as second:
            assert read_until_eof(second) == IMAP_OVER_CAP
        # imaplib sees it as a refused greeting.
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            imaplib.IMAP4("127.0.0.1", svc.listen[0].port, timeout=5)
    assert outcome(lt, "mail/imap", "over_address_cap") == 2


def test_with_dovecot_unreachable_an_imap_client_gets_bye_unavailable(run_listener):
    svc = service("mail/imap", "IMAP", backend_port=free_port())
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_until_eof(s) == IMAP_UNAVAILABLE
    assert outcome(lt, "mail/imap", "backend_error") == 1


@pytest.mark.parametrize(("version", "source"), [("v1", "127.0.0.31"), ("v2", "127.0.0.32")])
def test_dovecot_logs_the_original_imap_client_address_sent_with_proxy_protocol(
    run_listener, dovecot, version, source
):
    svc = service(
        "mail/imap",
        "IMAP",
        backend_port=dovecot.imap_proxy_port,
        backend={"proxy_protocol": version},
        allow=ALLOWED,
    )
    run_listener(svc)
    with connect(svc.listen[0].port, source=source) as s:
        assert read_line(s).startswith(b"* OK")
        s.sendall(b"a1 LOGIN alice wrong-password\r\n")
        assert read_line(s).startswith(b"a1 NO [AUTHENTICATIONFAILED]")
        s.sendall(b"a2 LOGOUT\r\n")
        read_until_eof(s)
    dovecot.wait_log(r"imap-login: .*rip=" + re.escape(source) + ",")


def test_dovecot_logs_the_original_pop3_client_address_sent_with_proxy_protocol_v2(
    run_listener, dovecot
):
    svc = service(
        "mail/pop3",
        "POP3",
        backend_port=dovecot.pop3_proxy_port,
        backend={"proxy_protocol": "v2"},
        allow=ALLOWED,
    )
    run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.10") as s:
        assert read_line(s).startswith(b"+OK")
        s.sendall(b"USER alice\r\n")
        assert read_line(s).startswith(b"+OK")
        s.sendall(b"PASS " + MAIL_PASSWORD.encode() + b"\r\n")
        assert read_line(s).startswith(b"+OK")
        s.sendall(b"QUIT\r\n")
        read_until_eof(s)
    dovecot.wait_log(r"pop3-login: Info: Login: user=<alice>.*rip=127\.0\.0\.10,")
