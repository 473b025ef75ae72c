"""Issue 12, point 9 (TLS): a client that offers only TLS 1.0 or 1.1 to an implicit-TLS
service is told so with a `protocol_version` alert (RFC 8446 §4.2.1), not a bare close (what
the starting code gave: OpenSSL wrote the alert, the event loop's TLS layer dropped it). A
TLS 1.2+ client on the same service is unaffected."""

from __future__ import annotations

import socket
import ssl
import warnings

import pytest

from tests.support.attack import connect, recv_until
from tests.support.listener import service
from tests.support.misbehaving import Behaviour


def old_client(high: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")  # lets OpenSSL offer TLS 1.0/1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = high
    return ctx


@pytest.mark.timeout(60)
@pytest.mark.parametrize("high", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_a_tls_1_0_or_1_1_client_gets_the_protocol_version_alert(
    misbehaving_backend, listener_process, listener_tls, high
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(
        service("attack/smtps", "SMTPS", backend_port=b.port, tls=listener_tls.files)
    )
    raw = connect(lp.port())
    with pytest.raises(ssl.SSLError) as caught:
        old_client(high).wrap_socket(raw, server_hostname="mail.example")
    raw.close()
    assert caught.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", caught.value
    assert (
        lp.wait_metric(
            "mailwarden_connections_total", 1, service="attack/smtps", outcome="handshake_failed"
        )
        == 1
    )
    # A current client on the same service is relayed as before.
    with listener_tls.client().wrap_socket(
        socket.create_connection(("127.0.0.1", lp.port()), timeout=5),
        server_hostname="localhost",
    ) as s:
        assert recv_until(s, b"\r\n") == b"220 backend\r\n"


@pytest.mark.timeout(60)
def test_a_tls_1_0_reader_at_the_nntp_gates_starttls_gets_the_alert_too(
    misbehaving_backend, listener_process, listener_tls
):
    news = misbehaving_backend(Behaviour.NNTP)
    lp = listener_process(
        service("attack/nntp", "NNTP", backend_port=news.port, tls=listener_tls.files)
    )
    raw = connect(lp.port())
    assert recv_until(raw, b"\r\n") == b"200 news ready\r\n"
    raw.sendall(b"STARTTLS\r\n")
    assert recv_until(raw, b"\r\n") == b"382 Continue with TLS negotiation\r\n"
    with pytest.raises(ssl.SSLError) as caught:
        old_client(ssl.TLSVersion.TLSv1).wrap_socket(raw, server_hostname="mail.example")
    raw.close()
    assert caught.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", caught.value
    assert lp.wait_metric("mailwarden_connections_active", 0, service="attack/nntp") == 0
    # A current reader upgrades as before.
    with connect(lp.port()) as plain:
        recv_until(plain, b"\r\n")
        plain.sendall(b"STARTTLS\r\n")
        recv_until(plain, b"\r\n")
        with listener_tls.client().wrap_socket(plain, server_hostname="localhost") as s:
            s.sendall(b"GROUP x\r\n")
            assert recv_until(s, b"\r\n") == b"480 Authentication required\r\n"
