"""Failed logins inside implicit TLS the listener terminates (IMAPS, POP3S) in front of a
real Dovecot: the listener reads the plaintext, counts each failure and bans the address;
the banned client is refused inside TLS in the protocol's words. Real clients (imaplib,
poplib) from their own 127.0.0.x source addresses."""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl

import pytest

from mailwarden.listener import config as lc
from tests.support import wire
from tests.support.listener import service
from tests.support.mail_servers import MAIL_PASSWORD, MAIL_USER

pytestmark = pytest.mark.servers

BAN = lc.AutoBan(after_failures=3, within_seconds=30, ban_seconds=60)


class IMAPSFrom(imaplib.IMAP4_SSL):
    """imaplib's IMAPS client, connecting from a chosen source address."""

    def __init__(self, source: str, port: int, ctx: ssl.SSLContext) -> None:
        self._source = source
        super().__init__(wire.HOST, port, ssl_context=ctx, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, (self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined, no-any-return]


class POP3SFrom(poplib.POP3_SSL):
    """poplib's POP3S client, connecting from a chosen source address."""

    def __init__(self, source: str, port: int, ctx: ssl.SSLContext) -> None:
        self._source = source
        super().__init__(wire.HOST, port, context=ctx, timeout=10)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, (self._source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined, no-any-return]


def client_context(tls: wire.ListenerTLS) -> ssl.SSLContext:
    ctx = tls.client()
    ctx.check_hostname = False  # clients connect to 127.0.0.1; the certificate names hosts
    return ctx


def test_failed_imaps_logins_ban_the_address_which_is_then_refused_inside_tls(
    run_listener, listener_tls, dovecot
):
    svc = service(
        "mail/imaps", "IMAPS", backend_port=dovecot.imap_port, tls=listener_tls.files, auto_ban=BAN
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    ctx = client_context(listener_tls)
    for _ in range(3):
        client = IMAPSFrom("127.0.0.51", port, ctx)
        with pytest.raises(
            imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED|Authentication failed"
        ):
            client.login(MAIL_USER, "wrong")
        client.logout()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\] Banned"):
        IMAPSFrom("127.0.0.51", port, ctx)
    good = IMAPSFrom("127.0.0.52", port, ctx)
    assert good.login(MAIL_USER, MAIL_PASSWORD)[0] == "OK"
    good.logout()
    assert lt.metric("mailwarden_login_failures_total", service="mail/imaps") == 3
    assert lt.metric("mailwarden_connections_total", service="mail/imaps", outcome="banned") == 1


def test_failed_pop3s_logins_ban_the_address_which_is_then_refused_inside_tls(
    run_listener, listener_tls, dovecot
):
    svc = service(
        "mail/pop3s", "POP3S", backend_port=dovecot.pop3_port, tls=listener_tls.files, auto_ban=BAN
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    ctx = client_context(listener_tls)
    client = POP3SFrom("127.0.0.53", port, ctx)
    for _ in range(3):
        client.user(MAIL_USER)
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            client.pass_("wrong")
    client.close()
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Banned"):
        POP3SFrom("127.0.0.53", port, ctx)
    good = POP3SFrom("127.0.0.54", port, ctx)
    good.user(MAIL_USER)
    assert good.pass_(MAIL_PASSWORD).startswith(b"+OK")
    good.quit()
    assert lt.metric("mailwarden_login_failures_total", service="mail/pop3s") == 3
    assert lt.metric("mailwarden_bans_total", service="mail/pop3s") == 1
