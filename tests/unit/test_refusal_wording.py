"""The LDAP, HTTP and XMPP refusals as bytes, decoded by the client libraries' own parsers
(ldap3's ASN.1 definitions, h11, ElementTree), without sockets."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import h11
import pytest
from ldap3.operation.extended import extended_response_to_dict
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder

from mailwarden.listener.protocols import http, ldap, xmpp


@pytest.mark.parametrize(
    ("code", "description"),
    [
        (ldap.ResultCode.BUSY, "busy"),
        (ldap.ResultCode.UNAVAILABLE, "unavailable"),
        (ldap.ResultCode.UNWILLING_TO_PERFORM, "unwillingToPerform"),
    ],
)
def test_a_notice_of_disconnection_decodes_with_ldap3(code, description):
    data = ldap.notice_of_disconnection(code, "why " * 40)  # long enough for a long-form length
    message, rest = decoder.decode(data, asn1Spec=LDAPMessage())
    assert rest == b""
    assert int(message["messageID"]) == 0
    result = extended_response_to_dict(message["protocolOp"].getComponent())
    assert result["result"] == code
    assert result["description"] == description
    assert result["responseName"] == ldap.NOTICE_OF_DISCONNECTION
    assert result["message"] == "why " * 40


def read_response(data: bytes) -> tuple[h11.Response, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.receive_data(data)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            break
    return response, body


def test_an_http_refusal_waits_for_the_end_of_the_request_head():
    refusal = http.REPLIES.denied("mx")
    assert refusal.opening().data == b""
    assert refusal.feed(b"GET / HTTP/1.1\r\nHost: x\r\n").data == b""
    reply = refusal.feed(b"\r\n")
    assert reply.close
    response, body = read_response(reply.data)
    assert response.status_code == 403
    assert dict(response.headers)[b"connection"] == b"close"
    assert body.startswith(b"Access denied")


def test_the_over_cap_http_refusal_says_when_to_retry():
    reply = http.REPLIES.over_capacity("mx").feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response, _ = read_response(reply.data)
    assert response.status_code == 503
    assert dict(response.headers)[b"retry-after"] == str(http.RETRY_AFTER).encode()


def test_a_request_head_over_the_limit_is_answered_431_without_buffering_it():
    refusal = http.REPLIES.denied("mx")
    assert refusal.feed(b"GET / HTTP/1.1\r\n").data == b""
    reply = refusal.feed(b"X: " + b"a" * http.HEAD_LIMIT)
    assert reply.close and reply.data.startswith(b"HTTP/1.1 431 ")


def test_the_xmpp_refusal_answers_the_clients_stream_in_its_namespace():
    refusal = xmpp.REPLIES.denied("mx.example")
    assert refusal.opening().data == b""
    assert refusal.feed(b"<?xml version='1.0'?><stream:stream to='chat.exa").data == b""
    reply = refusal.feed(
        b"mple' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" version='1.0'>"
    )
    assert reply.close
    root = ET.fromstring(reply.data.split(b"?>", 1)[1])
    assert root.get("from") == "chat.example"
    error = root.find(f"{{{xmpp.STREAMS_NS}}}error")
    assert error is not None
    assert error.find(f"{{{xmpp.ERRORS_NS}}}policy-violation") is not None
    assert "not allowed" in (error.findtext(f"{{{xmpp.ERRORS_NS}}}text") or "")


def test_an_xmpp_to_attribute_that_is_not_a_domain_is_not_echoed():
    reply = xmpp.REPLIES.denied("mx.example").feed(
        b"<stream:stream to='a&apos;&lt;b' xmlns='jabber:client'>"
    )
    root = ET.fromstring(reply.data.split(b"?>", 1)[1])
    assert root.get("from") == "mx.example"


def test_the_over_cap_xmpp_refusal_is_a_reset_without_a_byte():
    reply = xmpp.REPLIES.over_capacity("mx").opening()
    assert reply.reset and reply.data == b""
