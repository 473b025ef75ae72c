"""The login watchers, driven by transcripts of real sessions (as Postfix and Dovecot answer),
without sockets. `C:` lines go from client to server, `S:` lines from server to client; each
line is fed as its own chunk unless a test says otherwise."""

from __future__ import annotations

import pytest

from mailwarden.listener import catalogue
from mailwarden.listener.protocols import auth_watch_for, authwatch, imap, pop3, smtp


def play(watch: authwatch.LineWatch, transcript: str) -> list[int]:
    """Failures reported after each server line; stops feeding once the watcher is done
    (as the session does)."""
    seen = []
    for raw in transcript.strip().splitlines():
        who, _, text = raw.strip().partition(": ")
        if watch.done:
            break
        data = text.encode() + b"\r\n"
        if who == "C":
            watch.from_client(data)
        else:
            seen.append(watch.from_server(data))
    return seen


# -- SMTP -----------------------------------------------------------------------------------

SMTP_FAILED_TWICE_THEN_OK = """
S: 220 mx.example ESMTP Postfix
C: EHLO client.example
S: 250-mx.example
S: 250-PIPELINING
S: 250-AUTH PLAIN LOGIN
S: 250 8BITMIME
C: AUTH PLAIN AHVzZXIAd3Jvbmc=
S: 535 5.7.8 Error: authentication failed: authentication failure
C: AUTH LOGIN
S: 334 VXNlcm5hbWU6
C: dXNlcg==
S: 334 UGFzc3dvcmQ6
C: d3Jvbmc=
S: 535 5.7.8 Error: authentication failed: authentication failure
C: AUTH PLAIN AHVzZXIAcmlnaHQ=
S: 235 2.7.0 Authentication successful
C: MAIL FROM:<a@example>
S: 535 this line is never read
"""


def test_smtp_counts_each_535_and_stops_after_235():
    watch = smtp.AuthWatch()
    assert sum(play(watch, SMTP_FAILED_TWICE_THEN_OK)) == 2
    assert watch.done


def test_smtp_stops_when_the_client_starts_tls_the_listener_does_not_see():
    watch = smtp.AuthWatch()
    play(
        watch,
        """
        S: 220 mx.example ESMTP
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        """,
    )
    assert watch.done


def test_smtp_stops_when_the_session_sends_mail_and_never_reads_the_message():
    watch = smtp.AuthWatch()
    play(
        watch,
        """
        S: 220-mx.example ESMTP
        S: 220 greeting over two lines
        C: EHLO x
        S: 250 mx.example
        C: MAIL FROM:<a@example>
        S: 250 2.1.0 Ok
        C: RCPT TO:<b@example>
        S: 250 2.1.5 Ok
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        """,
    )
    assert watch.done


def test_smtp_replies_split_across_chunks_and_multiline_replies_are_read_whole():
    watch = smtp.AuthWatch()
    assert watch.from_server(b"220 mx\r\n250-a\r\n250") == 0
    assert watch.from_server(b" b\r\n53") == 0
    assert watch.from_server(b"5 5.7.8 no\r\n535-x\r\n") == 1
    assert watch.from_server(b"535 5.7.8 no\r\n") == 1


def test_a_greeting_that_refuses_with_535_is_not_a_failed_login():
    assert play(smtp.AuthWatch(), "S: 535 odd greeting") == [0]


# -- POP3 -----------------------------------------------------------------------------------

POP3_USER_PASS = """
S: +OK Dovecot ready.
C: CAPA
S: +OK
S: CAPA
S: TOP
S: -ERR this capability line is inside the list, not a reply
S: SASL PLAIN
S: .
C: USER alice
S: +OK
C: PASS wrong
S: -ERR [AUTH] Authentication failed.
C: USER alice
S: +OK
C: PASS right
S: +OK Logged in.
C: RETR 1
S: -ERR never read
"""


def test_pop3_counts_failed_pass_and_ignores_capability_text():
    watch = pop3.AuthWatch()
    assert sum(play(watch, POP3_USER_PASS)) == 1
    assert watch.done


