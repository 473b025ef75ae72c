"""Address spraying against the abuse defence (issue 11): thousands of distinct source
addresses, each connecting, then coming back over its rate limit and getting banned. The
listener answers every one in SMTP's words, keeps /healthz fast, does not grow with the
number of addresses, and holds no slot afterwards. (The table bound itself, at a million
addresses, is the unit test tests/unit/test_abuse.py: a million sockets is not a test.)"""

from __future__ import annotations

import pytest

from mailwarden.listener import config as lc
from tests.support import refusals
from tests.support.attack import (
    HEALTHZ_BOUND,
    Deadline,
    HealthzWatch,
    connect,
    recv_until,
    source_address,
)
from tests.support.listener import service
from tests.support.misbehaving import Behaviour

SVC = "attack/smtp"
GREETING = b"220 backend\r\n"
RATE_LIMITED = refusals.line("smtp", "rate_limited")
BANNED = refusals.line("smtp", "banned")
ADDRESSES = 1500


@pytest.mark.timeout(180)
def test_sprayed_addresses_are_limited_then_banned_each_on_its_own_without_growth(
    misbehaving_backend, listener_process
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(
        service(
            SVC,
            backend_port=b.port,
            rate_limit=lc.RateLimit(connections_per_minute=1),
            auto_ban=lc.AutoBan(after_failures=1, within_seconds=60, ban_seconds=600),
        )
    )
    port = lp.port()
    rss_before = lp.rss_mib()
    deadline = Deadline(150)
    answers: dict[bytes, int] = {}
    with HealthzWatch(lp.metrics_port) as watch:
        # Three rounds over the same addresses: admitted, over the rate limit (a failure,
        # which bans at once), banned.
        for expected in (GREETING, RATE_LIMITED, BANNED):
            for i in range(ADDRESSES):
                assert not deadline.expired, "the spray took too long"
                with connect(port, source_address(i)) as s:
                    line = recv_until(s, b"\r\n", timeout=5)
                assert line.startswith(expected), (i, line)
                answers[expected] = answers.get(expected, 0) + 1
    assert answers == {GREETING: ADDRESSES, RATE_LIMITED: ADDRESSES, BANNED: ADDRESSES}
    assert watch.worst < HEALTHZ_BOUND, f"/healthz took {watch.worst:.2f} s"
    assert lp.metric("mailwarden_banned_addresses", service=SVC) == ADDRESSES
    assert lp.metric("mailwarden_bans_total", service=SVC) == ADDRESSES
    assert lp.wait_metric("mailwarden_connections_active", 0, service=SVC) == 0
    # 4,500 connections from 1,500 addresses: a few hundred bytes an address at most.
    grown = lp.rss_mib() - rss_before
    assert grown < 8, f"RSS grew {grown:.1f} MiB"
    # Another address is still served at once.
    with connect(port, source_address(ADDRESSES + 1)) as s:
        assert recv_until(s, b"\r\n", timeout=5) == GREETING
