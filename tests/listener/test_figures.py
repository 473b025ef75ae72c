"""Live figures: the five-minute refusal window (a ring of time buckets) and `GET /status`
on the metrics port, served by a listener running as `mailwarden listener` runs it, with real
sessions refused and admitted."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Iterator

import pytest

from mailwarden.listener import config as lc
from mailwarden.listener import figures
from tests.listener.test_process import GREETING, Served, get, write
from tests.support.listener import free_port, service, wait_until
from tests.support.raw_tcp import connect, greeter, read_line


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_window_counts_refusals_by_outcome_and_forgets_them_after_five_minutes() -> None:
    clock = Clock()
    w = figures.RefusalWindow(clock=clock)
    denied, over_cap = figures.REFUSALS.index("denied"), figures.REFUSALS.index("over_cap")
    w.add(denied)
    clock.t += 100
    w.add(denied)
    w.add(over_cap)
    assert w.totals() == {**dict.fromkeys(figures.REFUSALS, 0), "denied": 2, "over_cap": 1}
    clock.t += 150  # 250 s after the first: all still there
    assert w.totals()["denied"] == 2
    clock.t += 50  # 300 s after the first: it has left, the later ones have not
    assert w.totals() == {**dict.fromkeys(figures.REFUSALS, 0), "denied": 1, "over_cap": 1}
    clock.t += 3600  # a long quiet: nothing left, and counting starts afresh
    assert sum(w.totals().values()) == 0
    w.add(over_cap)
    assert w.totals()["over_cap"] == 1


def test_an_event_leaves_the_window_between_295_and_300_seconds_later() -> None:
    clock = Clock(0.0)
    w = figures.RefusalWindow(clock=clock)
    clock.t = 7.3
    w.add(0)
    clock.t = 7.3 + 294.9
    assert w.totals()["denied"] == 1
    clock.t = 7.3 + 300.0
    assert w.totals()["denied"] == 0


def test_the_window_does_not_grow_with_the_number_of_refusals() -> None:
    clock = Clock()
    w = figures.RefusalWindow(clock=clock)
    rows = len(w._buckets)
    for i in range(100_000):
        clock.t += 0.01
        w.add(i % len(figures.REFUSALS))
    assert len(w._buckets) == rows == 60
    assert all(len(row) == len(figures.REFUSALS) for row in w._buckets)
    # 100,000 refusals over 1,000 s: the window holds the last 300 s of them (to one bucket).
    assert 29_500 <= sum(w.totals().values()) <= 30_000


def test_the_status_document_has_every_field_of_the_contract() -> None:
    w = figures.RefusalWindow()
    w.add(figures.REFUSALS.index("backend_error"))
    doc = figures.document([figures.Service("mail/smtp", 3, w)], 0.0)
    assert doc == {
        "observedAt": "1970-01-01T00:00:00Z",
        "services": {
            "mail/smtp": {
                "active": 3,
                "refusals": {
                    "denied": 0,
                    "overCap": 0,
                    "overAddressCap": 0,
                    "rateLimited": 0,
                    "banned": 0,
                    "backendDown": 1,
                },
                "bannedAddresses": 0,
            }
        },
    }


@pytest.fixture
def capped(tmp_path: pathlib.Path, backend) -> Iterator[tuple[Served, lc.ListenerConfig]]:
    back = backend(greeter(GREETING))
    cfg = lc.ListenerConfig(
        services=(
            service(
                "mail/smtp",
                "SMTP",
                backend_port=back.port,
                allow=("127.0.0.1/32", "127.0.0.2/32"),
                max_connections=3,
                max_connections_per_address=1,
            ),
            service("mail/imap", "IMAP", backend_port=back.port),
        ),
        metrics=lc.Metrics(address="127.0.0.1", port=free_port()),
        drain_seconds=1,
    )
    path = tmp_path / "listener.yaml"
    write(path, lc.dumps(cfg))
    s = Served(path).start()
    yield s, cfg
    s.shutdown()


def test_status_reports_open_sessions_and_refusals_per_service(capped) -> None:
    _, cfg = capped
    port = cfg.services[0].listen[0].port
    with connect(port) as first, connect(port, source="127.0.0.2") as second:
        assert read_line(first) == GREETING
        assert read_line(second) == GREETING
        with connect(port, source="127.0.0.1") as again:  # a second from the same address
            assert read_line(again).startswith(b"421 4.7.0")
        with connect(port, source="127.0.0.9") as stranger:
            assert read_line(stranger).startswith(b"554 5.7.1")
        answer = get(cfg, "/status")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        doc = answer.json()
        smtp = doc["services"]["mail/smtp"]
        assert smtp["active"] == 2
        assert smtp["refusals"] == {
            "denied": 1,
            "overCap": 0,
            "overAddressCap": 1,
            "rateLimited": 0,
            "banned": 0,
            "backendDown": 0,
        }
        assert smtp["bannedAddresses"] == 0
        assert doc["services"]["mail/imap"]["active"] == 0
        seen = datetime.datetime.fromisoformat(doc["observedAt"].replace("Z", "+00:00"))
        assert abs((datetime.datetime.now(datetime.UTC) - seen).total_seconds()) < 60
    # Sessions gone: active falls back; the refusals stay for five minutes.
    wait_until(
        lambda: get(cfg, "/status").json()["services"]["mail/smtp"]["active"] == 0,
        what="active to fall back to 0",
    )
    assert get(cfg, "/status").json()["services"]["mail/smtp"]["refusals"]["denied"] == 1


def test_a_backend_that_is_down_counts_as_backend_down(tmp_path: pathlib.Path) -> None:
    cfg = lc.ListenerConfig(
        services=(service("mail/pop", "POP3", backend_port=free_port()),),
        metrics=lc.Metrics(address="127.0.0.1", port=free_port()),
        drain_seconds=1,
    )
    path = tmp_path / "listener.yaml"
    write(path, lc.dumps(cfg))
    s = Served(path).start()
    try:
        with connect(cfg.services[0].listen[0].port) as c:
            assert read_line(c).startswith(b"-ERR")
        refusals = get(cfg, "/status").json()["services"]["mail/pop"]["refusals"]
        assert refusals["backendDown"] == 1
    finally:
        s.shutdown()
