"""Reading a ClientHello before OpenSSL (issue 12, point 9): a client of TLS 1.0/1.1 only is
answered with a `protocol_version` alert (RFC 8446 §4.2.1); everything else passes to
OpenSSL unchanged. The ClientHellos are OpenSSL's own, made with memory BIOs."""

from __future__ import annotations

import ssl
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.listener import tlshello

V = ssl.TLSVersion
ALERT = b"\x15\x03\x01\x00\x02\x02\x46"  # fatal protocol_version, TLS 1.0 record


def client_hello(low: ssl.TLSVersion, high: ssl.TLSVersion) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # OpenSSL's default security level refuses to offer TLS 1.0/1.1 at all.
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = low, high
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("high", [V.TLSv1, V.TLSv1_1])
def test_a_client_of_tls_1_0_or_1_1_only_gets_the_protocol_version_alert(high):
    assert tlshello.screen(client_hello(V.TLSv1, high)) == ALERT


@pytest.mark.parametrize(("low", "high"), [(V.TLSv1, V.TLSv1_2), (V.TLSv1_2, V.TLSv1_3)])
def test_a_client_that_offers_tls_1_2_or_later_passes_to_openssl(low, high):
    assert tlshello.screen(client_hello(low, high)) is tlshello.Hello.PASS


def test_a_hello_cut_short_asks_for_more_and_a_non_tls_start_passes():
    hello = client_hello(V.TLSv1, V.TLSv1)
    for cut in range(len(hello)):
        assert tlshello.screen(hello[:cut]) in (tlshello.Hello.NEED_MORE, tlshello.Hello.PASS)
    assert tlshello.screen(hello[:20]) is tlshello.Hello.NEED_MORE
    assert tlshello.screen(b"EHLO x\r\n") is tlshello.Hello.PASS
    assert tlshello.screen(b"\x80\x2e\x01\x03\x01") is tlshello.Hello.PASS  # SSLv2-style


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"\x16" + b)))
def test_any_bytes_get_a_verdict_and_never_an_exception(data):
    verdict = tlshello.screen(data)
    assert verdict in (tlshello.Hello.NEED_MORE, tlshello.Hello.PASS) or verdict[:1] == b"\x15"
