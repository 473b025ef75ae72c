"""Listen conflicts: two MailServices claiming the same fixed address and port. The one
created first keeps it; the later one (creationTimestamp, then namespace/name) does not take
it and says so. Pure: the handlers feed it every MailService they know."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from mailwarden.operator import models

Claim = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Claimant:
    namespace: str
    name: str
    # RFC 3339 with a Z suffix sorts chronologically as text.
    created: str
    claims: frozenset[Claim]

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def claims(spec: models.MailServiceSpec) -> frozenset[Claim]:
    """Only fixed addresses can collide: every Service without one gets its own address, and
    a ClusterIP Service holds none (the address is ignored, with a warning)."""
    if spec.expose.type == "ClusterIP":
        return frozenset()
    return frozenset((a, p) for a, p in spec.endpoints() if a is not None)


def claimant(msvc: models.MailService, created: str) -> Claimant:
    return Claimant(msvc.metadata.namespace, msvc.metadata.name, created, claims(msvc.spec))


def lost(me: Claimant, others: Iterable[Claimant]) -> dict[Claim, Claimant]:
    """The claims of `me` that an earlier MailService holds, each with that holder."""
    out: dict[Claim, Claimant] = {}
    for other in others:
        if (other.namespace, other.name) == (me.namespace, me.name):
            continue
        if other.order >= me.order:
            continue
        for claim in me.claims & other.claims:
            if claim not in out or other.order < out[claim].order:
                out[claim] = other
    return out


def describe(lost_claims: dict[Claim, Claimant]) -> str:
    parts = [
        f"{_addr(a)}:{p} (held by MailService {holder.ref}, created earlier)"
        for (a, p), holder in sorted(lost_claims.items())
    ]
    return ", ".join(parts)


def _addr(address: str) -> str:
    return f"[{address}]" if ":" in address else address
