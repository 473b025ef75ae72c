"""NNTP in front of a real INN: the reader gate (RFC 4643's 480 until AUTHINFO succeeds
against INN), anonymous reading, and refusals in RFC 3977's words.

The gate is shown in front of INN's anonymous port: INN itself would let the reader in, so
every 480 the client gets can only come from the listener. AUTHINFO is checked by INN
(ckpasswd against a password file), the same way in front of the port that requires it."""

from __future__ import annotations

import socket
import warnings

import pytest

with warnings.catch_warnings():
    # Deprecated in Python 3.11 (removed in 3.13), still the standard NNTP client here.
    warnings.simplefilter("ignore", DeprecationWarning)
    import nntplib

from tests.support import refusals
from tests.support.listener import free_port, service
from tests.support.mail_servers import (
    NEWS_BODY,
    NEWS_GROUP,
    NEWS_MESSAGE_ID,
    NEWS_PASSWORD,
    NEWS_USER,
)
from tests.support.raw_tcp import connect, exchange, read_line, read_until_eof

AUTH_REQUIRED = refusals.line("nntp", "auth_required")
DENIED = refusals.line("nntp", "denied")
OVER_CAP = refusals.line("nntp", "over_cap")
UNAVAILABLE = refusals.line("nntp", "backend_down")

pytestmark = pytest.mark.servers


def auth_results(lt, result: str) -> float:
    return lt.metric("mailwarden_nntp_auth_total", service="news/nntp", result=result)


def test_without_anonymous_access_reading_commands_get_480_until_authinfo_succeeds(
    run_listener, inn
):
    svc = service("news/nntp", "NNTP", backend_port=inn.port, anonymous=False)
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_line(s).startswith(b"201 ")  # reading only
        for command in (
            b"GROUP test.news\r\n",
            b"ARTICLE " + NEWS_MESSAGE_ID.encode() + b"\r\n",
            b"LIST\r\n",
            b"LISTGROUP test.news\r\n",
            b"OVER 1-10\r\n",
            b"HEAD 1\r\n",
            b"STAT 1\r\n",
            b"NEWNEWS * 20000101 000000\r\n",
            b"POST\r\n",
        ):
            assert exchange(s, command) == AUTH_REQUIRED, command
        # What a reader may do before authenticating goes to INN.
        assert exchange(s, b"MODE READER\r\n").startswith(b"20")
        assert exchange(s, b"AUTHINFO USER " + NEWS_USER.encode() + b"\r\n") == (
            b"381 Enter password\r\n"
        )
        assert exchange(s, b"AUTHINFO PASS " + NEWS_PASSWORD.encode() + b"\r\n") == (
            b"281 Authentication succeeded\r\n"
        )
        assert exchange(s, b"GROUP test.news\r\n") == b"211 1 1 1 test.news\r\n"
        s.sendall(b"QUIT\r\n")
        assert read_until_eof(s) == b"205 Bye!\r\n"
    assert auth_results(lt, "success") == 1
    assert auth_results(lt, "failure") == 0


def test_nntplib_reads_the_article_after_logging_in_through_the_gate(run_listener, inn):
    svc = service("news/nntp", "NNTP", backend_port=inn.auth_port)
    lt = run_listener(svc)
    with nntplib.NNTP("127.0.0.1", svc.listen[0].port, timeout=10) as client:
        with pytest.raises(nntplib.NNTPTemporaryError, match="480"):
            client.group(NEWS_GROUP)
        client.login(NEWS_USER, NEWS_PASSWORD)
        _, count, _, _, _ = client.group(NEWS_GROUP)
        assert count == 1
        _, article = client.article(NEWS_MESSAGE_ID)
        assert article.lines[-1] == NEWS_BODY.encode()
    assert auth_results(lt, "success") == 1


