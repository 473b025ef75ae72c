"""The abuse tables (rate limit, failures, bans) as pure objects: the caller gives the time."""

from __future__ import annotations

import ipaddress
import time

import pytest

from mailwarden.listener import abuse, acl


def addr(text: str) -> tuple[acl.IPAddress, str]:
    return acl.parse_client(text)


def admit(guard: abuse.Guard, text: str, now: float) -> abuse.Verdict:
    return guard.admit(*addr(text), now)[0]


# -- the rate limit -------------------------------------------------------------------------


def test_a_burst_of_n_is_admitted_and_the_next_one_in_the_same_minute_is_refused():
    guard = abuse.Guard(abuse.Policy(connections_per_minute=3))
    assert [admit(guard, "192.0.2.1", 100.0 + i) for i in range(3)] == [abuse.Verdict.ACCEPTED] * 3
    verdict, wait = guard.admit(*addr("192.0.2.1"), 103.0)
    assert verdict is abuse.Verdict.RATE_LIMITED
    # The first of the three leaves the window at 160.
    assert wait == pytest.approx(57.0)
    assert admit(guard, "192.0.2.2", 103.0) is abuse.Verdict.ACCEPTED


def test_the_window_slides_so_no_minute_ever_holds_more_than_n():
    guard = abuse.Guard(abuse.Policy(connections_per_minute=2))
    assert admit(guard, "192.0.2.1", 0.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.1", 30.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.1", 59.0) is abuse.Verdict.RATE_LIMITED
    assert admit(guard, "192.0.2.1", 60.5) is abuse.Verdict.ACCEPTED  # the one at 0 left
    assert admit(guard, "192.0.2.1", 80.0) is abuse.Verdict.RATE_LIMITED  # 30 and 60.5 count


def test_refused_attempts_do_not_count_towards_the_rate_limit():
    guard = abuse.Guard(abuse.Policy(connections_per_minute=1))
    assert admit(guard, "192.0.2.1", 0.0) is abuse.Verdict.ACCEPTED
    for t in range(1, 60):
        assert admit(guard, "192.0.2.1", float(t)) is abuse.Verdict.RATE_LIMITED
    assert admit(guard, "192.0.2.1", 60.1) is abuse.Verdict.ACCEPTED


def test_ipv6_addresses_are_counted_per_64_by_default_and_per_configured_prefix():
    guard = abuse.Guard(abuse.Policy(connections_per_minute=1))
    assert admit(guard, "2001:db8:1:2::1", 0.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "2001:db8:1:2:ffff::9", 1.0) is abuse.Verdict.RATE_LIMITED
    assert admit(guard, "2001:db8:1:3::1", 1.0) is abuse.Verdict.ACCEPTED
    guard = abuse.Guard(abuse.Policy(connections_per_minute=1, rate_limit_ipv6_prefix=128))
    assert admit(guard, "2001:db8:1:2::1", 0.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "2001:db8:1:2::2", 0.0) is abuse.Verdict.ACCEPTED
    guard = abuse.Guard(abuse.Policy(connections_per_minute=1, rate_limit_ipv6_prefix=48))
    assert admit(guard, "2001:db8:1:2::1", 0.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "2001:db8:1:ffff::1", 0.0) is abuse.Verdict.RATE_LIMITED


def test_the_key_of_an_ipv6_client_is_its_network():
    address, name = addr("2001:db8:aa:bb:cc::1")
    assert abuse.address_key(address, name, 64) == "2001:db8:aa:bb::/64"
    assert abuse.address_key(address, name, 128) == "2001:db8:aa:bb:cc::1"
    v4, v4name = addr("::ffff:192.0.2.7")
    assert abuse.address_key(v4, v4name, 64) == "192.0.2.7"


def test_an_exempt_address_is_never_rate_limited():
    guard = abuse.Guard(
        abuse.Policy(connections_per_minute=1, exempt=acl.AddressSet(["192.0.2.0/28"]))
    )
    for t in range(20):
        assert admit(guard, "192.0.2.5", float(t)) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.99", 0.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.99", 0.0) is abuse.Verdict.RATE_LIMITED


# -- failures and bans ----------------------------------------------------------------------

BANS = abuse.Policy(after_failures=3, within_seconds=10.0, ban_seconds=100.0)


