"""Keeping file descriptors from running out while accepting (issue 12, point 5).

When accept() fails with EMFILE under uvloop, libuv's "EMFILE trick" accepts and closes
every connection waiting in the backlog: clients see a bare close, with no reply, no log line
and no metric. So the listener must not get there: it stops accepting while its descriptors
run short, leaving new clients in the kernel's backlog (as HAProxy does at its maxconn), and
accepts again once enough are free. This module keeps the count; the listener acts on it.

The count is kept cheaply on the hot path: the descriptors open when last measured that are
not client connections (listening sockets, backends, the metrics port, files) plus the
clients now, counting every client since as two (it may connect a backend). It is measured
from /proc/self/fd only when it comes near the limit, at most once per sweep."""

from __future__ import annotations

import os
import resource

# Descriptors kept free for what is not a new client: backend connections of sessions
# already admitted, the metrics port, reading the configuration and certificates, and the
# rest of an accept batch already under way when the listener decides to stop.
MIN_RESERVE = 16
RESERVE_FRACTION = 8  # an eighth of the limit
# ... but no more than this: at a limit of 20,000 a listener must still hold 9,000 relayed
# sessions (18,000 descriptors), as the benchmark does.
MAX_RESERVE = 256


def soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def count_open() -> int | None:
    """Descriptors open in this process now, or None where /proc cannot say."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor
    except OSError:
        return None


class Budget:
    """How close the process is to its open-file limit."""

    __slots__ = ("_clients_then", "_other", "limit", "reserve")

    def __init__(self) -> None:
        self.limit = soft_limit()
        self.reserve = _reserve(self.limit)
        self._other = 0
        self._clients_then = 0

    def measure(self, clients: int) -> int:
        """Count the open descriptors now; `clients` is the number of client connections.
        Returns the count (an estimate where /proc is missing)."""
        self.limit = soft_limit()
        self.reserve = _reserve(self.limit)
        found = count_open()
        if found is None:
            return self.estimate(clients)
        self._other = max(0, found - clients)
        self._clients_then = clients
        return found

    def estimate(self, clients: int) -> int:
        return self._other + clients + max(0, clients - self._clients_then)

    def near(self, clients: int) -> bool:
        """Worth measuring: the estimate is within twice the reserve of the limit."""
        return self.estimate(clients) + 2 * self.reserve >= self.limit

    def short(self, clients: int) -> bool:
        """Accepting one more client could leave less than the reserve free."""
        return self.estimate(clients + 1) + self.reserve >= self.limit

    def recovered(self, open_now: int) -> bool:
        """Enough free to accept again (hysteresis: twice the reserve)."""
        return open_now + 2 * self.reserve <= self.limit


def _reserve(limit: int) -> int:
    return min(MAX_RESERVE, max(MIN_RESERVE, limit // RESERVE_FRACTION))
