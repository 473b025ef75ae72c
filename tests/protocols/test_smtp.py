"""SMTP and Submission in front of a real Postfix: relay, refusals in SMTP's words, PROXY."""

from __future__ import annotations

import email
import imaplib
import smtplib
import socket

import pytest

from tests.support import refusals
from tests.support.listener import free_port, service, wait_until
from tests.support.mail_servers import MAIL_DOMAIN, MAIL_PASSWORD, MAIL_USER
from tests.support.raw_tcp import (
    closed_by_peer,
    connect,
    exchange,
    greeter,
    read_line,
    read_until_eof,
)

HOST = "mx.test.example"
DENIED = refusals.line("smtp", "denied", host=HOST)
BAD_SEQUENCE = refusals.line("smtp", "bad_sequence")
OVER_CAP = refusals.line("smtp", "over_cap", host=HOST)
UNAVAILABLE = refusals.line("smtp", "backend_down", host=HOST)
ALLOWED = ("127.0.0.1/32", "127.0.0.10/32", "127.0.0.23/32", "127.0.0.24/32")

pytestmark = pytest.mark.servers


def smtp_service(postfix, **fields):
    fields.setdefault("allow", ALLOWED)
    return service(
        "mail/smtp", fields.pop("kind", "SMTP"), backend_port=postfix.port, hostname=HOST, **fields
    )


def test_an_allowed_client_sends_a_message_through_the_listener_to_postfix_and_reads_it_back_over_imap_through_dovecot(  # noqa: E501
    run_listener, postfix, dovecot
):
    smtp = smtp_service(postfix, kind="Submission")
    imap = service("mail/imap", "IMAP", backend_port=dovecot.imap_port, allow=ALLOWED)
    lt = run_listener(smtp, imap)
    subject = f"through the listener {free_port()}"
    message = f"From: bob@example.org\r\nTo: {MAIL_USER}@{MAIL_DOMAIN}\r\nSubject: {subject}\r\n\r\nHello Alice.\r\n"  # noqa: E501
    with smtplib.SMTP("127.0.0.1", smtp.listen[0].port, timeout=10) as client:
        code, banner = client.ehlo()
        assert code == 250 and banner.startswith(b"mx.test.example")
        assert client.sendmail("bob@example.org", [f"{MAIL_USER}@{MAIL_DOMAIN}"], message) == {}
    postfix.wait_log(r"status=sent \(delivered to maildir\)")

    def fetch_subjects() -> list[str]:
        box = imaplib.IMAP4("127.0.0.1", imap.listen[0].port, timeout=10)
        try:
            box.login(MAIL_USER, MAIL_PASSWORD)
            box.select("INBOX", readonly=True)
            _, ids = box.search(None, "ALL")
            subjects = []
            for i in ids[0].split():
                _, data = box.fetch(i, "(RFC822)")
                raw = data[0][1]  # type: ignore[index]
                subjects.append(email.message_from_bytes(raw)["Subject"])
            return subjects
        finally:
            box.logout()

    wait_until(lambda: subject in fetch_subjects(), what="the message in the IMAP inbox")
    assert lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="accepted") == 1
    assert lt.metric(
        "mailwarden_relayed_bytes_total", service="mail/smtp", direction="upstream"
    ) > len(message)
    lt.wait_metric("mailwarden_connections_active", 0, service="mail/smtp")


@pytest.mark.parametrize("kind", ["SMTP", "Submission"])
def test_a_denied_address_gets_a_554_greeting_then_503_to_everything_but_quit(
    run_listener, postfix, kind
):
    svc = smtp_service(postfix, kind=kind)
    lt = run_listener(svc)
    port = svc.listen[0].port
    with connect(port, source="127.0.0.66") as s:
        assert read_line(s) == DENIED
        assert exchange(s, b"EHLO client.example\r\n") == BAD_SEQUENCE
        assert exchange(s, b"MAIL FROM:<a@example.org>\r\n") == BAD_SEQUENCE
        assert exchange(s, b"RCPT TO:<alice@test.example>\r\n") == BAD_SEQUENCE
        assert exchange(s, b"garbage \x00\xff\r\n") == BAD_SEQUENCE
        s.sendall(b"QUIT\r\n")
        assert read_until_eof(s) == refusals.line("smtp", "bye")
    # smtplib understands it as a refusal at connection time.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.67", 0), timeout=5)
    assert refused.value.smtp_code == 554
    assert lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="denied") == 2
    assert lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="accepted") == 0


