"""Kubernetes-style conditions (API conventions; cert-manager's helper is the model): one
function sets a condition; it keeps lastTransitionTime unless the status flips and always
records the generation it speaks for."""

from __future__ import annotations

import dataclasses
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
    APPLY_FAILED = "ApplyFailed"
    STOPPED = "Stopped"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    REPLICA_FAILURE = "ReplicaFailure"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    BACKEND_UNREACHABLE = "BackendUnreachable"
    ADDRESS_PENDING = "AddressPending"
    STARTING = "Starting"
    # Warnings about the spec (the Warning condition and Events; children.SpecWarning).
    CLIENT_ADDRESS_LOST = "ClientAddressLost"
    FIXED_ADDRESS_IGNORED = "FixedAddressIgnored"
    DYNAMIC_ADDRESS = "DynamicAddress"
    EXEMPT_GROUP_UNRESOLVED = "ExemptGroupUnresolved"
    SHARED_LISTENER_SETTINGS = "SharedListenerSettings"
    RUNNING = "Running"
    RESOLVED = "Resolved"
    RECONCILED = "Reconciled"
    # An event only: the backend answers again after BackendUnreachable.
    BACKEND_REACHABLE = "BackendReachable"


@dataclasses.dataclass(frozen=True)
class Meaning:
    """What a Ready=False reason says in kstatus terms
    (https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md):
    Stalled=True when nothing will change until someone edits something (Flux fails its health
    check at once, Argo CD shows Degraded); Reconciling=True when the condition can clear by
    itself (the backend comes up, the group is created, the address is assigned)."""

    stalled: bool
    reconciling: bool
    means: str


# Every Ready=False reason of a MailService (and IPAddressGroup), with its kstatus meaning.
# docs/conditions.md shows this table and the Argo CD health check degrades on exactly the
# stalled ones; tests hold the three together.
READY_FALSE: dict[str, Meaning] = {
    Reason.INVALID_SPEC: Meaning(True, False, "the spec breaks a rule; fix the spec"),
    Reason.GROUP_CYCLE: Meaning(
        True, False, "IPAddressGroups nest in a cycle; every client is refused until an edit"
    ),
    Reason.APPLY_FAILED: Meaning(
        True,
        False,
        "the API server refused a child (4xx other than 409/429: invalid, forbidden by RBAC "
        "or an admission policy); its message is in the condition. Reconciling=True instead "
        "for a ResourceQuota refusal, retried with backoff until quota frees",
    ),
    Reason.OWNED_ELSEWHERE: Meaning(
        True,
        False,
        "a child's name is taken by an object that is not the operator's, or that another "
        "owner controls; the operator leaves it alone until someone removes or renames it",
    ),
    Reason.PROGRESS_DEADLINE_EXCEEDED: Meaning(
        True,
        False,
        "the listener Deployment made no progress within its progressDeadlineSeconds "
        "(kstatus reads a Deployment so too)",
    ),
    Reason.GROUP_NOT_FOUND: Meaning(
        False, True, "an IPAddressGroup it uses does not exist yet; every client is refused"
    ),
    Reason.LISTEN_CONFLICT: Meaning(
        False, True, "an older MailService holds the address and port; taken over when it goes"
    ),
    Reason.REPLICA_FAILURE: Meaning(
        False, True, "the Deployment cannot create pods (quota, Pod Security); it keeps trying"
    ),
    Reason.CRASH_LOOP_BACK_OFF: Meaning(
        False, True, "a listener container keeps exiting; the kubelet keeps restarting it"
    ),
    Reason.IMAGE_PULL_BACK_OFF: Meaning(
        False, True, "the listener image cannot be pulled; the kubelet keeps trying"
    ),
    Reason.BACKEND_UNREACHABLE: Meaning(
        False, True, "the backend does not answer the operator's TCP probe yet"
    ),
    Reason.ADDRESS_PENDING: Meaning(
        False,
        True,
        "the Service has not got its address yet: the requested one is not in "
        "status.loadBalancer.ingress (no node port, no cluster IP for the other types)",
    ),
    Reason.STARTING: Meaning(False, True, "listener pods are starting or rolling"),
    Reason.STOPPED: Meaning(False, False, "stopped on purpose (Manual startup or state)"),
}


def stalled_reasons() -> frozenset[str]:
    return frozenset(r for r, m in READY_FALSE.items() if m.stalled)


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


def set_kstatus(
    conditions: Sequence[Mapping[str, Any]],
    generation: int,
    *,
    ready: tuple[str, str] | None,
    blocked: tuple[str, str] | None = None,
    stalled: bool | None = None,
    reconciling: bool | None = None,
    reconciled: tuple[str, str],
    not_stalled: tuple[str, str],
    timestamp: str | None = None,
) -> list[Condition]:
    """Ready, Reconciling and Stalled, written together from one verdict (the kstatus
    triple; one place, so the three never disagree).

    ready: (reason, message) when Ready is True; otherwise None and `blocked` is the
    (reason, message) of Ready=False, whose kstatus meaning comes from READY_FALSE unless
    `stalled`/`reconciling` say otherwise. A Reconciling or Stalled condition that is True
    carries the blocking reason and message; one that is False carries `reconciled` or
    `not_stalled`: what it rests on."""
    if ready is not None:
        status: Status = "True"
        reason, message = ready
        is_stalled = is_reconciling = False
    else:
        assert blocked is not None, "a Ready=False verdict needs its reason and message"
        status = "False"
        reason, message = blocked
        meaning = READY_FALSE.get(reason, Meaning(False, False, ""))
        is_stalled = meaning.stalled if stalled is None else stalled
        is_reconciling = meaning.reconciling if reconciling is None else reconciling
    conds = set_condition(
        conditions, READY, status, reason, message, generation, timestamp=timestamp
    )
    r_reason, r_message = (reason, message) if is_reconciling else reconciled
    conds = set_condition(
        conds,
        RECONCILING,
        "True" if is_reconciling else "False",
        r_reason,
        r_message,
        generation,
        timestamp=timestamp,
    )
    s_reason, s_message = (reason, message) if is_stalled else not_stalled
    return set_condition(
        conds,
        STALLED,
        "True" if is_stalled else "False",
        s_reason,
        s_message,
        generation,
        timestamp=timestamp,
    )


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
