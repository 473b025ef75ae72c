"""Abuse defence for one service: a per-address connection rate limit and automatic bans after
repeated failures (Postfix's anvil, fail2ban, HAProxy's stick tables), in fixed-size tables.

Pure: the caller passes the time (the event loop's monotonic clock), so the tables are tested
without sockets or sleeps. Single-threaded, like everything in the listener.

Memory stays bounded whatever the clients do (an address-spraying attack with a million
source addresses included):
- every table holds at most `capacity` keys; a new key past that evicts the key touched
  longest ago (LRU). Keys whose newest event left the window are dropped as time goes on,
  so a quiet table empties by itself;
- a key keeps at most `limit` event times (a sliding log of the last N connections or
  failures), so no key grows with its traffic.
An attacker who controls more addresses than the capacity can push an abuser's entry out of
the table (its count starts again); each of those addresses is still limited on its own. A
count-min sketch would not forget, but it over-counts and would refuse innocent addresses
that share its cells; an exact, forgetting table was preferred (docs/decisions)."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import heapq
import ipaddress
import math
import time
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Addresses(Protocol):
    """A set of addresses (the listener's acl.AddressSet)."""

    def __contains__(self, address: IPAddress, /) -> bool: ...


# Keys per table and service. About 250 bytes a key with a few events: 8 MiB at worst per
# table, far less in practice (keys leave with their window).
CAPACITY = 32_768
# Bans remembered at once per service.
BAN_CAPACITY = 32_768
RATE_WINDOW = 60.0  # connectionsPerMinute


class Verdict(enum.Enum):
    ACCEPTED = "accepted"  # the metrics outcome of an admitted connection (C2)
    RATE_LIMITED = "rate_limited"
    BANNED = "banned"


@functools.lru_cache(maxsize=4096)
def _v6_key(value: int, prefix: int) -> str:
    shift = 128 - prefix
    return str(ipaddress.IPv6Network(((value >> shift) << shift, prefix)))


def address_key(address: IPAddress, name: str, ipv6_prefix: int) -> str:
    """What is counted and banned: an IPv4 address as itself, an IPv6 address by its network
    of `ipv6_prefix` bits (a /64 is what one customer usually gets, and hops freely within)."""
    if address.version == 4 or ipv6_prefix >= 128:
        return name
    return _v6_key(int(address), ipv6_prefix)


class _Times:
    """One key's event times, oldest first, from `head` on. Events leave from the front by
    moving `head` (the list is compacted now and then), so a key with a limit of 100,000 a
    minute costs O(1) per event, not a 100,000-element shift."""

    __slots__ = ("head", "times")

    def __init__(self, now: float) -> None:
        self.times = [now]
        self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def drop_before(self, horizon: float) -> None:
        times, head = self.times, self.head
        end = len(times)
        while head < end and times[head] <= horizon:
            head += 1
        self.head = head
        if head > 32 and head * 2 > end:
            del times[:head]
            self.head = 0

    def keep_last(self, n: int) -> None:
        if len(self) > n:
            self.head = len(self.times) - n
            self.drop_before(float("-inf"))  # compacts when worthwhile

    def oldest(self) -> float:
        return self.times[self.head]

    def newest(self) -> float:
        return self.times[-1]


class SlidingLog:
    """For each key, the times of its last `limit` events, in a table of at most `capacity`
    keys. `count within the window` is exact for every key the table still holds."""

    __slots__ = ("_table", "capacity", "limit", "window")

    def __init__(self, limit: int, window: float, capacity: int = CAPACITY) -> None:
        self.limit = max(1, limit)
        self.window = window
        self.capacity = capacity
        # Ordered by last event: the first key is the one that has been quiet longest.
        self._table: collections.OrderedDict[str, _Times] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def reconfigure(self, limit: int, window: float) -> None:
        self.limit = max(1, limit)
        self.window = window
        for times in self._table.values():
            times.keep_last(self.limit)

    def count(self, key: str, now: float) -> int:
        """Events of `key` within the window ending now."""
        times = self._table.get(key)
        if times is None:
            return 0
        times.drop_before(now - self.window)
        return len(times)

    def admit(self, key: str, now: float) -> float:
        """Record an event unless `limit` are already within the window. Returns 0 if it was
        recorded, else the seconds until the oldest of them leaves the window."""
        times = self._table.get(key)
        if times is not None:
            times.drop_before(now - self.window)
            if len(times) >= self.limit:
                return max(times.oldest() + self.window - now, 0.001)
        self._record(key, times, now)
        return 0.0

    def add(self, key: str, now: float) -> int:
        """Record an event; return how many of the key's events are within the window."""
        times = self._table.get(key)
        if times is not None:
            times.drop_before(now - self.window)
        self._record(key, times, now)
        return len(self._table[key])

    def forget(self, key: str) -> None:
        self._table.pop(key, None)

    def _record(self, key: str, times: _Times | None, now: float) -> None:
        table = self._table
        if times is None:
            self._expire(now)
            if len(table) >= self.capacity:
                table.popitem(last=False)
            table[key] = _Times(now)
            return
        times.times.append(now)
        if len(times) > self.limit:
            times.keep_last(self.limit)
        table.move_to_end(key)

    def _expire(self, now: float) -> None:
        """Drop keys whose newest event left the window (a few at a time: each key leaves
        once, so the cost is spread over the calls that made them)."""
        table = self._table
        horizon = now - self.window
        for _ in range(8):
            if not table:
                return
            key = next(iter(table))
            if table[key].newest() > horizon:
                return
            del table[key]


@dataclasses.dataclass(frozen=True, slots=True)
class Ban:
    key: str
    # Wall-clock times, for people (the listener's log line).
    started: float
    until: float
    failures: int
    within_seconds: float


class BanList:
    """Banned keys and when their bans end, in a table of at most `capacity` keys. A heap by
    end time beside the table: ended bans are dropped in order, and a full table gives up
    the ban that ends first. (A heap rather than insertion order: after a reload shortens
    the ban time, new bans end before older ones.)"""

    __slots__ = ("_ends", "_table", "capacity")

    def __init__(self, capacity: int = BAN_CAPACITY) -> None:
        self.capacity = capacity
        self._table: dict[str, float] = {}
        self._ends: list[tuple[float, str]] = []

    def remaining(self, key: str, now: float) -> float:
        """Seconds left of key's ban; 0 if it is not banned."""
        until = self._table.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._table[key]  # its heap entry goes when the heap reaches it
            return 0.0
        return until - now

    def ban(self, key: str, until: float, now: float) -> None:
        self._expire(now)
        table = self._table
        if key not in table and len(table) >= self.capacity:
            self._pop()
        table[key] = until
        heapq.heappush(self._ends, (until, key))

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._table)

    def _pop(self) -> None:
        """Drop the live ban that ends first, and the heap's stale entries before it."""
        ends, table = self._ends, self._table
        while ends:
            until, key = heapq.heappop(ends)
            if table.get(key) == until:
                del table[key]
                return

    def _expire(self, now: float) -> None:
        ends, table = self._ends, self._table
        while ends and ends[0][0] <= now:
            until, key = heapq.heappop(ends)
            if table.get(key) == until:
                del table[key]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A service's abuse policy, as the listener configuration gives it. 0 turns a part off."""

    connections_per_minute: int = 0
    rate_limit_ipv6_prefix: int = 64
    after_failures: int = 0
    within_seconds: float = 60.0
    ban_seconds: float = 600.0
    ban_ipv6_prefix: int = 64
    # Never rate-limited, never banned (the listener passes an acl.AddressSet).
    exempt: Addresses = frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self.connections_per_minute or self.after_failures)