def test_an_over_long_line_in_the_refusal_conversation_gets_500_and_the_session_goes_on(
    run_listener, postfix
):
    svc = smtp_service(postfix)
    run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.66") as s:
        assert read_line(s) == DENIED
        s.sendall(b"EHLO " + b"x" * 5000 + b"\r\n")
        assert read_line(s) == b"500 5.5.2 Error: line too long\r\n"
        assert exchange(s, b"NOOP\r\n") == BAD_SEQUENCE
        s.sendall(b"QUIT\r\n")
        assert read_until_eof(s) == refusals.line("smtp", "bye")


def test_a_refused_client_that_keeps_talking_is_cut_off_with_421_after_twenty_503s(
    run_listener, postfix
):
    svc = smtp_service(postfix)
    run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.66") as s:
        assert read_line(s) == DENIED
        s.sendall(b"NOOP\r\n" * 25)
        tail = read_until_eof(s)
    assert tail == BAD_SEQUENCE * 20 + refusals.line("smtp", "too_many_errors", host=HOST)


def test_over_the_service_cap_a_client_gets_421_too_many_connections_and_is_closed(
    run_listener, postfix
):
    svc = smtp_service(postfix, max_connections=1)
    lt = run_listener(svc)
    port = svc.listen[0].port
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as first:
        assert first.noop()[0] == 250
        with connect(port, source="127.0.0.10") as second:
            assert read_until_eof(second) == OVER_CAP
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=5)
        assert refused.value.smtp_code == 421
        assert first.noop()[0] == 250  # the admitted session is untouched
    assert lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="over_cap") == 2
    lt.wait_metric("mailwarden_connections_active", 0, service="mail/smtp")
    # The slot is free again.
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.10", 0)) as again:
        assert again.noop()[0] == 250


def test_over_the_per_address_cap_only_that_address_is_refused(run_listener, postfix):
    svc = smtp_service(postfix, max_connections_per_address=1)
    lt = run_listener(svc)
    port = svc.listen[0].port
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as first:
        assert first.noop()[0] == 250
        with connect(port, source="127.0.0.1") as same:
            assert read_until_eof(same) == OVER_CAP
        with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.10", 0)) as other:
            assert other.noop()[0] == 250
    assert (
        lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="over_address_cap")
        == 1
    )


def test_with_the_backend_down_clients_get_421_4_4_1_and_the_listener_keeps_serving(
    run_listener, backend
):
    dead = free_port()
    svc = service("mail/smtp", "SMTP", backend_port=dead, hostname=HOST)
    lt = run_listener(svc)
    port = svc.listen[0].port
    for _ in range(3):
        with connect(port) as s:
            assert read_until_eof(s) == UNAVAILABLE
    assert (
        lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="backend_error") == 3
    )
    assert lt.active("mail/smtp") == 0
    # The backend comes back on the same port: the next client is relayed to it.
    backend(greeter(b"220 back again ESMTP\r\n"), port=dead)
    with connect(port) as s:
        assert read_line(s) == b"220 back again ESMTP\r\n"
    assert lt.metric("mailwarden_connections_total", service="mail/smtp", outcome="accepted") == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_postfix_logs_the_original_client_address_sent_with_proxy_protocol(
    run_listener, postfix, version
):
    source = "127.0.0.23" if version == "v1" else "127.0.0.24"
    svc = service(
        "mail/smtp",
        "SMTP",
        backend_port=postfix.proxy_port,
        backend={"proxy_protocol": version},
        allow=ALLOWED,
        hostname=HOST,
    )
    run_listener(svc)
    with smtplib.SMTP(
        "127.0.0.1", svc.listen[0].port, source_address=(source, 0), timeout=10
    ) as client:
        assert client.helo("proxied.example")[0] == 250
    postfix.wait_log(rf"connect from unknown\[{source}\]")


def test_a_silent_refused_client_is_closed_after_the_refusal_timeout(run_listener, postfix):
    svc = smtp_service(postfix, timeouts={"refusal": 0.3})
    run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.66") as s:
        assert read_line(s) == DENIED
        assert closed_by_peer(s, timeout=3)


def test_postfix_answers_a_whole_conversation_sent_with_an_early_half_close(run_listener, postfix):
    svc = smtp_service(postfix)
    run_listener(svc)
    with connect(svc.listen[0].port) as s:
        s.sendall(b"HELO scripted.example\r\nQUIT\r\n")
        s.shutdown(socket.SHUT_WR)
        replies = read_until_eof(s, timeout=10).splitlines()
    assert replies == [
        b"220 mx.test.example ESMTP Postfix",
        b"250 mx.test.example",
        b"221 2.0.0 Bye",
    ]
