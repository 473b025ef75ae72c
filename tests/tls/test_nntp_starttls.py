"""NNTP without anonymous access keeps its reader gate on encrypted sessions: the listener
offers STARTTLS itself (RFC 4642), encrypts the reader's leg, and goes on answering 480 to
reading commands until AUTHINFO succeeds against INN. NNTPS terminates TLS in the listener
with the same gate behind it."""

from __future__ import annotations

import nntplib

import pytest

from tests.support import mail_servers as servers
from tests.support import wire
from tests.support.listener import service

pytestmark = pytest.mark.servers


def nntp_service(kind: str, inn, tls: wire.ListenerTLS | None, **fields):
    return service(kind=kind, backend_port=inn.auth_port, tls=tls.files if tls else None, **fields)


def test_the_listener_offers_starttls_to_nntp_readers_and_keeps_the_gate_behind_it(
    run_listener, inn, listener_tls
):
    lt = run_listener(nntp_service("NNTP", inn, listener_tls))
    with nntplib.NNTP(wire.HOST, wire.port_of(lt), readermode=False, timeout=10) as news:
        assert "STARTTLS" in news.getcapabilities()
        ctx = listener_tls.client()
        ctx.check_hostname = False  # connected by address; the name is checked below
        news.starttls(ctx)
        assert ("DNS", wire.LISTENER_NAME) in news.sock.getpeercert()["subjectAltName"]
        # nntplib asked for the capabilities again over TLS: no second STARTTLS on offer.
        assert "STARTTLS" not in news.getcapabilities()
        with pytest.raises(nntplib.NNTPTemporaryError) as refused:
            news.group(servers.NEWS_GROUP)
        assert refused.value.response.startswith("480")
        news.login(servers.NEWS_USER, servers.NEWS_PASSWORD, usenetrc=False)
        _, count, _, _, name = news.group(servers.NEWS_GROUP)
        assert name == servers.NEWS_GROUP and count >= 1
        _, info = news.article(servers.NEWS_MESSAGE_ID)
        assert servers.NEWS_BODY.encode() in b"\n".join(info.lines)
    assert lt.metric("mailwarden_nntp_auth_total", service="test/svc", result="success") == 1


def test_starttls_is_refused_with_580_when_the_listener_has_no_certificate(run_listener, inn):
    lt = run_listener(nntp_service("NNTP", inn, None))
    sock = wire.connect(wire.port_of(lt))
    assert wire.read_until(sock, b"\r\n").startswith(b"20")
    sock.sendall(b"STARTTLS\r\n")
    assert wire.read_until(sock, b"\r\n") == b"580 Can not initiate TLS negotiation\r\n"


def test_nntps_terminates_tls_and_the_gate_still_demands_authinfo(run_listener, inn, listener_tls):
    lt = run_listener(nntp_service("NNTPS", inn, listener_tls))
    ctx = listener_tls.client()
    ctx.check_hostname = False
    with nntplib.NNTP_SSL(
        wire.HOST, wire.port_of(lt), ssl_context=ctx, readermode=False, timeout=10
    ) as news:
        assert "STARTTLS" not in news.getcapabilities()
        with pytest.raises(nntplib.NNTPTemporaryError) as refused:
            news.group(servers.NEWS_GROUP)
        assert refused.value.response.startswith("480")
        news.login(servers.NEWS_USER, servers.NEWS_PASSWORD, usenetrc=False)
        assert news.group(servers.NEWS_GROUP)[-1] == servers.NEWS_GROUP


def test_anonymous_nntps_relays_readers_to_inn_without_a_login(run_listener, inn, listener_tls):
    lt = run_listener(
        service(kind="NNTPS", backend_port=inn.port, tls=listener_tls.files, anonymous=True)
    )
    ctx = listener_tls.client()
    ctx.check_hostname = False
    with nntplib.NNTP_SSL(wire.HOST, wire.port_of(lt), ssl_context=ctx, timeout=10) as news:
        _, info = news.article(servers.NEWS_MESSAGE_ID)
        assert servers.NEWS_BODY.encode() in b"\n".join(info.lines)
