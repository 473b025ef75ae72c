"""Kubernetes-style conditions (API conventions; cert-manager's helper is the model): one
function sets a condition; it keeps lastTransitionTime unless the status flips and always
records the generation it speaks for."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

Status = Literal["True", "False", "Unknown"]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
# Not a kstatus condition: True while the spec asks for something that cannot work as
# written (the reason names what).
WARNING = "Warning"


class Condition(TypedDict):
    type: str
    status: Status
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


# Reasons (CamelCase, as the conventions ask). Ready=False reasons come first in the order
# the checks run; the first failing check wins.
class Reason:
    INVALID_SPEC = "InvalidSpec"
    GROUP_NOT_FOUND = "IPAddressGroupNotFound"
    GROUP_CYCLE = "IPAddressGroupCycle"
    LISTEN_CONFLICT = "ListenConflict"
    # A child's name is taken by an object another owner controls.
    OWNED_ELSEWHERE = "OwnedElsewhere"
    STOPPED = "Stopped"
    BACKEND_UNREACHABLE = "BackendUnreachable"
    STARTING = "Starting"
    # The Service has not got its address yet (load balancer, node port or cluster IP).
    ADDRESS_PENDING = "AddressPending"
    # Warnings (Warning condition and Events).
    CLIENT_ADDRESS_LOST = "ClientAddressLost"
    RUNNING = "Running"
    RESOLVED = "Resolved"
    RECONCILED = "Reconciled"
    PROGRESSING = "Progressing"
    # An event only: the backend answers again after BackendUnreachable.
    BACKEND_REACHABLE = "BackendReachable"


def now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type: str,
    status: Status,
    reason: str,
    message: str,
    generation: int,
    *,
    timestamp: str | None = None,
) -> list[Condition]:
    """Return `conditions` with `type` set. lastTransitionTime moves only when the status
    changes, so that a condition re-asserted on every pass does not look new."""
    out: list[Condition] = []
    found = False
    for old in conditions:
        if old.get("type") != type:
            out.append(_as_condition(old))
            continue
        found = True
        keep = old.get("status") == status and old.get("lastTransitionTime")
        out.append(
            Condition(
                type=type,
                status=status,
                reason=reason,
                message=message,
                lastTransitionTime=str(old["lastTransitionTime"]) if keep else timestamp or now(),
                observedGeneration=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type,
                status=status,
                reason=reason,
                message=message,
                lastTransitionTime=timestamp or now(),
                observedGeneration=generation,
            )
        )
    return out


def get(conditions: Sequence[Mapping[str, Any]], type: str) -> Mapping[str, Any] | None:
    for cond in conditions:
        if cond.get("type") == type:
            return cond
    return None


def _as_condition(old: Mapping[str, Any]) -> Condition:
    return Condition(
        type=str(old.get("type", "")),
        status=old.get("status", "Unknown"),
        reason=str(old.get("reason", "")),
        message=str(old.get("message", "")),
        lastTransitionTime=str(old.get("lastTransitionTime", "")),
        observedGeneration=int(old.get("observedGeneration", 0) or 0),
    )
