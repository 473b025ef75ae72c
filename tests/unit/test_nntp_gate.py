"""The NNTP reader gate as transcripts: what the reader and the news server each receive."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailwarden.listener.protocols import nntp
from mailwarden.listener.protocols.nntp import AuthResult, ReaderGate
from tests.support import refusals

GREETING = b"200 news.test.example ready\r\n"
CAPS = b"101 Capability list:\r\nVERSION 2\r\nREADER\r\nAUTHINFO USER\r\n.\r\n"
AUTH_REQUIRED = refusals.line("nntp", "auth_required")


def greeted() -> ReaderGate:
    gate = ReaderGate()
    out = gate.from_backend(GREETING)
    assert (out.to_client, out.to_backend, out.open) == (GREETING, b"", False)
    return gate


def test_reading_commands_get_480_from_the_gate_and_never_reach_the_server():
    gate = greeted()
    for command in (b"GROUP misc.test", b"ARTICLE 1", b"LIST", b"OVER 1-2", b"POST", b"XHDR x"):
        out = gate.from_client(command + b"\r\n")
        assert (out.to_client, out.to_backend) == (AUTH_REQUIRED, b"")


def test_a_successful_authinfo_opens_the_gate_and_counts_a_success():
    gate = greeted()
    out = gate.from_client(b"AUTHINFO USER reader\r\n")
    assert out.to_backend == b"AUTHINFO USER reader\r\n"
    out = gate.from_backend(b"381 Enter password\r\n")
    assert (out.to_client, out.auth, out.open) == (b"381 Enter password\r\n", None, False)
    out = gate.from_client(b"AUTHINFO PASS secret\r\n")
    assert out.to_backend == b"AUTHINFO PASS secret\r\n"
    out = gate.from_backend(b"281 Authentication succeeded\r\n")
    assert (out.auth, out.open) == (AuthResult.SUCCESS, True)
    out = gate.from_client(b"GROUP misc.test\r\n")
    assert (out.to_backend, out.open) == (b"GROUP misc.test\r\n", True)


def test_a_failed_authinfo_counts_a_failure_and_keeps_the_gate_shut():
    gate = greeted()
    gate.from_client(b"AUTHINFO USER reader\r\n")
    gate.from_backend(b"381 Enter password\r\n")
    gate.from_client(b"AUTHINFO PASS wrong\r\n")
    out = gate.from_backend(b"481 Authentication failed\r\n")
    assert (out.to_client, out.auth, out.open) == (
        b"481 Authentication failed\r\n",
        AuthResult.FAILURE,
        False,
    )
    assert gate.from_client(b"GROUP misc.test\r\n").to_client == AUTH_REQUIRED


def test_commands_pipelined_behind_authinfo_wait_and_go_to_the_server_once_it_succeeds():
    gate = greeted()
    out = gate.from_client(b"AUTHINFO USER r\r\nAUTHINFO PASS s\r\nGROUP misc.test\r\nARTI")
    assert out.to_backend == b"AUTHINFO USER r\r\n"  # one command in flight at a time
    out = gate.from_backend(b"381 more\r\n")
    assert out.to_backend == b"AUTHINFO PASS s\r\n"
    out = gate.from_backend(b"281 ok\r\n")
    assert out.open
    assert out.to_backend == b"GROUP misc.test\r\nARTI"  # nothing lost, not even half a line


def test_a_command_sent_while_a_multiline_answer_streams_is_judged_after_it():
    gate = greeted()
    assert gate.from_client(b"CAPABILITIES\r\n").to_backend == b"CAPABILITIES\r\n"
    out = gate.from_client(b"GROUP misc.test\r\n")
    assert (out.to_client, out.to_backend) == (b"", b"")  # held: a response is in flight
    # The capability list is passed on whole once complete (the gate says whether STARTTLS
    # is on offer in it), and only then is GROUP judged.
    out = gate.from_backend(CAPS[:30])
    assert (out.to_client, out.to_backend) == (b"", b"")
    out = gate.from_backend(CAPS[30:-2])  # the terminator split across packets
    assert (out.to_client, out.to_backend) == (b"", b"")
    out = gate.from_backend(CAPS[-2:])
    assert out.to_client == CAPS + AUTH_REQUIRED


def test_an_over_long_command_line_gets_501_and_the_next_line_is_read_normally():
    gate = greeted()
    out = gate.from_client(b"GROUP " + b"x" * 600)
    assert out.to_client == nntp.LINE_TOO_LONG
    out = gate.from_client(b"x" * 600 + b"\r\nMODE READER\r\n")
    assert (out.to_client, out.to_backend) == (b"", b"MODE READER\r\n")


def test_empty_lines_and_binary_garbage_get_an_answer_or_nothing_but_never_reach_the_server():
    gate = greeted()
    out = gate.from_client(b"\r\n\x00\xff\xfe\r\n   \r\n")
    assert out.to_backend == b""
    assert out.to_client == AUTH_REQUIRED


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(CAPS) - 1), max_size=6))
def test_however_the_servers_answer_is_cut_the_reader_gets_it_whole_then_the_480(cuts):
    gate = greeted()
    gate.from_client(b"CAPABILITIES\r\nLIST\r\n")
    got = bytearray()
    last = 0
    for cut in sorted(set(cuts)):
        got += gate.from_backend(CAPS[last:cut]).to_client
        last = cut
    got += gate.from_backend(CAPS[last:]).to_client
    assert bytes(got) == CAPS + AUTH_REQUIRED


def test_the_gate_is_idle_only_when_no_command_waits_for_its_answer_or_its_turn():
    gate = ReaderGate()
    assert not gate.idle  # the greeting is awaited
    gate.from_backend(GREETING)
    assert gate.idle
    gate.from_client(b"CAPABILITIES\r\nQUIT\r\n")
    assert not gate.idle
    gate.from_backend(CAPS)
    assert not gate.idle  # QUIT went out now and waits for its answer
    gate.from_backend(b"205 Bye\r\n")
    assert gate.idle


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.one_of(
                st.binary(max_size=80),
                st.sampled_from(
                    [
                        b"GROUP a\r\n",
                        b"AUTHINFO USER x\r\n",
                        b"AUTHINFO PASS y\r\n",
                        b"MODE READER\r\n",
                        b"CAPABILITIES\r\n",
                        b"200 ok\r\n",
                        b"381 more\r\n",
                        b"481 no\r\n",
                        b"101 caps\r\n",
                        b".\r\n",
                        b"\r\n",
                    ]
                ),
            ),
        ),
        max_size=30,
    )
)
def test_until_the_server_says_281_only_the_commands_allowed_before_login_reach_it(steps):
    gate = ReaderGate()
    sent = bytearray()
    heard = bytearray()
    for from_client, data in steps:
        if not from_client:
            heard += data
        out = gate.from_client(data) if from_client else gate.from_backend(data)
        if out.open or gate.opened:
            assert b"AUTHINFO" in sent.upper() and b"281" in heard
            break
        sent += out.to_backend
    for line in bytes(sent).split(b"\n"):
        if line:
            assert line.split(None, 1)[0].upper() in nntp.BEFORE_AUTH


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_only_a_281_answer_to_authinfo_opens_the_gate(chunks):
    gate = greeted()
    gate.from_client(b"GROUP a\r\n")
    for chunk in chunks:
        if b"281" in chunk:
            continue
        assert not gate.from_backend(chunk).open