def test_a_wrong_password_is_refused_by_inn_and_the_reader_stays_gated(run_listener, inn):
    svc = service("news/nntp", "NNTP", backend_port=inn.port)
    lt = run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_line(s).startswith(b"201 ")  # reading only
        assert exchange(s, b"AUTHINFO USER " + NEWS_USER.encode() + b"\r\n").startswith(b"381")
        assert exchange(s, b"AUTHINFO PASS wrong\r\n").startswith(b"481")
        assert exchange(s, b"GROUP test.news\r\n") == AUTH_REQUIRED
        assert exchange(s, b"ARTICLE 1\r\n") == AUTH_REQUIRED
        s.sendall(b"QUIT\r\n")
        assert read_until_eof(s).startswith(b"205")
    assert auth_results(lt, "failure") == 1
    assert auth_results(lt, "success") == 0


def test_with_anonymous_access_reading_works_without_authentication(run_listener, inn):
    svc = service("news/nntp", "NNTP", backend_port=inn.port, anonymous=True)
    lt = run_listener(svc)
    with nntplib.NNTP("127.0.0.1", svc.listen[0].port, timeout=10) as client:
        _, count, first, last, name = client.group(NEWS_GROUP)
        assert (count, first, last, name) == (1, 1, 1, NEWS_GROUP)
        _, article = client.article(NEWS_MESSAGE_ID)
        assert article.lines[-1] == NEWS_BODY.encode()
    assert auth_results(lt, "success") == 0


def test_an_over_long_line_at_the_gate_gets_501_and_the_gate_holds(run_listener, inn):
    svc = service("news/nntp", "NNTP", backend_port=inn.port)
    run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_line(s).startswith(b"201 ")  # reading only
        s.sendall(b"GROUP " + b"x" * 4000 + b"\r\n")
        assert read_line(s) == b"501 Line too long\r\n"
        assert exchange(s, b"\x00\xff garbage\r\n") == AUTH_REQUIRED
        assert exchange(s, b"GROUP test.news\r\n") == AUTH_REQUIRED
        assert exchange(s, b"CAPABILITIES\r\n").startswith(b"101")


def test_a_denied_reader_gets_502_and_is_closed(run_listener, inn):
    svc = service("news/nntp", "NNTP", backend_port=inn.port, allow=("127.0.0.10/32",))
    lt = run_listener(svc)
    with connect(svc.listen[0].port, source="127.0.0.66") as s:
        assert read_until_eof(s) == DENIED
    with pytest.raises(nntplib.NNTPPermanentError, match="502"):
        nntplib.NNTP("127.0.0.1", svc.listen[0].port, timeout=5)
    assert lt.metric("mailwarden_connections_total", service="news/nntp", outcome="denied") == 2


def test_over_the_cap_a_reader_gets_400_and_is_closed(run_listener, inn):
    svc = service("news/nntp", "NNTP", backend_port=inn.port, anonymous=True, max_connections=1)
    lt = run_listener(svc)
    with nntplib.NNTP("127.0.0.1", svc.listen[0].port, timeout=10) as first:
        with connect(svc.listen[0].port, source="127.0.0.10") as s:
            assert read_until_eof(s) == OVER_CAP
        assert first.group(NEWS_GROUP)[1] == 1
    assert lt.metric("mailwarden_connections_total", service="news/nntp", outcome="over_cap") == 1


def test_with_inn_unreachable_a_reader_gets_400(run_listener):
    svc = service("news/nntp", "NNTP", backend_port=free_port())
    run_listener(svc)
    with connect(svc.listen[0].port) as s:
        assert read_until_eof(s) == UNAVAILABLE


def test_a_scripted_reader_that_half_closes_at_once_gets_every_answer_from_the_gate_and_inn(
    run_listener, inn
):
    svc = service("news/nntp", "NNTP", backend_port=inn.port)
    run_listener(svc)
    with connect(svc.listen[0].port) as s:
        s.sendall(b"CAPABILITIES\r\nGROUP test.news\r\nQUIT\r\n")
        s.shutdown(socket.SHUT_WR)
        lines = read_until_eof(s).splitlines(keepends=True)
    assert lines[0].startswith(b"201 ")
    assert lines[1].startswith(b"101 ")
    end = lines.index(b".\r\n")
    assert lines[end + 1 :] == [AUTH_REQUIRED, b"205 Bye!\r\n"]
