"""PROXY protocol from load balancers: only trusted peers may send it, and the access rules
apply to the address it carries. The headers are written out by hand here, from HAProxy's
specification, not with the listener's own builder."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.support import refusals
from tests.support.listener import service
from tests.support.raw_tcp import closed_by_peer, connect, greeter, read_line, read_until_eof

GREETING = b"220 behind-the-balancer ready\r\n"
DENIED = refusals.line("smtp", "denied")
BALANCER = "127.0.0.5"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {source} 192.0.2.1 {port} 25\r\n".encode()


def v2(source: str, port: int = 40000) -> bytes:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    if family == socket.AF_INET:
        body = socket.inet_pton(family, source) + socket.inet_pton(family, "192.0.2.1")
        fam = 0x11
    else:
        body = socket.inet_pton(family, source) + socket.inet_pton(family, "2001:db8::1")
        fam = 0x21
    body += struct.pack("!HH", port, 25)
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


@pytest.fixture
def balanced(run_listener, backend):
    back = backend(greeter(GREETING))
    svc = service(
        "mail/smtp",
        "SMTP",
        backend_port=back.port,
        # Clients from the documentation ranges, and loopback itself for the untrusted peer.
        allow=("198.51.100.0/24", "2001:db8:1::/48", "127.0.0.1/32"),
        proxy_protocol_from=(f"{BALANCER}/32",),
        timeouts={"handshake": 2},
    )
    return svc, run_listener(svc)


def outcome(lt, what: str) -> float:
    return lt.metric("mailwarden_connections_total", service="mail/smtp", outcome=what)


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_a_trusted_balancer_vouches_for_an_allowed_client_which_is_admitted(balanced, header):
    svc, lt = balanced
    with connect(svc.listen[0].port, source=BALANCER) as s:
        s.sendall(header("198.51.100.7"))
        assert read_line(s) == GREETING
    assert outcome(lt, "accepted") == 1


def test_a_v2_header_with_an_ipv6_client_is_judged_on_that_address(balanced):
    svc, _lt = balanced
    with connect(svc.listen[0].port, source=BALANCER) as s:
        s.sendall(v2("2001:db8:1::42"))
        assert read_line(s) == GREETING
    with connect(svc.listen[0].port, source=BALANCER) as s:
        s.sendall(v2("2001:db8:2::42"))
        assert read_line(s) == DENIED


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_the_access_rules_apply_to_the_address_in_the_header_not_to_the_balancer(balanced, header):
    svc, lt = balanced
    with connect(svc.listen[0].port, source=BALANCER) as s:
        s.sendall(header("203.0.113.9"))
        assert read_line(s) == DENIED
    assert outcome(lt, "denied") == 1


def test_the_header_may_arrive_in_pieces_and_bytes_after_it_are_kept(balanced):
    svc, _ = balanced
    with connect(svc.listen[0].port, source=BALANCER) as s:
        header = v2("198.51.100.8")
        s.sendall(header[:5])
        s.sendall(header[5:20])
        s.sendall(header[20:])
        assert read_line(s) == GREETING


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_an_untrusted_peer_sending_a_proxy_header_is_refused(balanced, header):
    svc, lt = balanced
    # 127.0.0.1 may connect, but not speak for someone else.
    with connect(svc.listen[0].port, source="127.0.0.1") as s:
        s.sendall(header("198.51.100.7"))
        assert closed_by_peer(s)
    assert outcome(lt, "proxy_error") == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELO i-am-not-a-balancer\r\n",
        b"PROXY TCP4 not-an-address 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.1 99999 25\r\n",
        b"PROXY " + b"9" * 200 + b"\r\n",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    ],
    ids=["smtp", "bad-address", "bad-port", "too-long", "bad-version"],
)
def test_a_trusted_peer_sending_garbage_instead_of_a_header_is_closed_without_a_reply(
    balanced, garbage
):
    svc, lt = balanced
    with connect(svc.listen[0].port, source=BALANCER) as s:
        s.sendall(garbage)
        assert read_until_eof(s) == b""
    assert outcome(lt, "proxy_error") == 1
    assert outcome(lt, "accepted") == 0


def test_a_trusted_peer_that_never_sends_the_header_is_closed_after_the_handshake_timeout(
    balanced,
):
    svc, lt = balanced
    with connect(svc.listen[0].port, source=BALANCER) as s:
        s.sendall(b"PROXY TCP4 198.51")  # and then nothing
        assert closed_by_peer(s, timeout=5)
    assert outcome(lt, "handshake_failed") == 1