def test_pop3_sasl_exchanges_belong_to_their_auth_command():
    watch = pop3.AuthWatch()
    seen = play(
        watch,
        """
        S: +OK ready
        C: AUTH PLAIN
        S: +
        C: AGFsaWNlAHdyb25n
        S: -ERR [AUTH] Authentication failed.
        C: AUTH PLAIN AGFsaWNlAHdyb25n
        S: -ERR [AUTH] Authentication failed.
        C: AUTH
        S: +OK
        S: PLAIN
        S: .
        C: APOP alice c4c9334bac560ecc979e58001b3e22fb
        S: -ERR [AUTH] Authentication failed.
        """,
    )
    assert sum(seen) == 3
    assert not watch.done


def test_pop3_pipelined_commands_are_paired_with_their_replies_in_order():
    watch = pop3.AuthWatch()
    assert watch.from_server(b"+OK ready\r\n") == 0
    watch.from_client(b"USER a\r\nPASS b\r\nNOOP\r\n")
    assert watch.from_server(b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n-ERR no\r\n") == 1


def test_pop3_stops_after_stls():
    watch = pop3.AuthWatch()
    play(watch, "S: +OK ready\nC: STLS\nS: +OK Begin TLS negotiation now.")
    assert watch.done


# -- IMAP -----------------------------------------------------------------------------------

IMAP_LOGINS = """
S: * OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] Dovecot ready.
C: a1 CAPABILITY
S: * CAPABILITY IMAP4rev1 AUTH=PLAIN
S: a1 OK Pre-login capabilities listed, post-login capabilities have more.
C: a2 LOGIN alice wrong
S: a2 NO [AUTHENTICATIONFAILED] Authentication failed.
C: a3 AUTHENTICATE PLAIN
S: +
C: AGFsaWNlAHdyb25n
S: a3 NO [AUTHENTICATIONFAILED] Authentication failed.
C: a4 NOOP
S: a4 NO no such thing, but not a login
C: a5 LOGIN alice right
S: a5 OK [CAPABILITY IMAP4rev1] Logged in
C: a6 SELECT INBOX
S: a6 NO never read
"""


def test_imap_counts_tagged_no_to_login_and_authenticate_only():
    watch = imap.AuthWatch()
    assert sum(play(watch, IMAP_LOGINS)) == 2
    assert watch.done


def test_imap_pipelined_logins_are_paired_by_tag():
    watch = imap.AuthWatch()
    watch.from_server(b"* OK ready\r\n")
    watch.from_client(b"x LOGIN a b\r\ny LOGIN a c\r\n")
    assert (
        watch.from_server(b"y NO [AUTHENTICATIONFAILED] no\r\nx NO [AUTHENTICATIONFAILED] no\r\n")
        == 2
    )


def test_imap_stops_at_starttls_and_at_preauth():
    watch = imap.AuthWatch()
    play(watch, "S: * OK ready\nC: t STARTTLS\nS: t OK Begin TLS negotiation now.")
    assert watch.done
    watch = imap.AuthWatch()
    play(watch, "S: * PREAUTH logged in already")
    assert watch.done


# -- shared ---------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [smtp.AuthWatch, pop3.AuthWatch, imap.AuthWatch])
def test_every_watcher_gives_up_after_its_budget(factory):
    watch = factory()
    sent = 0
    while not watch.done:
        watch.from_client(b"NOOP " + b"x" * 100 + b"\r\n")
        sent += 1
        assert sent * 107 <= authwatch.BUDGET + 107
    assert watch.from_server(b"535 x\r\na NO x\r\n-ERR x\r\n") == 0


@pytest.mark.parametrize("factory", [smtp.AuthWatch, pop3.AuthWatch, imap.AuthWatch])
def test_an_over_long_line_is_skipped_not_buffered(factory):
    watch = factory()
    watch.from_server(b"x" * (authwatch.LINE_LIMIT * 4))
    assert watch.from_server(b"\r\n") == 0


def test_the_protocols_with_watchers():
    watched = {w for w in catalogue.Wire if auth_watch_for(w) is not None}
    assert watched == {catalogue.Wire.SMTP, catalogue.Wire.POP3, catalogue.Wire.IMAP}
