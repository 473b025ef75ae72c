"""Which listener serves which MailService (docs/decisions/0001-one-listener-per-address.md).

A listener is one Deployment of listener pods with its ConfigMap, Service, NetworkPolicy and,
with more than one replica, PodDisruptionBudget, all of one name. Every MailService of a
namespace that names a fixed address is served, on that address, by the one listener of that
(namespace, address): one load-balancer Service per address, carrying the ports of all of
them, in front of pods that each serve every one of those ports. A MailService's ports
without a fixed address (and fixed addresses a ClusterIP Service cannot hold) are served by a
listener of its own, as before listeners were shared.

Pure: `plan` groups MailServices into listeners; `deployments` is the one function the rest of
the operator asks "which pods serve this MailService?" (their label `mailwarden.io/listener`
carries the Deployment's name)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from mailwarden.operator import conflicts, models, naming


@dataclasses.dataclass(frozen=True)
class Member:
    """A MailService as a listener sees it: the cluster-wide defaults applied, with the
    order of its creation (older members decide what must be decided once per listener) and
    the fixed-address claims it lost to an older MailService."""

    msvc: models.MailService
    created: str
    lost: Mapping[conflicts.Claim, conflicts.Claimant] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.msvc.metadata.name

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)

    @property
    def running(self) -> bool:
        return models.wants_running(self.msvc) and self.msvc.spec.replicas > 0


@dataclasses.dataclass(frozen=True)
class Listener:
    namespace: str
    name: str
    # The fixed address its Service holds; None for a MailService's own listener.
    address: str | None
    # Oldest first; with their ports on this listener (one or more).
    members: tuple[Member, ...]
    ports: Mapping[str, tuple[int, ...]]

    @property
    def shared(self) -> bool:
        return self.address is not None

    @property
    def owner(self) -> str | None:
        """The MailService whose own listener this is (None when shared)."""
        return None if self.shared else self.members[0].name

    @property
    def running(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.running)

    def ports_of(self, member: Member) -> tuple[int, ...]:
        return self.ports[member.name]

    @property
    def selector(self) -> dict[str, str]:
        return naming.selector(self.name, self.owner)


def placement(
    msvc: models.MailService, lost: Iterable[conflicts.Claim] = ()
) -> dict[str | None, tuple[int, ...]]:
    """The ports of a MailService by the fixed address that serves them (None: its own
    listener). A fixed address that a ClusterIP Service cannot hold falls back to its own
    listener (with a warning elsewhere); a claim lost to an older MailService is served by
    no one."""
    lost = set(lost)
    out: dict[str | None, list[int]] = {}
    for address, port in msvc.spec.endpoints():
        if address is not None and msvc.spec.expose.type == "ClusterIP":
            address = None
        elif address is not None and (address, port) in lost:
            continue
        ports = out.setdefault(address, [])
        if port not in ports:
            ports.append(port)
    return {a: tuple(sorted(p)) for a, p in out.items()}


def name_of(msvc_name: str, address: str | None) -> str:
    return naming.base(msvc_name) if address is None else naming.address_listener(address)


def deployments(msvc: models.MailService, lost: Iterable[conflicts.Claim] = ()) -> tuple[str, ...]:
    """The names of the listener Deployments serving `msvc` (contract C5): its pods are those
    labelled `mailwarden.io/listener=<name>` in its namespace, for each name. `msvc` with the
    cluster-wide defaults applied (children.with_defaults); `lost` its claims that an older
    MailService holds (conflicts.lost). Empty when every claim is lost."""
    return tuple(sorted(name_of(msvc.metadata.name, a) for a in placement(msvc, lost)))


def plan(members: Sequence[Member]) -> dict[str, Listener]:
    """Every listener the MailServices of one namespace need, by name."""
    found: dict[str, tuple[str, str | None, list[Member], dict[str, tuple[int, ...]]]] = {}
    for member in sorted(members, key=lambda m: m.order):
        for address, ports in placement(member.msvc, member.lost).items():
            name = name_of(member.name, address)
            entry = found.setdefault(name, (member.msvc.metadata.namespace, address, [], {}))
            entry[2].append(member)
            entry[3][member.name] = ports
    return {
        name: Listener(namespace, name, address, tuple(members_), ports)
        for name, (namespace, address, members_, ports) in sorted(found.items())
    }


def of_member(listeners: Mapping[str, Listener], msvc_name: str) -> list[Listener]:
    return [lst for lst in listeners.values() if any(m.name == msvc_name for m in lst.members)]
