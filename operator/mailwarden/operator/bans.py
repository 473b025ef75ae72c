"""Events for bans, from the live figures the operator already polls (status.connections).

The listener cannot post Events (it has no API credentials, on purpose), and a flood of bans
must not become a flood of API writes. So the operator, when a poll shows more addresses
banned than the figures it last wrote, posts one Warning Event on the MailService, and at
most one per MailService every EVENT_SECONDS. The Event says how many; the listener's log
(and `mailwarden_bans_total`) name each banned address."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

REASON = "AddressesBanned"
# At most one ban Event per MailService in this many seconds (the figures' own window).
EVENT_SECONDS = 300.0


def message(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """The Event's message when more addresses are banned than before, else None."""
    before = int((old or {}).get("bannedAddresses") or 0)
    now = int(new.get("bannedAddresses") or 0)
    if now <= before:
        return None
    refused = int(new.get("banned") or 0)
    return (
        f"{now} client addresses (IPv6: networks) banned now, {before} at the previous count; "
        f"{refused} connections refused as banned in the last 5 minutes. The listener pods' "
        "logs name each banned address; spec.access.autoBan sets the policy."
    )


class Throttle:
    """At most one Event per key in `seconds`. Memory: one float per MailService that ever
    had a ban Event, dropped when the MailService goes (`forget`)."""

    __slots__ = ("_clock", "_last", "seconds")

    def __init__(self, seconds: float = EVENT_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, key: tuple[str, str]) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        self._last[key] = now
        return True

    def forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)
