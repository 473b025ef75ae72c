"""A second SIGTERM or SIGINT cuts the shutdown short (issue 12, point 9), as nginx's and
HAProxy's fast shutdowns do: every session still open is closed at once and the process
exits. Bound: exit within 2 s of the second signal. Before: the second signal was ignored and
the process waited out the whole drain (30 s here) with the sessions held."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.attack import close_all, open_clients, recv_some, wait_for
from tests.support.listener import service
from tests.support.misbehaving import Behaviour

SVC = "attack/smtp"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)],
    ids=["SIGTERM-twice", "Ctrl-C-twice"],
)
def test_a_second_signal_closes_held_sessions_and_exits_at_once(
    misbehaving_backend, listener_process, first, second
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service(SVC, backend_port=b.port), drain_seconds=30.0)
    held = open_clients(lp.port(), 50, distinct_sources=True)
    assert len(held) == 50
    assert all(recv_some(s).startswith(b"220") for s in held)
    lp.signal(first)
    wait_for(lambda: "draining for up to" in lp.log(), 5, "the drain to start")
    time.sleep(0.5)
    assert lp.alive()  # the held sessions keep it draining
    t0 = time.monotonic()
    lp.signal(second)
    assert lp.proc is not None
    assert lp.proc.wait(5) == 0
    assert time.monotonic() - t0 < 2.0
    assert all(recv_some(s, timeout=1) == b"" for s in held)  # closed, not left hanging
    close_all(held)
