"""The abuse defence over real sockets, clients on several 127.0.0.x source addresses: the
per-address rate limit, bans after failures (refusals and failed logins against real Dovecot
and INN), their expiry, and exempt addresses."""

from __future__ import annotations

import socket
import time

import msgspec
import pytest

from mailwarden.listener import config as lc
from tests.listener.test_process import Served, get, write
from tests.support import refusals
from tests.support.listener import free_port, service, wait_until
from tests.support.mail_servers import MAIL_PASSWORD, MAIL_USER, NEWS_PASSWORD, NEWS_USER
from tests.support.raw_tcp import connect, exchange, greeter, read_line, read_until_eof

SMTP_RATE_LIMITED = refusals.line("smtp", "rate_limited", host="svc")
SMTP_BANNED = refusals.line("smtp", "banned", host="svc")


def outcome(lt, what: str, name: str = "test/svc") -> float:
    return lt.metric("mailwarden_connections_total", service=name, outcome=what)


def greeting_from(port: int, source: str) -> bytes:
    with connect(port, source=source) as s:
        return read_line(s)


@pytest.fixture
def smtp_backend(backend):
    return backend(greeter(b"220 backend ESMTP\r\n"))


def test_the_n_plus_first_connection_in_a_minute_is_refused_and_other_addresses_are_not(
    run_listener, smtp_backend
):
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        rate_limit=lc.RateLimit(connections_per_minute=3),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    for _ in range(3):
        assert greeting_from(port, "127.0.0.21") == b"220 backend ESMTP\r\n"
    with connect(port, source="127.0.0.21") as s:
        refused = read_until_eof(s)
    assert refused.startswith(SMTP_RATE_LIMITED), refused
    assert refused.endswith(b"\r\n")
    # Another address has its own minute.
    for _ in range(3):
        assert greeting_from(port, "127.0.0.22") == b"220 backend ESMTP\r\n"
    assert outcome(lt, "rate_limited") == 1
    assert outcome(lt, "accepted") == 6
    # The refused connection never reached the backend.
    assert smtp_backend.connections == 6


def test_an_address_is_banned_after_its_failures_and_admitted_again_when_the_ban_ends(
    run_listener, smtp_backend
):
    # Over the per-address cap is a failure: three refusals within the window ban the address.
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        max_connections_per_address=1,
        auto_ban=lc.AutoBan(after_failures=3, within_seconds=30, ban_seconds=1.5),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    held = connect(port, source="127.0.0.23")
    try:
        assert read_line(held) == b"220 backend ESMTP\r\n"
        for _ in range(3):
            with connect(port, source="127.0.0.23") as s:
                assert read_until_eof(s).startswith(b"421 4.7.0 svc Error: too many connections")
    finally:
        held.close()
    wait_until(lambda: lt.active("test/svc") == 0, what="the held session to end")
    banned_at = time.monotonic()
    with connect(port, source="127.0.0.23") as s:
        assert read_until_eof(s).startswith(SMTP_BANNED)
    assert greeting_from(port, "127.0.0.24") == b"220 backend ESMTP\r\n"  # others go on
    assert lt.metric("mailwarden_bans_total", service="test/svc") == 1
    assert lt.metric("mailwarden_banned_addresses", service="test/svc") == 1
    assert outcome(lt, "banned") == 1
    # Refused until the ban ends, then admitted.
    while time.monotonic() - banned_at < 1.0:
        with connect(port, source="127.0.0.23") as s:
            assert read_until_eof(s).startswith(SMTP_BANNED)
        time.sleep(0.2)
    wait_until(
        lambda: lt.metric("mailwarden_banned_addresses", service="test/svc") == 0,
        what="the ban to end",
    )
    assert greeting_from(port, "127.0.0.23") == b"220 backend ESMTP\r\n"


def test_an_exempt_address_is_never_rate_limited_nor_banned_but_the_caps_still_apply(
    run_listener, smtp_backend
):
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        max_connections_per_address=1,
        rate_limit=lc.RateLimit(connections_per_minute=1),
        auto_ban=lc.AutoBan(after_failures=2, within_seconds=30, exempt=("127.0.0.25/32",)),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    held = connect(port, source="127.0.0.25")
    try:
        assert read_line(held) == b"220 backend ESMTP\r\n"
        for _ in range(4):  # over the per-address cap, again and again: never banned
            with connect(port, source="127.0.0.25") as s:
                assert read_until_eof(s).startswith(b"421 4.7.0 svc Error: too many connections")
    finally:
        held.close()
    wait_until(lambda: lt.active("test/svc") == 0, what="the held session to end")
    for _ in range(3):  # over the rate limit: never limited
        assert greeting_from(port, "127.0.0.25") == b"220 backend ESMTP\r\n"
        # (one at a time: the per-address cap of 1 still applies)
        wait_until(lambda: lt.active("test/svc") == 0, what="the session to end")
    assert outcome(lt, "banned") == 0 and outcome(lt, "rate_limited") == 0
    # The same policy limits and bans a neighbour that is not exempt.
    assert greeting_from(port, "127.0.0.26") == b"220 backend ESMTP\r\n"
    for expected in (SMTP_RATE_LIMITED, SMTP_RATE_LIMITED, SMTP_BANNED):
        with connect(port, source="127.0.0.26") as s:
            assert read_until_eof(s).startswith(expected)


