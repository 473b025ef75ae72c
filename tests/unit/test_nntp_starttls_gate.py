"""The NNTP reader gate's own STARTTLS (RFC 4642), without sockets."""

from __future__ import annotations

from mailwarden.listener.protocols import nntp

GREETING = b"200 news.example ready\r\n"
CAPS = b"101 Capability list:\r\nVERSION 2\r\nAUTHINFO USER\r\nSTARTTLS\r\nREADER\r\n.\r\n"


def capability_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")[1:-2]


def greeted(**options: bool) -> nntp.ReaderGate:
    gate = nntp.ReaderGate(**options)
    assert gate.from_backend(GREETING).to_client == GREETING
    return gate


def test_the_gate_lists_starttls_once_when_it_offers_it():
    gate = greeted(starttls=True)
    assert gate.from_client(b"CAPABILITIES\r\n").to_backend == b"CAPABILITIES\r\n"
    # The list is held back until it is complete, then passed with STARTTLS in it once.
    first = gate.from_backend(CAPS[:30])
    assert first.to_client == b""
    out = gate.from_backend(CAPS[30:])
    assert capability_lines(out.to_client).count(b"STARTTLS") == 1
    assert out.to_client.endswith(b"\r\n.\r\n")


def test_the_gate_answers_starttls_with_382_and_asks_for_the_upgrade():
    gate = greeted(starttls=True)
    out = gate.from_client(b"STARTTLS\r\nGROUP pipelined.illegally\r\n")
    assert out.to_client == nntp.STARTTLS_GO
    assert out.start_tls and out.to_backend == b""
    gate.tls_started()
    out = gate.from_client(b"CAPABILITIES\r\n")
    assert out.to_backend == b"CAPABILITIES\r\n"  # the pipelined GROUP was dropped
    assert b"STARTTLS" not in gate.from_backend(CAPS).to_client
    assert gate.from_client(b"STARTTLS\r\n").to_client == nntp.STARTTLS_ALREADY


def test_without_a_certificate_starttls_is_580_and_not_listed():
    gate = greeted()
    gate.from_client(b"CAPABILITIES\r\n")
    assert b"STARTTLS" not in gate.from_backend(CAPS).to_client
    assert gate.from_client(b"STARTTLS\r\n").to_client == nntp.STARTTLS_UNAVAILABLE


def test_reading_commands_still_need_authinfo_after_starttls():
    gate = greeted(starttls=True)
    gate.from_client(b"STARTTLS\r\n")
    gate.tls_started()
    assert gate.from_client(b"ARTICLE 1\r\n").to_client == nntp.AUTH_REQUIRED
