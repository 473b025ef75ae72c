"""Live figures of a listener process: sessions open now and refusals over the last five
minutes, per service, served as JSON on `GET /status` beside `/metrics`. The operator sums
them over a MailService's pods into `status.connections` (what `kubectl get msvc` shows).

Prometheus counters only ever grow; a window needs its own structure. Refusals are counted
in a ring of time buckets: a refusal adds one to a slot of the current bucket, nothing is
allocated per connection, and old buckets are zeroed as the clock moves on, so memory is a
fixed 60 x 6 integers per service whatever the load."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

# Outcome label (metrics.py, contract C2) -> field of the status JSON (contract C1).
STATUS_NAMES: dict[str, str] = {
    "denied": "denied",
    "over_cap": "overCap",
    "over_address_cap": "overAddressCap",
    "rate_limited": "rateLimited",
    "banned": "banned",
    "backend_error": "backendDown",
}
REFUSALS = tuple(STATUS_NAMES)

WINDOW_SECONDS = 300.0
BUCKET_SECONDS = 5.0
CONTENT_TYPE = "application/json"


class RefusalWindow:
    """Refusals by outcome over the last WINDOW_SECONDS (to within one bucket: an event
    leaves the window between 295 and 300 s after it happened). Single-threaded, like the
    event loop that feeds it."""

    __slots__ = ("_buckets", "_clock", "_edge", "_epoch", "_row", "_width")

    def __init__(
        self,
        *,
        window: float = WINDOW_SECONDS,
        bucket: float = BUCKET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._width = bucket
        self._clock = clock
        self._buckets = [[0] * len(REFUSALS) for _ in range(max(1, round(window / bucket)))]
        self._epoch = int(clock() // bucket)
        # The current bucket, and when the next one starts: the hot path compares one clock
        # reading with `_edge` and increments a slot of `_row`, nothing more.
        self._row = self._buckets[self._epoch % len(self._buckets)]
        self._edge = (self._epoch + 1) * bucket

    def add(self, slot: int) -> None:
        """Count one refusal of outcome REFUSALS[slot] now."""
        if self._clock() >= self._edge:
            self._advance()
        self._row[slot] += 1

    def _advance(self) -> None:
        """Move to the bucket of now, zeroing those of the epochs the clock skipped (all of
        them after a long quiet)."""
        epoch = int(self._clock() // self._width)
        n = len(self._buckets)
        for e in range(max(self._epoch + 1, epoch - n + 1), epoch + 1):
            row = self._buckets[e % n]
            for i in range(len(row)):
                row[i] = 0
        self._epoch = epoch
        self._row = self._buckets[epoch % n]
        self._edge = (epoch + 1) * self._width

    def totals(self) -> dict[str, int]:
        """Refusals per outcome label over the window, as of now."""
        if self._clock() >= self._edge:
            self._advance()
        return {name: sum(row[i] for row in self._buckets) for i, name in enumerate(REFUSALS)}


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Counted:
    """A Prometheus counter child that also feeds a refusal window: session code keeps
    calling `.inc()` on its outcome counter and the window follows."""

    __slots__ = ("_counter", "_slot", "_window")

    def __init__(self, counter: Counter, window: RefusalWindow, outcome: str) -> None:
        self._counter = counter
        self._window = window
        self._slot = REFUSALS.index(outcome)

    def inc(self, amount: float = 1) -> None:
        self._counter.inc(amount)
        # RefusalWindow.add, inlined: this runs for every refused connection of a flood.
        window = self._window
        if window._clock() >= window._edge:
            window._advance()
        window._row[self._slot] += 1


@dataclasses.dataclass(frozen=True)
class Service:
    """What /status reports of one running service, read when /status is asked."""

    name: str
    active: int
    window: RefusalWindow
    banned_addresses: int = 0


def rfc3339(at: float) -> str:
    return (
        datetime.datetime.fromtimestamp(at, datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def document(services: Iterable[Service], at: float) -> dict[str, object]:
    """The /status document (contract C1)."""
    out: dict[str, Mapping[str, object]] = {}
    for svc in services:
        totals = svc.window.totals()
        out[svc.name] = {
            "active": svc.active,
            "refusals": {STATUS_NAMES[k]: v for k, v in totals.items()},
            "bannedAddresses": svc.banned_addresses,
        }
    return {"observedAt": rfc3339(at), "services": out}


def response(services: Iterable[Service]) -> tuple[int, bytes, str]:
    body = json.dumps(document(services, time.time()), separators=(",", ":")).encode()
    return 200, body, CONTENT_TYPE
