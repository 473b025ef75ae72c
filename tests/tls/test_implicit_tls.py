"""The implicit-TLS mail services: the listener terminates TLS with the certificate files,
answers refusals inside the TLS session in the protocol's words, and relays admitted
sessions to real backends; STARTTLS on the plain services passes through to the backend."""

from __future__ import annotations

import imaplib
import nntplib
import poplib
import smtplib
import ssl

import pytest

from mailwarden.listener import proxyproto
from tests.support import ldap_http_xmpp_servers as srv
from tests.support import wire
from tests.support.listener import service, wait_until

pytestmark = pytest.mark.servers

NOBODY = ("10.0.0.0/8",)  # an allow list without loopback: every test client is denied


def tls_service(kind: str, tls: wire.ListenerTLS, **fields):
    return service(kind=kind, tls=tls.files, **fields)


# -- refusals inside TLS ---------------------------------------------------------------------


def smtps(port: int, tls: wire.ListenerTLS) -> smtplib.SMTP_SSL:
    # "localhost" is on the listener's certificate and resolves to the loopback it listens on.
    return smtplib.SMTP_SSL("localhost", port, context=tls.client(), timeout=10)


def open_client(kind: str, port: int, tls: wire.ListenerTLS):
    ctx = tls.client()
    # Clients connect to 127.0.0.1 but check the listener's name: resolve it by hand.
    ctx.check_hostname = False
    if kind == "SMTPS":
        return smtplib.SMTP_SSL(wire.HOST, port, context=ctx, timeout=10)
    if kind == "POP3S":
        return poplib.POP3_SSL(wire.HOST, port, context=ctx, timeout=10)
    if kind == "IMAPS":
        return imaplib.IMAP4_SSL(wire.HOST, port, ssl_context=ctx, timeout=10)
    return nntplib.NNTP_SSL(wire.HOST, port, ssl_context=ctx, timeout=10, readermode=False)


REFUSALS = {
    # kind: (exception the client library raises, what it carries) for over-cap / denied
    "SMTPS": (
        (smtplib.SMTPConnectError, "421 4.7.0"),
        (smtplib.SMTPConnectError, "554 5.7.1"),
    ),
    "POP3S": (
        (poplib.error_proto, "-ERR [SYS/TEMP]"),
        (poplib.error_proto, "-ERR [SYS/PERM]"),
    ),
    "IMAPS": (
        ((imaplib.IMAP4.error, imaplib.IMAP4.abort), "BYE [UNAVAILABLE]"),
        ((imaplib.IMAP4.error, imaplib.IMAP4.abort), "BYE Access denied"),
    ),
    "NNTPS": (
        (nntplib.NNTPTemporaryError, "400 "),
        (nntplib.NNTPPermanentError, "502 "),
    ),
}


def described(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPConnectError):
        return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    return " ".join(a.decode() if isinstance(a, bytes) else str(a) for a in exc.args)


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_client_over_the_cap_is_refused_inside_tls_in_the_protocols_words(
    run_listener, listener_tls, silent_backend, kind
):
    lt = run_listener(
        tls_service(kind, listener_tls, backend_port=silent_backend, max_connections=1)
    )
    port = wire.port_of(lt)
    holder = wire.connect_tls(port, listener_tls.client())
    wait_until(lambda: lt.active("test/svc") == 1, what="one admitted session")
    exc_type, words = REFUSALS[kind][0]
    with pytest.raises(exc_type) as caught:
        open_client(kind, port, listener_tls)
    assert words in described(caught.value)
    holder.close()


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_denied_client_is_refused_inside_tls_in_the_protocols_words(
    run_listener, listener_tls, kind
):
    lt = run_listener(tls_service(kind, listener_tls, allow=NOBODY))
    exc_type, words = REFUSALS[kind][1]
    with pytest.raises(exc_type) as caught:
        open_client(kind, wire.port_of(lt), listener_tls)
    assert words in described(caught.value)
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="denied") == 1