class Guard:
    """The rate limit and the ban list of one service. Kept across reloads: a new policy
    applies to the counts and bans already there."""

    __slots__ = (
        "bans",
        "bans_started",
        "failures",
        "policy",
        "rates",
    )

    def __init__(self, policy: Policy | None = None, capacity: int = CAPACITY) -> None:
        self.policy = Policy()
        self.rates = SlidingLog(1, RATE_WINDOW, capacity)
        self.failures = SlidingLog(1, 60.0, capacity)
        self.bans = BanList(capacity)
        self.bans_started = 0
        if policy is not None:
            self.configure(policy)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def configure(self, policy: Policy) -> None:
        self.policy = policy
        # A part turned off forgets what it held: bans no longer enforced are not reported
        # as bans (and are not enforced again if the part is turned back on later).
        if not policy.connections_per_minute:
            self.rates = SlidingLog(1, RATE_WINDOW, self.rates.capacity)
        if not policy.after_failures:
            self.failures = SlidingLog(1, policy.within_seconds, self.failures.capacity)
            self.bans = BanList(self.bans.capacity)
        self.rates.reconfigure(policy.connections_per_minute, RATE_WINDOW)
        self.failures.reconfigure(policy.after_failures, policy.within_seconds)

    def admit(self, address: IPAddress, name: str, now: float) -> tuple[Verdict, float]:
        """Whether a new connection from `address` may go on; with the seconds to wait when
        it may not. An admitted connection counts towards the rate limit."""
        policy = self.policy
        if address in policy.exempt:
            return Verdict.ACCEPTED, 0.0
        if policy.after_failures:
            key = address_key(address, name, policy.ban_ipv6_prefix)
            left = self.bans.remaining(key, now)
            if left:
                return Verdict.BANNED, left
        if policy.connections_per_minute:
            key = address_key(address, name, policy.rate_limit_ipv6_prefix)
            wait = self.rates.admit(key, now)
            if wait:
                return Verdict.RATE_LIMITED, wait
        return Verdict.ACCEPTED, 0.0

    def failure(self, address: IPAddress, name: str, now: float) -> Ban | None:
        """A refusal or a failed login from `address`; the ban it starts, if it does."""
        policy = self.policy
        if not policy.after_failures or address in policy.exempt:
            return None
        key = address_key(address, name, policy.ban_ipv6_prefix)
        if self.bans.remaining(key, now):
            return None  # already banned: the ban is not extended
        failures = self.failures.add(key, now)
        if failures < policy.after_failures:
            return None
        self.failures.forget(key)
        self.bans.ban(key, now + policy.ban_seconds, now)
        self.bans_started += 1
        wall = time.time()
        return Ban(key, wall, wall + policy.ban_seconds, failures, policy.within_seconds)

    def banned_now(self, now: float) -> int:
        return self.bans.count(now)


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header: never 0 while the refusal still holds."""
    return max(1, math.ceil(seconds))
