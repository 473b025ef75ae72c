"""The SMTP refusal conversation (RFC 5321 §3.1): 554 greeting, 503 to all but QUIT."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailwarden.listener.protocols import imap, nntp, pop3, smtp
from tests.support import refusals

DENIED = refusals.line("smtp", "denied", host="mx.example")
BAD = refusals.line("smtp", "bad_sequence")


def test_the_greeting_is_554_5_7_1_naming_the_host():
    assert smtp.DeniedSession("mx.example").opening() == smtp.base.Reply(DENIED)


def test_every_command_but_quit_gets_503_and_quit_gets_221_and_closes():
    s = smtp.DeniedSession("mx.example")
    assert s.feed(b"EHLO a\r\n").data == BAD
    assert s.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n").data == BAD * 2
    assert s.feed(b"STARTTLS\r\n").data == BAD
    reply = s.feed(b"quit\r\n")
    assert (reply.data, reply.close) == (refusals.line("smtp", "bye"), True)


def test_a_command_split_across_packets_is_answered_once_whole():
    s = smtp.DeniedSession("mx.example")
    assert s.feed(b"EH").data == b""
    assert s.feed(b"LO a\r").data == b""
    assert s.feed(b"\nQU").data == BAD
    assert s.feed(b"IT\r\n").close


def test_an_over_long_line_gets_500_once_however_it_arrives():
    s = smtp.DeniedSession("mx.example")
    assert s.feed(b"A" * 600).data == b"500 5.5.2 Error: line too long\r\n"
    assert s.feed(b"A" * 6000).data == b""
    assert s.feed(b"A\r\nNOOP\r\n").data == BAD


def test_a_client_that_never_quits_is_cut_off_with_421():
    s = smtp.DeniedSession("mx.example")
    reply = s.feed(b"NOOP\r\n" * 100)
    assert reply.close
    assert reply.data == BAD * smtp.REFUSAL_COMMAND_BUDGET + refusals.line(
        "smtp", "too_many_errors", host="mx.example"
    )


@given(st.binary(max_size=2000))
def test_any_bytes_get_smtp_replies_and_nothing_else(data):
    s = smtp.DeniedSession("mx.example")
    reply = s.feed(data)
    for line in reply.data.splitlines(keepends=True):
        assert line[:3] in (b"503", b"500", b"221", b"421") and line.endswith(b"\r\n")


def test_one_shot_refusals_close_after_one_line_in_every_protocol():
    for replies in (smtp.REPLIES, pop3.REPLIES, imap.REPLIES, nntp.REPLIES):
        for conversation in (
            replies.over_capacity("h"),
            replies.unavailable("h"),
        ):
            first = conversation.opening()
            assert first.close and first.data.endswith(b"\r\n") and first.data.count(b"\n") == 1