def test_the_nth_failure_within_the_window_bans_the_address_until_the_ban_ends():
    guard = abuse.Guard(BANS)
    a = addr("192.0.2.1")
    assert guard.failure(*a, 0.0) is None
    assert guard.failure(*a, 5.0) is None
    ban = guard.failure(*a, 9.0)
    assert ban is not None and ban.key == "192.0.2.1" and ban.failures == 3
    assert ban.until - ban.started == pytest.approx(100.0)
    assert guard.bans_started == 1
    assert guard.banned_now(9.0) == 1
    verdict, left = guard.admit(*a, 50.0)
    assert verdict is abuse.Verdict.BANNED and left == pytest.approx(59.0)
    assert admit(guard, "192.0.2.2", 50.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.1", 109.5) is abuse.Verdict.ACCEPTED
    assert guard.banned_now(109.5) == 0


def test_failures_spread_wider_than_the_window_do_not_ban():
    guard = abuse.Guard(BANS)
    a = addr("192.0.2.1")
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        assert guard.failure(*a, t) is None
    assert admit(guard, "192.0.2.1", 25.0) is abuse.Verdict.ACCEPTED


def test_a_ban_is_not_extended_by_failures_while_it_lasts_and_counting_starts_afresh():
    guard = abuse.Guard(BANS)
    a = addr("192.0.2.1")
    for t in (0.0, 1.0, 2.0):
        guard.failure(*a, t)
    assert guard.failure(*a, 50.0) is None
    assert admit(guard, "192.0.2.1", 102.5) is abuse.Verdict.ACCEPTED
    assert guard.failure(*a, 103.0) is None  # the failures before the ban are forgotten


def test_an_exempt_address_is_never_banned():
    guard = abuse.Guard(dataclass_replace(BANS, exempt=acl.AddressSet(["192.0.2.1/32"])))
    a = addr("192.0.2.1")
    for t in range(10):
        assert guard.failure(*a, float(t)) is None
    assert admit(guard, "192.0.2.1", 10.0) is abuse.Verdict.ACCEPTED
    assert guard.bans_started == 0


def test_ipv6_clients_are_banned_per_64():
    guard = abuse.Guard(BANS)
    for i in range(3):
        guard.failure(*addr(f"2001:db8::{i + 1}"), float(i))
    assert admit(guard, "2001:db8::ffff", 3.0) is abuse.Verdict.BANNED
    assert admit(guard, "2001:db8:0:1::1", 3.0) is abuse.Verdict.ACCEPTED


def test_a_shorter_ban_time_after_a_reload_applies_to_new_bans_and_the_gauge_stays_right():
    guard = abuse.Guard(BANS)
    for t in (0.0, 1.0, 2.0):
        guard.failure(*addr("192.0.2.1"), t)
    guard.configure(dataclass_replace(BANS, ban_seconds=10.0))
    for t in (3.0, 4.0, 5.0):
        guard.failure(*addr("192.0.2.2"), t)
    assert guard.banned_now(6.0) == 2
    assert guard.banned_now(20.0) == 1  # the short ban ended, the long one goes on
    assert admit(guard, "192.0.2.2", 20.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.1", 20.0) is abuse.Verdict.BANNED


def test_turning_the_policy_off_admits_everyone():
    guard = abuse.Guard(dataclass_replace(BANS, connections_per_minute=1))
    for t in (0.0, 1.0, 2.0):
        guard.failure(*addr("192.0.2.1"), t)
    assert guard.banned_now(3.0) == 1
    guard.configure(abuse.Policy())
    assert not guard.enabled
    assert guard.banned_now(3.0) == 0 and len(guard.rates) == 0
    assert admit(guard, "192.0.2.1", 3.0) is abuse.Verdict.ACCEPTED
    assert admit(guard, "192.0.2.1", 3.0) is abuse.Verdict.ACCEPTED


def dataclass_replace(policy: abuse.Policy, **changes: object) -> abuse.Policy:
    import dataclasses

    return dataclasses.replace(policy, **changes)  # type: ignore[arg-type]


# -- bounded memory -------------------------------------------------------------------------

SPRAY = 1_000_000


@pytest.mark.slow  # a million operations: a load check, not a quick one
def test_a_million_sprayed_addresses_keep_every_table_within_its_capacity_and_fast():
    """An address-spraying attack: one million distinct sources, each connecting and failing
    once, within one minute. The tables stay at their capacity (oldest keys evicted), and the
    work per connection stays constant."""
    capacity = 4096
    guard = abuse.Guard(
        abuse.Policy(connections_per_minute=5, after_failures=2, within_seconds=60.0),
        capacity=capacity,
    )
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    started = time.perf_counter()
    for i in range(SPRAY):
        address = ipaddress.IPv4Address(base + i)
        name = str(address)
        now = i * 50e-6  # a million connections in 50 seconds
        assert guard.admit(address, name, now)[0] is abuse.Verdict.ACCEPTED
        guard.failure(address, name, now)
        if i % 100_000 == 0:
            assert len(guard.rates) <= capacity
            assert len(guard.failures) <= capacity
    elapsed = time.perf_counter() - started
    assert len(guard.rates) == capacity
    assert len(guard.failures) == capacity
    assert guard.banned_now(50.0) == 0
    # Measured about 4 s on a shared 2-core machine; the bound leaves room for a busy one.
    assert elapsed < 30, f"{elapsed:.1f} s for {SPRAY} addresses"


@pytest.mark.slow  # a million operations: a load check, not a quick one
def test_a_million_sprayed_ipv6_addresses_in_one_64_are_one_key():
    guard = abuse.Guard(abuse.Policy(connections_per_minute=10**6 + 1), capacity=16)
    base = int(ipaddress.IPv6Address("2001:db8::"))
    for i in range(0, SPRAY, 10):  # a hundred thousand addresses of one /64
        address = ipaddress.IPv6Address(base + i)
        guard.admit(address, str(address), 0.0)
    assert len(guard.rates) == 1


def test_the_ban_list_holds_at_most_its_capacity_dropping_the_ban_that_ends_first():
    bans = abuse.BanList(capacity=3)
    for i in range(5):
        bans.ban(f"k{i}", until=100.0 + i, now=0.0)
    assert bans.count(0.0) == 3
    assert bans.remaining("k0", 0.0) == 0.0
    assert bans.remaining("k4", 0.0) == pytest.approx(104.0)


def test_quiet_keys_leave_the_table_as_time_passes():
    log = abuse.SlidingLog(limit=3, window=10.0, capacity=1000)
    for i in range(100):
        log.add(f"k{i}", 0.0)
    for i in range(20):
        log.add(f"late{i}", 20.0)
    assert len(log) == 20  # each new key drops up to eight stale ones


@pytest.mark.slow  # a million operations: a load check, not a quick one
def test_a_high_limit_costs_constant_time_per_connection_from_one_busy_address():
    """One address at 100,000 connections a minute (the highest limit): the window slides
    by moving an index, not by shifting 100,000 times."""
    guard = abuse.Guard(abuse.Policy(connections_per_minute=100_000))
    address, name = addr("192.0.2.1")
    started = time.perf_counter()
    admitted = 0
    for i in range(300_000):  # five minutes at 1,000 a second
        if guard.admit(address, name, i / 1000.0)[0] is abuse.Verdict.ACCEPTED:
            admitted += 1
    elapsed = time.perf_counter() - started
    assert admitted == 300_000  # 60,000 per minute, under the limit
    assert elapsed < 10, f"{elapsed:.1f} s"
    times = guard.rates._table[name]
    assert len(times) == 60_000
    assert len(times.times) < 2 * 60_000 + 64  # compacted as it goes


# -- the listener configuration -------------------------------------------------------------

BASE = """
services:
  - name: mail/smtp
    service: SMTP
    listen: [{port: 2525}]
    backend: {host: 127.0.0.1, port: 25}
"""


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (
            "rate_limit: {connections_per_minute: -1}",
            "services.0.rate_limit.connections_per_minute",
        ),
        ("rate_limit: {ipv6_prefix_length: 129}", "services.0.rate_limit.ipv6_prefix_length"),
        ("auto_ban: {after_failures: 0}", "services.0.auto_ban.after_failures"),
        ("auto_ban: {within_seconds: 5}", "services.0.auto_ban.after_failures"),  # required
        ("auto_ban: {after_failures: 3, ban_seconds: 0}", "services.0.auto_ban.ban_seconds"),
        ("auto_ban: {after_failures: 3, exempt: [nope]}", "services.0.auto_ban.exempt.0"),
        ("auto_ban: {after_failures: 3, bogus: 1}", "services.0.auto_ban.bogus"),
    ],
)
def test_a_bad_abuse_setting_in_the_listener_file_is_refused_naming_the_field(extra, where):
    from mailwarden.listener import config as lc

    with pytest.raises(lc.ConfigError) as caught:
        lc.loads(BASE + "    " + extra + "\n")
    assert str(caught.value).startswith(where + ": "), str(caught.value)


def test_the_listener_file_takes_the_abuse_settings_and_normalises_exempt_networks():
    from mailwarden.listener import config as lc

    cfg = lc.loads(
        BASE
        + "    rate_limit: {connections_per_minute: 30}\n"
        + "    auto_ban: {after_failures: 5, exempt: [192.0.2.7/24, '2001:db8::1/64']}\n"
    )
    svc = cfg.services[0]
    assert svc.rate_limit.connections_per_minute == 30
    assert svc.auto_ban is not None
    assert svc.auto_ban.exempt == ("192.0.2.0/24", "2001:db8::/64")
    assert (svc.auto_ban.within_seconds, svc.auto_ban.ban_seconds) == (60.0, 600.0)
    assert lc.loads(lc.dumps(cfg)) == cfg
