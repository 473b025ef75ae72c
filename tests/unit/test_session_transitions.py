"""The session's race-prone transitions, each in the order that is hard to produce with real
sockets: a scripted client and backend transport around the real session, service runtime,
caps and metrics (tests/support/scripted.py). The end-to-end tests in tests/listener show the
same behaviours with real sockets where the order can be forced."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import pytest

from mailwarden.listener import proxyproto, session
from tests.support import certs
from tests.support.scripted import Script

HELLO = b"EHLO client.example\r\nQUIT\r\n"
GREETING = b"200 news.example ready (posting ok)\r\n"


@pytest.fixture
def scripts() -> Iterator[list[Script]]:
    made: list[Script] = []
    yield made
    for s in made:
        s.close()


def script(scripts: list[Script], *args: object, **kwargs: object) -> Script:
    s = Script(*args, **kwargs)  # type: ignore[arg-type]
    scripts.append(s)
    return s


# -- EOF before the session can take the client's bytes ---------------------------------


def test_eof_while_connecting_delivers_the_bytes_then_the_eof(scripts):
    s = script(scripts).connect().send(HELLO).client_eof()
    assert s.session.state is session.State.CONNECTING
    assert not s.client.closing  # the session waits for the backend
    s.backend_connects()
    assert s.to_backend == HELLO
    assert s.backend is not None and s.backend.eof_written
    assert s.session.state is session.State.RELAY
    assert s.outcome("accepted") == 1


def test_eof_while_connecting_then_the_backend_fails_refuses_in_the_protocols_words(scripts):
    s = script(scripts).connect().send(HELLO).client_eof().backend_fails()
    assert s.to_client.startswith(b"421 ")
    assert s.outcome("backend_error") == 1
    assert s.active == 0


def test_eof_at_the_nntp_gate_waits_for_the_answer_to_the_command_in_flight(scripts):
    s = script(scripts, "NNTP").connect().backend_connects().backend_says(GREETING)
    assert s.session.state is session.State.GATED
    s.send(b"CAPABILITIES\r\n").client_eof()
    assert s.to_backend == b"CAPABILITIES\r\n"
    assert s.backend is not None and not s.backend.eof_written  # the answer is still due
    s.backend_says(b"101 Capability list:\r\nVERSION 2\r\nREADER\r\n.\r\n")
    assert s.backend.eof_written
    assert s.to_client.endswith(b"READER\r\n.\r\n")


def test_eof_at_the_nntp_gate_before_the_greeting_holds_the_commands_and_the_eof(scripts):
    s = script(scripts, "NNTP").connect().backend_connects()
    s.send(b"MODE READER\r\nGROUP alt.test\r\n").client_eof()
    assert s.to_backend == b""  # the greeting is the first answer the gate waits for
    assert s.backend is not None and not s.backend.eof_written
    s.backend_says(GREETING)
    assert s.to_backend == b"MODE READER\r\n"
    s.backend_says(b"200 reader mode\r\n")
    assert s.to_client.endswith(b"480 Authentication required\r\n")
    assert s.backend.eof_written


# -- the client leaves while the backend connection is being made ------------------------


def test_a_client_gone_during_the_backend_connect_releases_its_slot_and_the_backend_leg(scripts):
    s = script(scripts, max_connections=1).connect().send(b"EHLO x\r\n")
    assert s.active == 1
    s.client_resets()
    assert s.active == 0
    assert s.rt.limiter.active == 0
    assert not s.rt.sessions
    s.backend_connects()  # the connection the session asked for arrives late
    assert s.backend is not None and s.backend.closing
    assert s.to_backend == b""
    assert s.outcome("accepted") == 0


def test_a_client_gone_during_a_failing_backend_connect_is_counted_once(scripts):
    s = script(scripts).connect().client_resets().backend_fails()
    assert s.outcome("backend_error") == 0  # nobody was there to refuse
    assert s.active == 0


# -- PROXY bytes split across TCP segments ------------------------------------------------


@pytest.mark.parametrize(
    "segments",
    [
        [b"PRO", b"XY TCP4 10.0.0.1 10.0.0.2 1 2\r\nEHLO x\r\n"],
        [b"P", b"R", b"O", b"X", b"Y", b" TCP4 10.0.0.1 10.0.0.2 1 2\r\n"],
        [proxyproto.V2_SIGNATURE[:6], proxyproto.build_v2(("10.0.0.1", 1), ("10.0.0.2", 2))[6:]],
    ],
    ids=["v1-3+rest", "v1-bytewise", "v2-6+rest"],
)
def test_a_forged_header_split_across_segments_is_refused_and_never_relayed(scripts, segments):
    s = script(scripts).connect().backend_connects()
    for segment in segments:
        if s.client.closing:
            break
        s.send(segment)
    assert s.to_backend == b""
    assert s.client.closing
    assert s.outcome("proxy_error") == 1


def test_bytes_that_only_start_like_a_signature_are_relayed_whole(scripts):
    s = script(scripts).connect().backend_connects()
    s.send(b"P")
    assert s.to_backend == b""  # a prefix of "PROXY ": the next bytes decide
    s.send(b"OST / HTTP/1.0\r\n")
    assert s.to_backend == b"POST / HTTP/1.0\r\n"
    assert s.outcome("proxy_error") == 0


def test_a_signature_prefix_cut_by_the_clients_eof_is_relayed_with_the_eof(scripts):
    s = script(scripts).connect().backend_connects().send(b"\r\n").client_eof()
    assert s.to_backend == b"\r\n"
    assert s.backend is not None and s.backend.eof_written


def test_a_trusted_header_split_across_segments_names_the_client(scripts):
    s = script(scripts, proxy_protocol_from=("127.0.0.0/8",)).connect()
    assert s.session.state is session.State.PROXY
    header = proxyproto.build_v1(("192.0.2.7", 4711), ("198.51.100.1", 25))
    s.send(header[:9]).send(header[9:] + b"EHLO x\r\n")
    assert s.session.client == ("192.0.2.7", 4711)
    s.backend_connects()
    assert s.to_backend == b"EHLO x\r\n"


def test_a_second_header_behind_the_balancers_is_refused_not_relayed(scripts):
    s = script(scripts, proxy_protocol_from=("127.0.0.0/8",)).connect()
    first = proxyproto.build_v1(("192.0.2.7", 4711), ("198.51.100.1", 25))
    second = proxyproto.build_v1(("203.0.113.9", 1), ("198.51.100.1", 25))
    s.send(first + second)
    assert s.client.closing
    assert s.loop.connects == []  # no backend connection was asked for
    assert s.outcome("proxy_error") == 1


def test_a_denied_client_that_sends_a_proxy_header_is_counted_once(scripts):
    s = script(scripts, allow=()).connect()
    assert s.to_client.startswith(b"554 ")
    s.send(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")
    assert s.outcome("denied") == 1
    assert s.outcome("proxy_error") == 0


# -- the hook points other policies plug into --------------------------------------------


def test_an_admission_step_refuses_before_the_caps_are_taken(scripts):
    s = script(scripts, max_connections=1)
    asked: list[str] = []

    def admission(address: str) -> session.Refusal | None:
        asked.append(address)
        return session.Refusal("over_cap", s.rt.over_capacity())

    s.rt.admission = admission
    s.connect()
    assert asked == ["127.0.0.1"]
    assert s.to_client.startswith(b"421 ")
    assert s.rt.limiter.active == 0
    assert s.loop.connects == []


class Recorder:
    def __init__(self, lines: int) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.lines = lines

    def client(self, data: bytes) -> bool:
        self.seen.append(("client", data))
        return len(self.seen) < self.lines

    def backend(self, data: bytes) -> bool:
        self.seen.append(("backend", data))
        return len(self.seen) < self.lines


def test_an_observer_sees_the_first_bytes_unchanged_then_the_session_is_relayed(scripts):
    s = script(scripts)
    recorder = Recorder(lines=3)
    s.rt.observe = lambda address: recorder
    s.connect().backend_connects().backend_says(b"220 mx ready\r\n")
    # No gate: the session relays from the start, the observer beside the relay.
    assert s.session.state is session.State.RELAY
    assert s.session.observer is recorder
    s.send(b"EHLO x\r\n").backend_says(b"250 mx\r\n")
    assert s.session.observer is None  # it has seen its three lines: dropped
    s.send(b"QUIT\r\n")
    assert recorder.seen == [
        ("backend", b"220 mx ready\r\n"),
        ("client", b"EHLO x\r\n"),
        ("backend", b"250 mx\r\n"),
    ]
    assert s.to_client == b"220 mx ready\r\n250 mx\r\n"
    assert s.to_backend == b"EHLO x\r\nQUIT\r\n"


def test_an_observer_beside_the_nntp_gate_keeps_the_gate_in_force(scripts):
    s = script(scripts, "NNTP")
    recorder = Recorder(lines=1)
    s.rt.observe = lambda address: recorder
    s.connect().backend_connects().backend_says(GREETING).send(b"GROUP alt.test\r\n")
    assert s.to_client == GREETING + b"480 Authentication required\r\n"
    assert s.to_backend == b""
    assert s.session.state is session.State.GATED


# -- timeouts: totals where a trickle must not extend them; abort, not close ---------------


def test_a_trickled_proxy_header_is_cut_at_the_handshake_total(scripts):
    s = script(scripts, proxy_protocol_from=("127.0.0.0/8",), timeouts={"handshake": 3})
    s.connect().send(b"PROXY TCP4 192.0.2.1 ")
    s.sweep_at(2.0).send(b"192.0.2.2 ")  # a byte now and then does not restart the clock
    s.sweep_at(3.5)
    assert s.client.aborted
    assert not s.rt.sessions
    assert s.outcome("handshake_failed") == 1
    assert s.loop.connects == []


def test_a_refused_client_that_keeps_talking_is_cut_at_the_refusal_total(scripts):
    s = script(scripts, allow=(), timeouts={"refusal": 5})
    s.connect().send(b"EHLO x\r\n").sweep_at(4.0).send(b"MAIL FROM:<a@b>\r\n").sweep_at(4.5)
    assert not s.client.closing
    s.sweep_at(5.5)
    assert s.client.aborted
    assert s.rt.refusing == 0


def test_an_idle_session_with_an_undrained_write_buffer_is_aborted_and_its_slot_freed(scripts):
    s = script(scripts, max_connections=1, timeouts={"idle": 10})
    s.connect().backend_connects().backend_says(b"220 mx\r\n" * 100)
    s.client.buffered = 1 << 20  # the client stopped reading
    s.session.pause_writing()
    assert s.backend is not None and not s.backend.reading
    s.sweep_at(1).sweep_at(12)
    assert s.client.aborted and s.backend.aborted
    assert s.active == 0
    assert s.rt.limiter.active == 0
    assert not s.rt.sessions


def test_past_the_refusal_cap_a_refused_client_hears_its_refusal_and_is_closed(scripts):
    s = script(scripts, allow=())
    s.rt.refusing = session.REFUSING_LIMIT
    s.connect()
    assert s.to_client.startswith(b"554 ")
    assert s.client.closing and not s.client.aborted
    assert s.rt.refusing == session.REFUSING_LIMIT
    s.rt.refusing = 0
    t = script(scripts, allow=())
    t.connect()
    assert not t.client.closing
    assert t.rt.refusing == 1


# -- flow control: the listener's own answers and the gate's backlog are bounded ----------


def test_commands_for_a_gate_still_waiting_for_the_greeting_are_held_bounded(scripts):
    s = script(scripts, "NNTP").connect().backend_connects()
    line = b"GROUP " + b"a" * 200 + b"\r\n"
    for _ in range(10):
        if not s.client.reading:
            break
        s.send(line * 100)
    assert not s.client.reading  # paused, not buffered without bound
    held = len(s.session._pending)
    assert session.PENDING_LIMIT < held <= session.PENDING_LIMIT + len(line) * 100
    s.backend_says(GREETING)
    assert s.client.reading
    assert s.to_client == GREETING + b"480 Authentication required\r\n" * (held // len(line))


def test_a_reader_that_does_not_read_the_gates_answers_is_paused_until_it_does(scripts):
    s = script(scripts, "NNTP").connect().backend_connects().backend_says(GREETING)
    s.send(b"X\r\n" * 1000)
    s.session.pause_writing()  # the transport's write buffer is over its high-water mark
    assert not s.client.reading
    s.session.resume_writing()
    assert s.client.reading


def test_a_failed_tls_handshake_releases_the_session_without_connection_lost(scripts):
    s = script(scripts)
    s.connect()
    s.session.state = session.State.TLS
    s.session._handshake_failed("TLS handshake: ConnectionResetError()")
    assert not s.rt.sessions
    assert s.client.aborted
    assert s.outcome("handshake_failed") == 1


def test_commands_pipelined_behind_starttls_are_dropped(scripts, tls_files):
    """RFC 4642 §2.2.2: nothing may be pipelined behind STARTTLS. A reader that sends
    STARTTLS and 32 KiB of commands in one segment (more than the gate gets in one slice)
    hears 382 and nothing else in plain text."""
    s = script(scripts, "NNTP", tls=tls_files)
    s.connect().backend_connects().backend_says(GREETING)
    s.send(b"STARTTLS\r\n" + b"GROUP alt.test\r\n" * 2000)
    assert s.session.state is session.State.STARTTLS
    assert s.to_client == GREETING + b"382 Continue with TLS negotiation\r\n"
    assert s.to_backend == b""
    assert not s.session._pending  # nothing pipelined is kept for the TLS layer either
    s.send(HELLO_TLS)
    [(layer, _)] = s.loop.handshakes
    assert bytes(layer.received) == HELLO_TLS  # the handshake, and no plain-text command


def test_the_handshake_bytes_that_come_before_the_tls_step_begins_reach_the_tls_layer(
    scripts, tls_files
):
    s = script(scripts, "NNTP", tls=tls_files)
    s.connect().backend_connects().backend_says(GREETING)
    # Both in one loop turn: the 382 is out, the TLS step has not begun.
    s.session.data_received(b"STARTTLS\r\n")
    s.session.data_received(HELLO_TLS)
    assert s.session.state is session.State.STARTTLS
    s.settle()
    [(layer, _)] = s.loop.handshakes
    assert bytes(layer.received) == HELLO_TLS
    assert s.to_client == GREETING + b"382 Continue with TLS negotiation\r\n"


def _client_hello() -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="news.example")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO_TLS = _client_hello()


@pytest.fixture
def tls_files(tmp_path):
    cert, key = certs.make_ca().issue("news.example").write(tmp_path)
    return {"cert_file": str(cert), "key_file": str(key)}