def test_denied_addresses_are_banned_too(run_listener, smtp_backend):
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        allow=("127.0.0.1/32",),
        auto_ban=lc.AutoBan(after_failures=2, within_seconds=30, ban_seconds=60),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    for _ in range(2):
        with connect(port, source="127.0.0.27") as s:
            s.sendall(b"QUIT\r\n")
            assert read_until_eof(s).startswith(b"554 5.7.1")
    assert lt.metric("mailwarden_bans_total", service="test/svc") == 1


def test_a_reload_keeps_bans_and_counts(run_listener, smtp_backend):
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        rate_limit=lc.RateLimit(connections_per_minute=1),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    assert greeting_from(port, "127.0.0.28") == b"220 backend ESMTP\r\n"
    lt.reload(lc.ListenerConfig(services=(msgspec.structs.replace(svc, hostname="svc"),)))
    with connect(port, source="127.0.0.28") as s:
        assert read_until_eof(s).startswith(SMTP_RATE_LIMITED)
    # Turned off by a reload, the limit refuses no one.
    lt.reload(
        lc.ListenerConfig(services=(msgspec.structs.replace(svc, rate_limit=lc.RateLimit()),))
    )
    assert greeting_from(port, "127.0.0.28") == b"220 backend ESMTP\r\n"


def test_a_flood_of_refused_connections_from_one_address_holds_no_slot(run_listener, smtp_backend):
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        rate_limit=lc.RateLimit(connections_per_minute=2),
        auto_ban=lc.AutoBan(after_failures=5, within_seconds=30, ban_seconds=60),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.close()
    wait_until(
        lambda: outcome(lt, "accepted") + outcome(lt, "rate_limited") + outcome(lt, "banned") == 40,
        what="every connection decided",
    )
    assert outcome(lt, "accepted") == 2
    assert outcome(lt, "rate_limited") == 5
    assert outcome(lt, "banned") == 33
    wait_until(lambda: lt.active("test/svc") == 0, what="no session left")


# -- failed logins against real servers -----------------------------------------------------

NNTP_BANNED = refusals.line("nntp", "banned")
POP3_BANNED = refusals.line("pop3", "banned")
IMAP_BANNED = refusals.line("imap", "banned")


