"""LDAP and LDAPS through the listener, in front of a real slapd, with the ldap3 client."""

from __future__ import annotations

import ssl
from typing import Any

import ldap3
import pytest
from ldap3.core import exceptions as ldap_errors
from ldap3.operation.extended import extended_response_to_dict
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder

from mailwarden.listener.protocols import ldap
from tests.support import ldap_http_xmpp_servers as srv
from tests.support import wire
from tests.support.listener import free_port, service

pytestmark = pytest.mark.servers


def decode_notice(data: bytes) -> dict[str, Any]:
    """Decode one LDAPMessage with ldap3's own ASN.1 definitions and result-code table."""
    message, rest = decoder.decode(data, asn1Spec=LDAPMessage())
    assert rest == b""
    assert int(message["messageID"]) == 0
    op = message["protocolOp"]
    assert op.getName() == "extendedResp"
    result: dict[str, Any] = extended_response_to_dict(op.getComponent())
    return result


def ldap_server(port: int, tls: wire.ListenerTLS | None = None) -> ldap3.Server:
    if tls is None:
        return ldap3.Server(wire.HOST, port=port, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Server(
        wire.HOST,
        port=port,
        use_ssl=True,
        get_info=ldap3.NONE,
        connect_timeout=5,
        tls=ldap3.Tls(ca_certs_data=tls.ca.pem.decode(), validate=ssl.CERT_REQUIRED),
    )


def search_alice(conn: ldap3.Connection) -> str:
    assert conn.search(srv.LDAP_SUFFIX, "(uid=alice)", attributes=["mail"])
    return str(conn.entries[0].mail.value)


def test_an_admitted_ldap_client_binds_and_searches_slapd(run_listener, slapd):
    lt = run_listener(service(kind="LDAP", backend_port=slapd.ports["ldap"]))
    conn = ldap3.Connection(
        ldap_server(wire.port_of(lt)), srv.LDAP_ADMIN, srv.LDAP_PASSWORD, auto_bind=True
    )
    assert search_alice(conn) == "alice@example.test"
    conn.unbind()


def test_ldap_starttls_passes_through_to_slapd_and_the_client_sees_slapds_certificate(
    run_listener, slapd, test_ca
):
    lt = run_listener(service(kind="LDAP", backend_port=slapd.ports["ldap"]))
    server = ldap3.Server(
        wire.HOST,
        port=wire.port_of(lt),
        get_info=ldap3.NONE,
        tls=ldap3.Tls(ca_certs_data=test_ca.pem.decode(), validate=ssl.CERT_REQUIRED),
    )
    conn = ldap3.Connection(server, srv.LDAP_ADMIN, srv.LDAP_PASSWORD)
    conn.open()
    assert conn.start_tls()
    assert conn.bind()
    assert search_alice(conn) == "alice@example.test"
    peer = conn.socket.getpeercert()
    assert ("DNS", srv.BACKEND_NAME) in peer["subjectAltName"]
    conn.unbind()


@pytest.mark.parametrize("kind", ["LDAP", "LDAPS"])
def test_an_ldap_client_over_the_cap_gets_a_notice_of_disconnection_with_busy(
    run_listener, slapd, listener_tls, kind
):
    tls = listener_tls if kind == "LDAPS" else None
    lt = run_listener(
        service(
            kind=kind,
            backend_port=slapd.ports["ldap"],
            max_connections=1,
            tls=tls.files if tls else None,
        )
    )
    port = wire.port_of(lt)
    holder = ldap3.Connection(
        ldap_server(port, tls), srv.LDAP_ADMIN, srv.LDAP_PASSWORD, auto_bind=True
    )
    # What ldap3 makes of it: the server ended the session.
    refused = ldap3.Connection(ldap_server(port, tls), srv.LDAP_ADMIN, srv.LDAP_PASSWORD)
    with pytest.raises(ldap_errors.LDAPSessionTerminatedByServerError):
        refused.bind()
    # The notice itself, decoded by ldap3: busy (51), Notice of Disconnection.
    sock = wire.connect_tls(port, tls.client()) if tls else wire.connect(port)
    notice = decode_notice(wire.read_until_closed(sock))
    assert notice["result"] == 51
    assert notice["description"] == "busy"
    assert notice["responseName"] == ldap.NOTICE_OF_DISCONNECTION
    assert "too many connections" in notice["message"].lower()
    assert search_alice(holder) == "alice@example.test"
    holder.unbind()
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="over_cap") == 2


@pytest.mark.parametrize("kind", ["LDAP", "LDAPS"])
def test_a_denied_ldap_client_is_told_unwilling_to_perform_and_disconnected(
    run_listener, listener_tls, kind
):
    tls = listener_tls if kind == "LDAPS" else None
    lt = run_listener(service(kind=kind, allow=wire.ALLOWED, tls=tls.files if tls else None))
    port = wire.port_of(lt)
    if tls:
        sock = wire.connect_tls(port, tls.client(), source=wire.DENIED_SOURCE)
    else:
        sock = wire.connect(port, source=wire.DENIED_SOURCE)
    notice = decode_notice(wire.read_until_closed(sock))
    assert notice["result"] == 53
    assert notice["description"] == "unwillingToPerform"
    assert "not allowed" in notice["message"]
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="denied") == 1


def test_an_ldap_client_whose_backend_is_down_is_told_unavailable(run_listener):
    lt = run_listener(service(kind="LDAP", backend_port=free_port()))
    conn = ldap3.Connection(ldap_server(wire.port_of(lt)), srv.LDAP_ADMIN, srv.LDAP_PASSWORD)
    with pytest.raises(ldap_errors.LDAPSessionTerminatedByServerError):
        conn.bind()
    notice = decode_notice(wire.read_until_closed(wire.connect(wire.port_of(lt))))
    assert (notice["result"], notice["description"]) == (52, "unavailable")


def test_ldaps_terminates_tls_and_relays_to_slapd_over_a_verified_tls_backend_leg(
    run_listener, slapd, listener_tls
):
    lt = run_listener(
        service(
            kind="LDAPS",
            backend_port=slapd.ports["ldaps"],
            tls=listener_tls.files,
            backend={
                "tls": {
                    "enabled": True,
                    "server_name": srv.BACKEND_NAME,
                    "ca_file": listener_tls.ca_file,
                }
            },
        )
    )
    conn = ldap3.Connection(
        ldap_server(wire.port_of(lt), listener_tls),
        srv.LDAP_ADMIN,
        srv.LDAP_PASSWORD,
        auto_bind=True,
    )
    assert ("DNS", wire.LISTENER_NAME) in conn.socket.getpeercert()["subjectAltName"]
    assert search_alice(conn) == "alice@example.test"
    conn.unbind()


def test_a_backend_certificate_that_does_not_verify_is_an_unavailable_backend(
    run_listener, slapd, listener_tls
):
    # No CA given: slapd's test certificate is not trusted, so the listener will not relay.
    lt = run_listener(
        service(
            kind="LDAPS",
            backend_port=slapd.ports["ldaps"],
            tls=listener_tls.files,
            backend={"tls": {"enabled": True, "server_name": srv.BACKEND_NAME}},
        )
    )
    sock = wire.connect_tls(wire.port_of(lt), listener_tls.client())
    notice = decode_notice(wire.read_until_closed(sock))
    assert (notice["result"], notice["description"]) == (52, "unavailable")
    assert (
        lt.metric("mailwarden_connections_total", service="test/svc", outcome="backend_error") == 1
    )
