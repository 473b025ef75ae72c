"""XMPP and XMPPS through the listener, in front of a real Prosody, with slixmpp."""

from __future__ import annotations

import socket
import ssl
import xml.etree.ElementTree as ET

import pytest

from mailwarden.listener.protocols import xmpp
from tests.support import ldap_http_xmpp_servers as srv
from tests.support import wire, xmpp_client
from tests.support.listener import free_port, service, wait_until

pytestmark = pytest.mark.servers

STREAM_HEADER = (
    b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client'"
    b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


def say_and_listen(sock: socket.socket) -> bytes:
    sock.sendall(STREAM_HEADER)
    return sock.recv(4096)


def parse_stream(data: bytes) -> ET.Element:
    """The whole stream the listener sent, as XML (it must be well-formed and closed)."""
    return ET.fromstring(data.split(b"?>", 1)[1])


def test_an_admitted_xmpp_client_logs_in_to_prosody_with_starttls_passed_through(
    run_listener, prosody, test_ca
):
    lt = run_listener(service(kind="XMPP", backend_port=prosody.ports["c2s"]))
    out = xmpp_client.login(wire.port_of(lt), test_ca.client_context())
    assert out.session_started and out.encrypted
    assert out.stream_error is None


def test_xmpps_terminates_tls_and_relays_to_prosody(run_listener, prosody, listener_tls):
    lt = run_listener(
        service(kind="XMPPS", backend_port=prosody.ports["c2s"], tls=listener_tls.files)
    )
    out = xmpp_client.login(wire.port_of(lt), listener_tls.client(), direct_tls=True)
    assert out.session_started and out.encrypted


def test_xmpps_relays_to_prosodys_direct_tls_port_over_a_verified_backend_leg(
    run_listener, prosody, listener_tls
):
    lt = run_listener(
        service(
            kind="XMPPS",
            backend_port=prosody.ports["direct_tls"],
            tls=listener_tls.files,
            backend={
                "tls": {
                    "enabled": True,
                    "server_name": srv.XMPP_DOMAIN,
                    "ca_file": listener_tls.ca_file,
                }
            },
        )
    )
    out = xmpp_client.login(wire.port_of(lt), listener_tls.client(), direct_tls=True)
    assert out.session_started


@pytest.mark.parametrize("kind", ["XMPP", "XMPPS"])
def test_a_denied_xmpp_client_gets_a_policy_violation_stream_error(
    run_listener, listener_tls, kind
):
    tls = listener_tls if kind == "XMPPS" else None
    lt = run_listener(service(kind=kind, allow=("10.0.0.0/8",), tls=tls.files if tls else None))
    out = xmpp_client.login(wire.port_of(lt), listener_tls.client(), direct_tls=tls is not None)
    assert out.stream_error is not None
    condition, text = out.stream_error
    assert condition == "policy-violation"
    assert "not allowed" in text
    assert not out.session_started
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="denied") >= 1


def test_the_policy_violation_answers_the_clients_stream_header_and_closes_the_stream(
    run_listener,
):
    lt = run_listener(service(kind="XMPP", allow=wire.ALLOWED))
    sock = wire.connect(wire.port_of(lt), source=wire.DENIED_SOURCE)
    sock.sendall(STREAM_HEADER)
    stream = parse_stream(wire.read_until_closed(sock))
    assert stream.tag == "{http://etherx.jabber.org/streams}stream"
    assert stream.get("from") == "example.test"
    assert stream.get("version") == "1.0"
    error = stream.find("{http://etherx.jabber.org/streams}error")
    assert error is not None
    assert error.find(f"{{{xmpp.ERRORS_NS}}}policy-violation") is not None


def test_the_listener_says_nothing_to_a_denied_xmpp_client_before_its_stream_header(
    run_listener,
):
    lt = run_listener(service(kind="XMPP", allow=wire.ALLOWED, timeouts={"refusal": 0.5}))
    sock = wire.connect(wire.port_of(lt), source=wire.DENIED_SOURCE)
    # Nothing, then closed when the refusal timeout runs out.
    assert wire.read_until_closed(sock) == b""


@pytest.mark.parametrize("kind", ["XMPP", "XMPPS"])
def test_an_xmpp_client_over_the_cap_is_refused_at_the_tcp_level(
    run_listener, prosody, listener_tls, kind
):
    tls = listener_tls if kind == "XMPPS" else None
    lt = run_listener(
        service(
            kind=kind,
            backend_port=prosody.ports["c2s"],
            max_connections=1,
            tls=tls.files if tls else None,
        )
    )
    port = wire.port_of(lt)
    holder = wire.connect_tls(port, tls.client()) if tls else wire.connect(port)
    wait_until(lambda: lt.active("test/svc") == 1, what="one admitted session")
    # Not one byte of XMPP: a TCP reset (for XMPPS right after the handshake, which the
    # client may still be finishing when the reset arrives).
    if tls:
        try:
            sock = wire.connect_tls(port, tls.client())
            sock.sendall(STREAM_HEADER)
            data = sock.recv(4096)  # a reset under TLS may read as a ragged EOF
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        assert data == b""
    else:
        # The reset may come on the connect itself (loopback is that fast), the write or the
        # read; what never comes is a byte of XMPP.
        with pytest.raises(ConnectionResetError):
            say_and_listen(wire.connect(port))
    out = xmpp_client.login(port, listener_tls.client(), direct_tls=tls is not None, timeout=10)
    assert out.stream_error is None and not out.session_started
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="over_cap") >= 2
    holder.close()


def test_an_xmpp_client_whose_backend_is_down_gets_remote_connection_failed(run_listener):
    lt = run_listener(service(kind="XMPP", backend_port=free_port()))
    sock = wire.connect(wire.port_of(lt))
    sock.sendall(STREAM_HEADER)
    stream = parse_stream(wire.read_until_closed(sock))
    error = stream.find("{http://etherx.jabber.org/streams}error")
    assert error is not None
    assert error.find(f"{{{xmpp.ERRORS_NS}}}remote-connection-failed") is not None
    assert isinstance(sock, socket.socket)