@pytest.mark.servers
def test_failed_authinfo_at_the_nntp_gate_in_front_of_inn_bans_the_reader(run_listener, inn):
    svc = service(
        "news/nntp",
        "NNTP",
        backend_port=inn.port,
        auto_ban=lc.AutoBan(after_failures=2, within_seconds=30, ban_seconds=60),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    with connect(port, source="127.0.0.31") as s:
        assert read_line(s).startswith(b"201 ")
        for _ in range(2):
            assert exchange(s, b"AUTHINFO USER " + NEWS_USER.encode() + b"\r\n").startswith(b"381")
            assert exchange(s, b"AUTHINFO PASS wrong\r\n").startswith(b"481")
    with connect(port, source="127.0.0.31") as s:
        assert read_until_eof(s) == NNTP_BANNED
    # Another reader logs in as usual.
    with connect(port, source="127.0.0.32") as s:
        assert read_line(s).startswith(b"201 ")
        assert exchange(s, b"AUTHINFO USER " + NEWS_USER.encode() + b"\r\n").startswith(b"381")
        assert exchange(s, b"AUTHINFO PASS " + NEWS_PASSWORD.encode() + b"\r\n").startswith(b"281")
    assert lt.metric("mailwarden_login_failures_total", service="news/nntp") == 2
    assert lt.metric("mailwarden_bans_total", service="news/nntp") == 1


@pytest.mark.servers
def test_failed_pop3_and_imap_logins_against_dovecot_ban_the_address(run_listener, dovecot):
    ban = lc.AutoBan(after_failures=3, within_seconds=30, ban_seconds=60)
    pop = service("mail/pop3", "POP3", backend_port=dovecot.pop3_port, auto_ban=ban)
    imap = service("mail/imap", "IMAP", backend_port=dovecot.imap_port, auto_ban=ban)
    lt = run_listener(pop, imap)
    with connect(pop.listen[0].port, source="127.0.0.33") as s:
        assert read_line(s).startswith(b"+OK")
        for _ in range(3):
            assert exchange(s, b"USER " + MAIL_USER.encode() + b"\r\n").startswith(b"+OK")
            assert exchange(s, b"PASS wrong\r\n").startswith(b"-ERR")
    with connect(pop.listen[0].port, source="127.0.0.33") as s:
        assert read_until_eof(s) == POP3_BANNED
    with connect(imap.listen[0].port, source="127.0.0.34") as s:
        assert read_line(s).startswith(b"* OK")
        # Pipelined: three failed logins in one segment are three failures.
        s.sendall(b"a LOGIN alice wrong\r\nb LOGIN alice wrong\r\nc LOGIN alice wrong\r\n")
        for tag in (b"a", b"b", b"c"):
            assert read_line(s).startswith(tag + b" NO ")
    with connect(imap.listen[0].port, source="127.0.0.34") as s:
        assert read_until_eof(s) == IMAP_BANNED
    # Success switches the watcher off; a good login from another address is untouched.
    with connect(imap.listen[0].port, source="127.0.0.35") as s:
        assert read_line(s).startswith(b"* OK")
        s.sendall(f"a LOGIN {MAIL_USER} {MAIL_PASSWORD}\r\n".encode())
        assert read_line(s).startswith(b"a OK ")
    assert lt.metric("mailwarden_login_failures_total", service="mail/pop3") == 3
    assert lt.metric("mailwarden_login_failures_total", service="mail/imap") == 3
    assert lt.metric("mailwarden_banned_addresses", service="mail/imap") == 1


def test_behind_a_trusted_load_balancer_the_client_of_the_proxy_header_is_counted(
    run_listener, smtp_backend
):
    svc = service(
        backend_port=smtp_backend.port,
        hostname="svc",
        proxy_protocol_from=("127.0.0.1/32",),
        rate_limit=lc.RateLimit(connections_per_minute=1),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port

    def through_balancer(client: str) -> bytes:
        with connect(port, source="127.0.0.1") as s:
            s.sendall(f"PROXY TCP4 {client} 192.0.2.1 40000 25\r\n".encode())
            return read_line(s)

    assert through_balancer("203.0.113.7") == b"220 backend ESMTP\r\n"
    assert through_balancer("203.0.113.7").startswith(SMTP_RATE_LIMITED)
    # The balancer's own address is not what is limited: other clients behind it go on.
    assert through_balancer("203.0.113.8") == b"220 backend ESMTP\r\n"
    assert outcome(lt, "rate_limited") == 1


def test_an_ipv6_client_is_rate_limited_as_its_64(run_listener, smtp_backend):
    svc = service(
        address="::1",
        backend_port=smtp_backend.port,
        hostname="svc",
        rate_limit=lc.RateLimit(connections_per_minute=1),
    )
    lt = run_listener(svc)
    port = svc.listen[0].port
    assert greeting_from_v6(port) == b"220 backend ESMTP\r\n"
    assert greeting_from_v6(port).startswith(SMTP_RATE_LIMITED)
    assert outcome(lt, "rate_limited") == 1


def greeting_from_v6(port: int) -> bytes:
    with connect(port, source="::1", host="::1") as s:
        return read_line(s)


def test_status_reports_rate_limited_and_banned_refusals_and_banned_addresses(
    tmp_path, smtp_backend
):
    """`GET /status` of a listener run as `mailwarden listener` runs it (contract C1)."""
    cfg = lc.ListenerConfig(
        services=(
            service(
                "mail/smtp",
                backend_port=smtp_backend.port,
                hostname="svc",
                rate_limit=lc.RateLimit(connections_per_minute=1),
                auto_ban=lc.AutoBan(after_failures=2, within_seconds=30, ban_seconds=60),
            ),
        ),
        metrics=lc.Metrics(address="127.0.0.1", port=free_port()),
        drain_seconds=1,
    )
    path = tmp_path / "listener.yaml"
    write(path, lc.dumps(cfg))
    served = Served(path).start()
    try:
        port = cfg.services[0].listen[0].port
        assert greeting_from(port, "127.0.0.71") == b"220 backend ESMTP\r\n"
        for expected in (SMTP_RATE_LIMITED, SMTP_RATE_LIMITED, SMTP_BANNED):
            with connect(port, source="127.0.0.71") as s:
                assert read_line(s).startswith(expected)
        smtp = get(cfg, "/status").json()["services"]["mail/smtp"]
        assert smtp["refusals"]["rateLimited"] == 2
        assert smtp["refusals"]["banned"] == 1
        assert smtp["bannedAddresses"] == 1
        metrics = get(cfg, "/metrics").text
        assert 'mailwarden_banned_addresses{service="mail/smtp"} 1' in metrics
        assert 'mailwarden_bans_total{service="mail/smtp"} 1' in metrics
    finally:
        served.shutdown()
