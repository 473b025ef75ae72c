"""The protocol modules are found by their catalogue wire name and provide what the session
needs (docs/adding-a-protocol.md): a new protocol is a catalogue entry and one module."""

from __future__ import annotations

import pytest

from mailwarden.listener import catalogue, protocols
from mailwarden.listener.protocols import base, nntp


@pytest.mark.parametrize("wire", list(catalogue.Wire))
def test_every_wire_of_the_catalogue_has_its_refusals(wire):
    replies = protocols.replies_for(wire)
    for refusal in (replies.denied, replies.over_capacity, replies.unavailable):
        # Said at once (most), or in answer to the client's request or stream header
        # (HTTP, XMPP: their wording is tested in test_refusal_wording).
        assert isinstance(refusal("mx.example").opening(), base.Reply)


@pytest.mark.parametrize("wire", [w for w in catalogue.Wire if w is not catalogue.Wire.NNTP])
def test_protocols_without_a_gate_are_relayed_from_the_first_byte(wire):
    assert protocols.gate_for(wire, anonymous=False, starttls=True, tls_active=False) is None


def test_nntp_has_its_reader_gate_unless_anonymous_reading_is_allowed():
    make = protocols.gate_for(catalogue.Wire.NNTP, anonymous=False, starttls=True, tls_active=False)
    assert make is not None
    gate = make()
    assert isinstance(gate, nntp.ReaderGate)
    assert gate.offer_starttls
    out = gate.from_backend(b"200 ready\r\n")
    assert isinstance(out, base.GateOutput)
    assert out.to_client == b"200 ready\r\n"
    assert (
        protocols.gate_for(catalogue.Wire.NNTP, anonymous=True, starttls=True, tls_active=False)
        is None
    )