def test_the_smtps_refusal_is_read_through_a_verified_tls_session(run_listener, listener_tls):
    lt = run_listener(tls_service("SMTPS", listener_tls, allow=NOBODY))
    sock = wire.connect_tls(wire.port_of(lt), listener_tls.client())
    assert sock.version() in ("TLSv1.2", "TLSv1.3")
    assert ("DNS", wire.LISTENER_NAME) in sock.getpeercert()["subjectAltName"]
    assert wire.read_until(sock, b"\r\n").startswith(b"554 5.7.1 ")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_the_listener_refuses_tls_older_than_1_2(run_listener, listener_tls):
    lt = run_listener(tls_service("SMTPS", listener_tls, allow=NOBODY))
    ctx = listener_tls.client()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        wire.connect_tls(wire.port_of(lt), ctx)
    wait_until(
        lambda: (
            lt.metric(
                "mailwarden_connections_total", service="test/svc", outcome="handshake_failed"
            )
            == 1
        ),
        what="the failed handshake counted",
    )


def test_the_listener_serves_its_certificate_whatever_name_the_client_asks_for(
    run_listener, listener_tls
):
    lt = run_listener(tls_service("SMTPS", listener_tls, allow=NOBODY))
    for name in ("mail.example.test", "example.test", "localhost"):
        sock = wire.connect_tls(wire.port_of(lt), listener_tls.client(), server_name=name)
        assert wire.read_until(sock, b"\r\n").startswith(b"554 ")


# -- admitted sessions relayed to real backends ----------------------------------------------


@pytest.mark.parametrize("kind", ["SMTP", "Submission", "SMTPS"])
def test_a_message_sent_through_the_smtp_family_reaches_the_backend(
    run_listener, listener_tls, smtp_sink, kind
):
    fields = {"tls": listener_tls.files} if kind == "SMTPS" else {}
    lt = run_listener(service(kind=kind, backend_port=smtp_sink.port, **fields))
    port = wire.port_of(lt)
    marker = f"relayed-{kind}".encode()
    if kind == "SMTPS":
        client: smtplib.SMTP = smtps(port, listener_tls)
    else:
        client = smtplib.SMTP(wire.HOST, port, timeout=10)
    with client:
        client.sendmail("a@example.test", ["b@example.test"], b"Subject: t\r\n\r\n" + marker)
    smtp_sink.inbox.wait_for(marker)


@pytest.mark.parametrize("with_certificate", [False, True])
def test_smtp_starttls_passes_through_to_the_backend_and_shows_its_certificate(
    run_listener, smtp_sink, test_ca, listener_tls, with_certificate
):
    # A STARTTLS service that has a certificate (for the NNTP gate's sake, or because the
    # MailService names a Secret) still speaks plain first and leaves STARTTLS to the backend.
    fields = {"tls": listener_tls.files} if with_certificate else {}
    lt = run_listener(service(kind="Submission", backend_port=smtp_sink.port, **fields))
    with smtplib.SMTP(wire.HOST, wire.port_of(lt), timeout=10) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo()
        peer = client.sock.getpeercert()
        assert ("DNS", srv.BACKEND_NAME) in peer["subjectAltName"]
        client.sendmail("a@example.test", ["b@example.test"], b"Subject: t\r\n\r\nstarttls-ok")
    smtp_sink.inbox.wait_for(b"starttls-ok")


def tls_after_proxy_header(port: int, ctx: ssl.SSLContext, header: bytes) -> bytes:
    """Send a PROXY header and the ClientHello in one write (as a load balancer may), finish
    the handshake by hand and return the first line the server says inside TLS."""
    sock = wire.connect(port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=wire.LISTENER_NAME)
    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            out = outgoing.read()
            sock.sendall(header + out if first else out)
            first = False
            data = sock.recv(65536)
            assert data, "the listener closed during the handshake"
            incoming.write(data)
    sock.sendall(outgoing.read())
    said = b""
    while b"\r\n" not in said:
        try:
            said += tls.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        data = sock.recv(65536)
        assert data, f"closed after {said!r}"
        incoming.write(data)
    return said


def test_a_client_hello_sent_with_the_proxy_header_is_not_lost(run_listener, listener_tls):
    lt = run_listener(
        tls_service(
            "SMTPS", listener_tls, allow=wire.ALLOWED, proxy_protocol_from=("127.0.0.1/32",)
        )
    )
    port = wire.port_of(lt)
    header = proxyproto.build("v1", (wire.DENIED_SOURCE, 40000), (wire.HOST, port))
    said = tls_after_proxy_header(port, listener_tls.client(), header)
    # The address from the PROXY header is the one refused, inside TLS.
    assert said.startswith(b"554 5.7.1 ")
