"""Connection caps: for the service as a whole and per client address (0 = unlimited)."""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    ACCEPTED = "accepted"  # the metrics outcome of an admitted connection (C2)
    OVER_CAP = "over_cap"
    OVER_ADDRESS_CAP = "over_address_cap"


class ConnectionLimiter:
    """Counts sessions. Single-threaded (one event loop), so no locking is needed, and the
    check-and-count is one step: a burst of N+k against a cap of N admits exactly N."""

    __slots__ = ("active", "max_per_address", "max_total", "per_address")

    def __init__(self, max_total: int = 0, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.active = 0
        self.per_address: dict[str, int] = {}

    def acquire(self, address: str) -> Verdict:
        if self.max_total and self.active >= self.max_total:
            return Verdict.OVER_CAP
        # Counted per address even without a per-address cap, so a cap added by a reload
        # knows what every address already holds.
        held = self.per_address.get(address, 0)
        if self.max_per_address and held >= self.max_per_address:
            return Verdict.OVER_ADDRESS_CAP
        self.per_address[address] = held + 1
        self.active += 1
        return Verdict.ACCEPTED

    def release(self, address: str) -> None:
        self.active -= 1
        held = self.per_address.get(address, 0)
        if held <= 1:
            self.per_address.pop(address, None)
        else:
            self.per_address[address] = held - 1

    def reconfigure(self, max_total: int, max_per_address: int) -> None:
        """New caps apply to new sessions; sessions already admitted are kept."""
        self.max_total = max_total
        self.max_per_address = max_per_address
