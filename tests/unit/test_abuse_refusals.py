"""Rate-limited and banned refusals in every protocol's words for a temporary refusal, with a
text that says why, decoded by the client libraries' own parsers where there are some
(ldap3's ASN.1 definitions, h11, ElementTree)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import h11
import pytest
from ldap3.operation.extended import extended_response_to_dict
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder

from mailwarden.listener import catalogue
from mailwarden.listener.protocols import base, http, ldap, replies_for, xmpp

WHY = {"rate_limited": "Rate limited", "banned": "Banned"}
# The temporary-refusal words each line protocol must start with (issue 11).
LINE_PREFIX = {
    catalogue.Wire.SMTP: b"421 4.7.0 mx Error: ",
    catalogue.Wire.POP3: b"-ERR [SYS/TEMP] ",
    catalogue.Wire.IMAP: b"* BYE [UNAVAILABLE] ",
    catalogue.Wire.NNTP: b"400 ",
}


def refusal(wire: catalogue.Wire, what: str, retry: int = 7) -> base.Conversation:
    replies = replies_for(wire)
    return getattr(replies, what)("mx", retry)  # type: ignore[no-any-return]


@pytest.mark.parametrize("what", sorted(WHY))
@pytest.mark.parametrize("wire", sorted(LINE_PREFIX))
def test_line_protocols_refuse_with_one_temporary_line_that_says_why_and_close(wire, what):
    reply = refusal(wire, what).opening()
    assert reply.close
    assert reply.data.startswith(LINE_PREFIX[wire]), reply.data
    assert reply.data.endswith(b"\r\n") and reply.data.count(b"\r\n") == 1
    assert WHY[what].lower().encode() in reply.data.lower()
    assert b"from your address" in reply.data


@pytest.mark.parametrize(
    ("what", "code", "description"),
    [("rate_limited", 51, "busy"), ("banned", 52, "unavailable")],
)
def test_ldap_refuses_with_a_notice_of_disconnection_that_says_why(what, code, description):
    reply = refusal(catalogue.Wire.LDAP, what).opening()
    assert reply.close
    message, rest = decoder.decode(reply.data, asn1Spec=LDAPMessage())
    assert rest == b"" and int(message["messageID"]) == 0
    result = extended_response_to_dict(message["protocolOp"].getComponent())
    assert (result["result"], result["description"]) == (code, description)
    assert result["responseName"] == ldap.NOTICE_OF_DISCONNECTION
    assert result["message"].startswith(WHY[what])


@pytest.mark.parametrize("what", sorted(WHY))
def test_http_refuses_with_503_and_the_seconds_to_wait(what):
    conversation = refusal(catalogue.Wire.HTTP, what, retry=42)
    assert conversation.opening().data == b""
    reply = conversation.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.close
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(reply.data)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 503
    headers = dict(response.headers)
    assert headers[b"retry-after"] == b"42"
    assert headers[b"connection"] == b"close"
    body = client.next_event()
    assert isinstance(body, h11.Data) and body.data.startswith(WHY[what].encode())
    assert http.RETRY_AFTER != 42  # the value is the refusal's own, not the over-cap default


@pytest.mark.parametrize("what", sorted(WHY))
def test_xmpp_refuses_with_a_policy_violation_stream_error_that_says_why(what):
    conversation = refusal(catalogue.Wire.XMPP, what)
    assert conversation.opening().data == b""
    reply = conversation.feed(
        b"<stream:stream to='chat.example' xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
    assert reply.close and not reply.reset
    root = ET.fromstring(reply.data.split(b"?>", 1)[1])
    error = root.find(f"{{{xmpp.STREAMS_NS}}}error")
    assert error is not None
    assert error.find(f"{{{xmpp.ERRORS_NS}}}policy-violation") is not None
    assert (error.findtext(f"{{{xmpp.ERRORS_NS}}}text") or "").startswith(WHY[what])


def test_every_protocol_of_the_catalogue_has_both_refusals():
    for wire in catalogue.Wire:
        replies = replies_for(wire)
        for what in WHY:
            assert callable(getattr(replies, what)), (wire, what)
