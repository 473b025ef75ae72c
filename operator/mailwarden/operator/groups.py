"""Resolving IPAddressGroups into the minimal list of CIDRs they describe, following nested
groups, and reporting unknown groups and cycles instead of following them forever."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from mailwarden.operator import models

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Resolution:
    cidrs: tuple[str, ...]
    # Nested groups named but not found.
    missing: tuple[str, ...] = ()
    # Each cycle as the path of group names that closes it (a -> b -> a).
    cycles: tuple[tuple[str, ...], ...] = ()
    # Every group the resolution read, the root included: a change to any of them changes
    # the result.
    uses: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.cycles

    def describe(self) -> str:
        """What keeps the groups from resolving, in the words every report uses (both kinds'
        conditions, `mailwarden render` and `listen`); empty when they resolve."""
        problems = []
        if self.missing:
            problems.append(f"IPAddressGroup {', '.join(self.missing)} not found in this namespace")
        if self.cycles:
            cycles = "; ".join(" -> ".join(c) for c in self.cycles)
            problems.append(f"IPAddressGroups nest in a cycle ({cycles})")
        return "; ".join(problems)


def item_networks(item: models.GroupItem) -> list[Network]:
    """The networks one non-group item stands for."""
    if item.host is not None:
        return [ipaddress.ip_network(item.host)]
    if item.network is not None:
        return [ipaddress.ip_network(item.network, strict=False)]
    if item.range is not None:
        first, last = models.parse_range(item.range)
        return list(ipaddress.summarize_address_range(first, last))
    return []


def minimal(networks: list[Network]) -> tuple[str, ...]:
    v4 = ipaddress.collapse_addresses(n for n in networks if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in networks if n.version == 6)
    return tuple(str(n) for n in (*v4, *v6))


# (name, the groups by name and identity) -> (resolution, the groups): every reconciliation
# renders its MailService's groups, and the operator hands in the same parsed spec objects
# until a group changes. The groups are kept with the result, so an identity in a key never
# belongs to another object. Bounded: the oldest entries go first.
_RESOLVED: dict[tuple[Any, ...], tuple[Resolution, tuple[models.IPAddressGroupSpec, ...]]] = {}
_RESOLVED_MAX = 4096


def resolve(name: str, groups: Mapping[str, models.IPAddressGroupSpec]) -> Resolution:
    """Resolve group `name` among `groups` (the groups of one namespace)."""
    key = (name, *sorted((n, id(spec)) for n, spec in groups.items()))
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit[0]
    found = _resolve(name, groups)
    if len(_RESOLVED) >= _RESOLVED_MAX:
        del _RESOLVED[next(iter(_RESOLVED))]
    _RESOLVED[key] = (found, tuple(groups.values()))
    return found


def _resolve(name: str, groups: Mapping[str, models.IPAddressGroupSpec]) -> Resolution:
    networks: list[Network] = []
    missing: list[str] = []
    cycles: list[tuple[str, ...]] = []
    uses: set[str] = set()
    done: set[str] = set()

    def visit(group: str, path: tuple[str, ...]) -> None:
        if group in path:
            cycle = (*path[path.index(group) :], group)
            if cycle not in cycles:
                cycles.append(cycle)
            return
        uses.add(group)
        if group in done:
            return
        spec = groups.get(group)
        if spec is None:
            if group not in missing:
                missing.append(group)
            return
        for item in spec.items:
            if item.group is not None:
                visit(item.group, (*path, group))
            else:
                networks.extend(item_networks(item))
        done.add(group)

    visit(name, ())
    return Resolution(minimal(networks), tuple(missing), tuple(cycles), frozenset(uses))
