"""IPAddressGroup resolution: the CIDRs it yields hold exactly the addresses the items
describe, minimal, with nested groups followed and unknown groups and cycles reported."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.operator import groups, models

V4_BASE = int(ipaddress.IPv4Address("10.20.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
SPAN = 4096  # small enough that items overlap and touch, which is where merging goes wrong
NAMES = [f"g{i}" for i in range(5)]

Interval = tuple[int, int, int]  # version, first, last


def address(version: int, offset: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(V4_BASE + offset))
    return str(ipaddress.IPv6Address(V6_BASE + offset))


@st.composite
def plain_items(draw: st.DrawFn) -> tuple[models.GroupItem, list[Interval]]:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    kind = draw(st.sampled_from(["host", "network", "mask", "range"]))
    a = draw(st.integers(0, SPAN - 1))
    if kind == "host":
        return models.GroupItem(host=address(version, a)), [(version, a, a)]
    if kind in ("network", "mask"):
        size = draw(st.integers(0, 10))
        first = a - a % (1 << size)
        net = ipaddress.ip_network(f"{address(version, first)}/{bits - size}")
        text = (
            f"{address(version, a)}/{net.netmask}"  # host bits set: forgiven
            if kind == "mask" and version == 4
            else f"{address(version, a)}/{bits - size}"
        )
        return models.GroupItem(network=text), [(version, first, first + (1 << size) - 1)]
    b = draw(st.integers(0, SPAN - 1))
    lo, hi = min(a, b), max(a, b)
    text = f"{address(version, lo)}-{address(version, hi)}"
    return models.GroupItem(range=text), [(version, lo, hi)]


@st.composite
def group_sets(
    draw: st.DrawFn,
) -> tuple[dict[str, models.IPAddressGroupSpec], dict[str, list[Interval]], dict[str, list[str]]]:
    """Up to five groups that may name each other (cycles included) and unknown groups."""
    defined = draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
    specs: dict[str, models.IPAddressGroupSpec] = {}
    direct: dict[str, list[Interval]] = {}
    edges: dict[str, list[str]] = {}
    for name in defined:
        items: list[models.GroupItem] = []
        direct[name] = []
        edges[name] = []
        for _ in range(draw(st.integers(0, 5))):
            if draw(st.booleans()):
                item, intervals = draw(plain_items())
                items.append(item)
                direct[name] += intervals
            else:
                target = draw(st.sampled_from([*NAMES, "unknown-group"]))
                items.append(models.GroupItem(group=target))
                edges[name].append(target)
        specs[name] = models.IPAddressGroupSpec(items=items)
    return specs, direct, edges


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for version, first, last in sorted(intervals):
        if out and out[-1][0] == version and first <= out[-1][2] + 1:
            out[-1] = (version, out[-1][1], max(out[-1][2], last))
        else:
            out.append((version, first, last))
    return out


def offsets(cidrs: Iterable[str]) -> list[Interval]:
    out = []
    for c in cidrs:
        n = ipaddress.ip_network(c)
        base = V4_BASE if n.version == 4 else V6_BASE
        out.append((n.version, int(n.network_address) - base, int(n.broadcast_address) - base))
    return merged(out)


def reachable(root: str, edges: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [root]
    while todo:
        g = todo.pop()
        if g not in seen:
            seen.add(g)
            todo += edges.get(g, [])
    return seen


def has_cycle(root: str, edges: dict[str, list[str]]) -> bool:
    state: dict[str, int] = {}

    def visit(g: str) -> bool:
        if state.get(g) == 1:
            return True
        if state.get(g) == 2 or g not in edges:
            return False
        state[g] = 1
        found = any(visit(t) for t in edges[g])
        state[g] = 2
        return found

    return visit(root)


@settings(max_examples=300, deadline=None)
@given(group_sets(), st.sampled_from(NAMES))
def test_the_resolved_cidrs_hold_exactly_the_addresses_of_every_reachable_item(data, root):
    specs, direct, edges = data
    result = groups.resolve(root, specs)
    wanted = reachable(root, edges)
    expected = merged(i for g in wanted if g in direct for i in direct[g])
    assert offsets(result.cidrs) == expected
    # Minimal: no two CIDRs could be merged, none overlaps another, IPv4 first.
    nets = [ipaddress.ip_network(c) for c in result.cidrs]
    for version in (4, 6):
        mine = [n for n in nets if n.version == version]
        assert mine == list(ipaddress.collapse_addresses(mine))
    assert [n.version for n in nets] == sorted(n.version for n in nets)
    # Unknown groups are reported, and only those.
    assert set(result.missing) == {g for g in wanted if g not in specs}
    assert result.uses == wanted
    # Cycles are reported iff there is one, each as a real closed path.
    assert bool(result.cycles) == has_cycle(root, {g: edges[g] for g in specs})
    for cycle in result.cycles:
        assert cycle[0] == cycle[-1]
        for a, b in itertools.pairwise(cycle):
            assert b in edges[a]
    assert result.ok == (not result.missing and not result.cycles)


def spec(*items: dict[str, str]) -> models.IPAddressGroupSpec:
    return models.IPAddressGroupSpec(items=[models.GroupItem(**i) for i in items])


def test_a_range_becomes_the_minimal_list_of_cidrs():
    r = groups.resolve("office", {"office": spec({"range": "192.0.2.10-192.0.2.20"})})
    assert r.cidrs == ("192.0.2.10/31", "192.0.2.12/30", "192.0.2.16/30", "192.0.2.20/32")


def test_an_ipv6_range_and_hosts_of_both_families_resolve_side_by_side():
    r = groups.resolve(
        "mixed",
        {
            "mixed": spec(
                {"range": "2001:db8::-2001:db8::ff"},
                {"host": "2001:db8::100"},
                {"host": "192.0.2.1"},
                {"network": "198.51.100.0/255.255.255.0"},
            )
        },
    )
    assert r.cidrs == ("192.0.2.1/32", "198.51.100.0/24", "2001:db8::/120", "2001:db8::100/128")


def test_a_cycle_is_reported_once_and_resolution_ends():
    r = groups.resolve(
        "a",
        {
            "a": spec({"group": "b"}, {"host": "192.0.2.1"}),
            "b": spec({"group": "c"}),
            "c": spec({"group": "a"}, {"host": "192.0.2.3"}),
        },
    )
    assert r.cycles == (("a", "b", "c", "a"),)
    assert r.cidrs == ("192.0.2.1/32", "192.0.2.3/32")
    assert not r.ok


def test_a_group_naming_itself_is_a_cycle():
    r = groups.resolve("self", {"self": spec({"group": "self"}, {"host": "::1"})})
    assert r.cycles == (("self", "self"),)
    assert r.cidrs == ("::1/128",)


def test_an_unknown_nested_group_is_reported_and_the_rest_still_resolves():
    r = groups.resolve("top", {"top": spec({"group": "nowhere"}, {"host": "192.0.2.9"})})
    assert r.missing == ("nowhere",)
    assert r.cidrs == ("192.0.2.9/32",)


def test_an_unknown_root_group_resolves_to_nothing_and_is_reported():
    r = groups.resolve("ghost", {})
    assert (r.cidrs, r.missing) == ((), ("ghost",))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"host": "192.0.2.300"}, "host: '192.0.2.300' is not an IPv4 or IPv6 address"),
        ({"range": "192.0.2.9-192.0.2.1"}, "ends before it starts"),
        ({"range": "192.0.2.1-2001:db8::1"}, "mixes IPv4 and IPv6"),
        ({"network": "192.0.2.0/40"}, "is not a network"),
        ({"host": "192.0.2.1", "network": "192.0.2.0/24"}, "exactly one of host, network"),
    ],
)
def test_a_bad_item_is_refused_with_a_message_that_says_what_is_wrong(item, message):
    with pytest.raises(ValueError, match=message):
        models.GroupItem(**item)


def test_a_changed_group_is_resolved_afresh_and_an_unchanged_one_is_remembered() -> None:
    """The operator hands in the same parsed groups until one changes (a new object): the
    resolution follows the objects, never a remembered answer for other groups."""

    def spec(*items: dict[str, str]) -> models.IPAddressGroupSpec:
        return models.IPAddressGroupSpec.model_validate({"items": list(items)})

    office = spec({"network": "192.0.2.0/24"})
    outer = spec({"group": "office"}, {"host": "198.51.100.1"})
    first = groups.resolve("outer", {"office": office, "outer": outer})
    assert first.cidrs == ("192.0.2.0/24", "198.51.100.1/32")
    assert groups.resolve("outer", {"outer": outer, "office": office}) is first
    changed = groups.resolve(
        "outer", {"office": spec({"network": "203.0.113.0/24"}), "outer": outer}
    )
    assert changed.cidrs == ("198.51.100.1/32", "203.0.113.0/24")
    assert groups.resolve("outer", {"outer": outer}).missing == ("office",)
    for _ in range(groups._RESOLVED_MAX + 10):  # bounded
        groups.resolve("outer", {"office": spec({"network": "192.0.2.0/25"}), "outer": outer})
    assert len(groups._RESOLVED) <= groups._RESOLVED_MAX
