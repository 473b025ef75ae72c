"""Every service of the catalogue, through the listener, against its real backend: Postfix
(SMTP, Submission, SMTPS), Dovecot (POP3, POP3S, IMAP, IMAPS), INN (NNTP, NNTPS), slapd
(LDAP, LDAPS), nginx (HTTP, HTTPS) and Prosody (XMPP, XMPPS). The implicit-TLS services
terminate TLS in the listener with the test certificate; the backends are plain."""

from __future__ import annotations

import imaplib
import nntplib
import poplib
import smtplib
import ssl
import time
from collections.abc import Callable

import httpx
import ldap3
import pytest

from mailwarden.listener import catalogue
from tests.support import ldap_http_xmpp_servers as srv
from tests.support import mail_servers as servers
from tests.support import wire, xmpp_client
from tests.support.listener import service

pytestmark = pytest.mark.servers


def by_address(tls: wire.ListenerTLS) -> ssl.SSLContext:
    # The mail clients connect to 127.0.0.1 and cannot be told another name to check; the
    # certificate is still verified against the test CA.
    ctx = tls.client()
    ctx.check_hostname = False
    return ctx


def smtp_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    marker = f"catalogue-{time.monotonic_ns()}".encode()
    if tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            wire.HOST, port, context=by_address(tls), timeout=10
        )
    else:
        client = smtplib.SMTP(wire.HOST, port, timeout=10)
    with client:
        client.sendmail(
            "sender@example.test",
            [f"{servers.MAIL_USER}@{servers.MAIL_DOMAIN}"],
            b"Subject: catalogue\r\n\r\n" + marker,
        )
    deadline = time.monotonic() + 20
    while not any(marker in m for m in backends["mail_store"].messages()):
        assert time.monotonic() < deadline, "the message did not reach the mailbox"
        time.sleep(0.05)


def pop3_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    if tls:
        client: poplib.POP3 = poplib.POP3_SSL(wire.HOST, port, context=by_address(tls), timeout=10)
    else:
        client = poplib.POP3(wire.HOST, port, timeout=10)
    assert client.getwelcome().startswith(b"+OK")
    client.user(servers.MAIL_USER)
    client.pass_(servers.MAIL_PASSWORD)
    count, _ = client.stat()
    assert count >= 0
    client.quit()


def imap_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    if tls:
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            wire.HOST, port, ssl_context=by_address(tls), timeout=10
        )
    else:
        client = imaplib.IMAP4(wire.HOST, port, timeout=10)
    client.login(servers.MAIL_USER, servers.MAIL_PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def nntp_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    if tls:
        client: nntplib.NNTP = nntplib.NNTP_SSL(
            wire.HOST, port, ssl_context=by_address(tls), timeout=10
        )
    else:
        client = nntplib.NNTP(wire.HOST, port, timeout=10)
    with client:
        _, info = client.article(servers.NEWS_MESSAGE_ID)
        assert servers.NEWS_BODY.encode() in b"\n".join(info.lines)


def ldap_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    server = ldap3.Server(
        wire.HOST,
        port=port,
        use_ssl=tls is not None,
        get_info=ldap3.NONE,
        tls=ldap3.Tls(ca_certs_data=tls.ca.pem.decode(), validate=ssl.CERT_REQUIRED)
        if tls
        else None,
    )
    conn = ldap3.Connection(server, srv.LDAP_ADMIN, srv.LDAP_PASSWORD, auto_bind=True)
    assert conn.search(srv.LDAP_SUFFIX, "(uid=alice)", attributes=["mail"])
    assert conn.entries[0].mail.value == "alice@example.test"
    conn.unbind()


def http_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    url = f"https://localhost:{port}/" if tls else f"http://{wire.HOST}:{port}/"
    r = httpx.get(url, verify=tls.client() if tls else True, timeout=10)
    assert (r.status_code, r.text) == (200, srv.HTTP_BODY + "\n")


def xmpp_session(port: int, tls: wire.ListenerTLS | None, backends) -> None:
    ctx = tls.client() if tls else backends["test_ca"].client_context()
    out = xmpp_client.login(port, ctx, direct_tls=tls is not None)
    assert out.session_started and out.encrypted


SESSIONS: dict[catalogue.Wire, Callable[..., None]] = {
    catalogue.Wire.SMTP: smtp_session,
    catalogue.Wire.POP3: pop3_session,
    catalogue.Wire.IMAP: imap_session,
    catalogue.Wire.NNTP: nntp_session,
    catalogue.Wire.LDAP: ldap_session,
    catalogue.Wire.HTTP: http_session,
    catalogue.Wire.XMPP: xmpp_session,
}


def backend_port(kind: catalogue.ServiceKind, backends) -> int:
    return {
        catalogue.Wire.SMTP: lambda: backends["postfix"].port,
        catalogue.Wire.POP3: lambda: backends["dovecot"].pop3_port,
        catalogue.Wire.IMAP: lambda: backends["dovecot"].imap_port,
        catalogue.Wire.NNTP: lambda: backends["inn"].port,
        catalogue.Wire.LDAP: lambda: backends["slapd"].ports["ldap"],
        catalogue.Wire.HTTP: lambda: backends["nginx"].ports["http"],
        catalogue.Wire.XMPP: lambda: backends["prosody"].ports["c2s"],
    }[kind.wire]()


@pytest.fixture(scope="module")
def backends(postfix, dovecot, inn, mail_store, slapd, nginx, prosody, test_ca):
    return {
        "postfix": postfix,
        "dovecot": dovecot,
        "inn": inn,
        "mail_store": mail_store,
        "slapd": slapd,
        "nginx": nginx,
        "prosody": prosody,
        "test_ca": test_ca,
    }


def test_the_catalogue_has_fifteen_services():
    assert len(catalogue.SERVICE_NAMES) == 15
    assert set(SESSIONS) == set(catalogue.Wire)


@pytest.mark.parametrize("name", catalogue.SERVICE_NAMES)
def test_every_service_relays_a_real_client_session_to_its_real_backend(
    run_listener, listener_tls, backends, name
):
    kind = catalogue.kind_of(name)
    implicit = kind.tls is catalogue.TLSMode.IMPLICIT
    lt = run_listener(
        service(
            kind=name,
            backend_port=backend_port(kind, backends),
            tls=listener_tls.files if implicit else None,
            anonymous=kind.anonymous_allowed,
        )
    )
    SESSIONS[kind.wire](wire.port_of(lt), listener_tls if implicit else None, backends)
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="accepted") >= 1
