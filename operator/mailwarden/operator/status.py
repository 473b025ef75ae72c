"""Status of MailServices and IPAddressGroups. Ready comes from an ordered chain of small
pure checks (cert-manager's policy chain): the first that fails gives the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from mailwarden.operator import children, conditions, conflicts, groups, models, naming
from mailwarden.operator.conditions import READY, RECONCILING, STALLED, Reason, set_condition

State = Literal["Running", "Stopped", "Starting"]


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the checks look at: the spec as understood, and what the cluster reports."""

    generation: int
    running: bool  # wanted running, with at least one replica
    replicas: int  # wanted pods (0 when stopped)
    resolution: groups.Resolution | None
    lost: Mapping[conflicts.Claim, conflicts.Claimant]
    # From the Deployment's status: pods there are, pods available, and whether the
    # Deployment controller has seen the latest template.
    current_replicas: int = 0
    available_replicas: int = 0
    updated_replicas: int = 0
    rollout_observed: bool = False
    # The backend probe: host:port, and why it could not be reached (None: reachable, or
    # not probed, as for a stopped service).
    backend: str = ""
    backend_error: str | None = None
    # A child the API server refused (4xx other than 409/429), with its message.
    apply_failure: ApplyFailure | None = None
    # Failures the Deployment controller reports (ProgressDeadlineExceeded, ReplicaFailure)
    # and what listener pods wait on (CrashLoopBackOff, ImagePullBackOff): reason -> message.
    deployment_failures: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pod_failures: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ApplyFailure:
    kind: str
    name: str
    code: int
    message: str

    @property
    def quota(self) -> bool:
        # A ResourceQuota refusal (403 "exceeded quota") clears when quota frees up; the
        # others need an edit of the spec, the policy or the RBAC.
        return self.code == 403 and "exceeded quota" in self.message


@dataclasses.dataclass(frozen=True)
class Verdict:
    reason: str
    message: str
    # Stalled: no progress until someone changes something. Reconciling: progress is under
    # way. (kstatus reads exactly these two.)
    stalled: bool = False
    reconciling: bool = False


Check = Callable[[Facts], Verdict | None]


def group_not_found(f: Facts) -> Verdict | None:
    if f.resolution is None or not f.resolution.missing:
        return None
    names = ", ".join(f.resolution.missing)
    return Verdict(
        Reason.GROUP_NOT_FOUND,
        f"IPAddressGroup {names} not found in this namespace; refusing every client until it "
        "exists",
        reconciling=True,
    )


def group_cycle(f: Facts) -> Verdict | None:
    if f.resolution is None or not f.resolution.cycles:
        return None
    cycles = "; ".join(" -> ".join(c) for c in f.resolution.cycles)
    return Verdict(
        Reason.GROUP_CYCLE,
        f"IPAddressGroups nest in a cycle ({cycles}); refusing every client until it is broken",
        stalled=True,
    )


def listen_conflict(f: Facts) -> Verdict | None:
    if not f.lost:
        return None
    return Verdict(
        Reason.LISTEN_CONFLICT,
        f"not taking {conflicts.describe(dict(f.lost))}",
        reconciling=True,
    )


def apply_failed(f: Facts) -> Verdict | None:
    a = f.apply_failure
    if a is None:
        return None
    return Verdict(
        Reason.APPLY_FAILED,
        f"the API server refused {a.kind} {a.name} ({a.code}): {a.message}",
        stalled=not a.quota,
        reconciling=a.quota,
    )


def deployment_failed(f: Facts) -> Verdict | None:
    for reason in (Reason.PROGRESS_DEADLINE_EXCEEDED, Reason.REPLICA_FAILURE):
        if reason in f.deployment_failures:
            stalled = conditions.READY_FALSE[reason].stalled
            return Verdict(
                reason, f.deployment_failures[reason], stalled=stalled, reconciling=not stalled
            )
    return None


def pods_failing(f: Facts) -> Verdict | None:
    for reason in (Reason.IMAGE_PULL_BACK_OFF, Reason.CRASH_LOOP_BACK_OFF):
        if reason in f.pod_failures:
            return Verdict(reason, f.pod_failures[reason], reconciling=True)
    return None


def stopped(f: Facts) -> Verdict | None:
    if f.running:
        return None
    return Verdict(Reason.STOPPED, "the service is stopped")


def backend_unreachable(f: Facts) -> Verdict | None:
    if f.backend_error is None:
        return None
    return Verdict(
        Reason.BACKEND_UNREACHABLE,
        f"backend {f.backend} unreachable: {f.backend_error}; sessions cannot be relayed until "
        "it answers",
        reconciling=True,
    )


def starting(f: Facts) -> Verdict | None:
    if (
        f.rollout_observed
        and f.available_replicas >= f.replicas
        and f.updated_replicas >= f.replicas
        and f.current_replicas == f.replicas
    ):
        return None
    return Verdict(
        Reason.STARTING,
        f"{f.available_replicas} of {f.replicas} listener pods available",
        reconciling=True,
    )


CHECKS: tuple[Check, ...] = (
    group_not_found,
    group_cycle,
    listen_conflict,
    apply_failed,
    stopped,
    deployment_failed,
    pods_failing,
    backend_unreachable,
    starting,
)


def verdict(f: Facts, checks: Sequence[Check] = CHECKS) -> Verdict | None:
    for check in checks:
        v = check(f)
        if v is not None:
            return v
    return None


def state_of(f: Facts) -> State:
    if not f.running:
        return "Stopped"
    if f.available_replicas >= 1 and f.rollout_observed:
        return "Running"
    return "Starting"


def facts(
    msvc: models.MailService,
    built: children.Children,
    lost: Mapping[conflicts.Claim, conflicts.Claimant],
    deployment: Mapping[str, Any] | None,
    *,
    backend_error: str | None = None,
    apply_failure: ApplyFailure | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
) -> Facts:
    replicas = int(built.deployment["spec"]["replicas"])
    dstatus: Mapping[str, Any] = (deployment or {}).get("status") or {}
    dmeta: Mapping[str, Any] = (deployment or {}).get("metadata") or {}
    observed = dstatus.get("observedGeneration")
    return Facts(
        generation=msvc.metadata.generation or 0,
        running=replicas > 0,
        replicas=replicas,
        resolution=built.rendered.resolution,
        lost=lost,
        current_replicas=int(dstatus.get("replicas") or 0),
        available_replicas=int(dstatus.get("availableReplicas") or 0),
        updated_replicas=int(dstatus.get("updatedReplicas") or 0),
        rollout_observed=(
            deployment is not None
            and observed is not None
            and int(observed) >= int(dmeta.get("generation") or 0)
        ),
        backend=endpoint(built.rendered.service.backend.host, built.rendered.service.backend.port),
        backend_error=backend_error,
        apply_failure=apply_failure,
        deployment_failures=deployment_failures(deployment),
        pod_failures=pod_failures(pods),
    )


def deployment_failures(deployment: Mapping[str, Any] | None) -> dict[str, str]:
    """The Deployment controller's failure conditions
    (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#failed-deployment):
    Progressing=False with reason ProgressDeadlineExceeded, and ReplicaFailure=True."""
    out = {}
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        kind, status, reason = cond.get("type"), cond.get("status"), cond.get("reason")
        message = str(cond.get("message") or reason or kind)
        if kind == "Progressing" and status == "False" and reason == "ProgressDeadlineExceeded":
            out[Reason.PROGRESS_DEADLINE_EXCEEDED] = message
        elif kind == "ReplicaFailure" and status == "True":
            out[Reason.REPLICA_FAILURE] = f"{reason}: {message}" if reason else message
    return out


# What a container waits on (pod status containerStatuses[].state.waiting.reason) and the
# reason the MailService reports for it. ErrImagePull comes before the first back-off.
WAITING = {
    "CrashLoopBackOff": Reason.CRASH_LOOP_BACK_OFF,
    "ImagePullBackOff": Reason.IMAGE_PULL_BACK_OFF,
    "ErrImagePull": Reason.IMAGE_PULL_BACK_OFF,
    "InvalidImageName": Reason.IMAGE_PULL_BACK_OFF,
}


def pod_failures(pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """reason -> a message naming the first pod and container waiting on it."""
    out: dict[str, str] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for c in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason = WAITING.get(str(waiting.get("reason")))
            if reason is None or reason in out:
                continue
            detail = str(waiting.get("message") or waiting.get("reason"))
            out[reason] = (
                f"pod {meta.get('name')} container {c.get('name')}: {waiting.get('reason')}: "
                f"{detail}"
            )[:1024]
    return out


def mailservice(
    msvc: models.MailService,
    built: children.Children,
    f: Facts,
    old: Mapping[str, Any],
    *,
    timestamp: str,
) -> dict[str, Any]:
    """The whole status of a MailService; equal to `old` when nothing changed."""
    v = verdict(f)
    conds: list[Any] = list(old.get("conditions") or [])
    gen = f.generation
    if v is None:
        conds = set_condition(
            conds, READY, "True", Reason.RUNNING, _running_message(built), gen, timestamp=timestamp
        )
    else:
        conds = set_condition(conds, READY, "False", v.reason, v.message, gen, timestamp=timestamp)
    stalled = v is not None and v.stalled
    reconciling = v is not None and v.reconciling
    conds = set_condition(
        conds,
        RECONCILING,
        "True" if reconciling else "False",
        # kstatus: the Reconciling reason says what it waits for.
        v.reason if (v is not None and reconciling) else Reason.RECONCILED,
        v.message if (v is not None and reconciling) else "the children match the spec",
        gen,
        timestamp=timestamp,
    )
    conds = set_condition(
        conds,
        STALLED,
        "True" if stalled else "False",
        v.reason if (v is not None and stalled) else Reason.RECONCILED,
        v.message if (v is not None and stalled) else "nothing blocks the service",
        gen,
        timestamp=timestamp,
    )
    state = state_of(f)
    last_change = old.get("lastStateChange") if old.get("state") == state else None
    # The shape of models.MailServiceStatus, from which the CRD's status schema is made.
    out: dict[str, Any] = {
        "observedGeneration": gen,
        "state": state,
        "lastStateChange": last_change or timestamp,
        "replicas": f.current_replicas,
        "selector": ",".join(f"{k}={v}" for k, v in naming.selector(msvc.metadata.name).items()),
        "effectiveMaxConnectionsPerPod": built.rendered.service.max_connections,
        "endpoints": [endpoint(e.address, e.port) for e in built.endpoints],
        "conditions": conds,
    }
    # The live figures are written by the poller (reconcile.figures), not here; keep them.
    if "connections" in old:
        out["connections"] = old["connections"]
    return out


def endpoint(address: str | None, port: int) -> str:
    """address:port as the status shows it: *:25, 192.0.2.1:25, [2001:db8::1]:25."""
    if address is None:
        return f"*:{port}"
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _running_message(built: children.Children) -> str:
    ports = ", ".join(str(p) for p in sorted({e.port for e in built.endpoints}))
    return f"listening on port {ports}" if ports else "running"


def invalid(
    generation: int, message: str, old: Mapping[str, Any], *, timestamp: str
) -> dict[str, Any]:
    """An invalid spec: the children are left as they were, the conditions say why."""
    out = dict(old)
    conds: list[Any] = list(old.get("conditions") or [])
    conds = set_condition(
        conds, READY, "False", Reason.INVALID_SPEC, message, generation, timestamp=timestamp
    )
    conds = set_condition(
        conds, RECONCILING, "False", Reason.INVALID_SPEC, message, generation, timestamp=timestamp
    )
    conds = set_condition(
        conds, STALLED, "True", Reason.INVALID_SPEC, message, generation, timestamp=timestamp
    )
    out["observedGeneration"] = generation
    out["conditions"] = conds
    return out


def ip_address_group(
    name: str,
    specs: Mapping[str, models.IPAddressGroupSpec],
    generation: int,
    old: Mapping[str, Any],
    *,
    timestamp: str,
) -> dict[str, Any]:
    resolution = groups.resolve(name, specs)
    conds: list[Any] = list(old.get("conditions") or [])
    if resolution.missing:
        reason, message = (
            Reason.GROUP_NOT_FOUND,
            f"nested IPAddressGroup {', '.join(resolution.missing)} not found",
        )
    elif resolution.cycles:
        reason, message = (
            Reason.GROUP_CYCLE,
            "nested groups form a cycle: " + "; ".join(" -> ".join(c) for c in resolution.cycles),
        )
    else:
        reason, message = Reason.RESOLVED, f"{len(resolution.cidrs)} networks"
    ok = reason == Reason.RESOLVED
    # A missing nested group can appear by itself (applied together with this one); a cycle
    # needs an edit.
    stalled = reason == Reason.GROUP_CYCLE
    waiting = reason == Reason.GROUP_NOT_FOUND
    conds = set_condition(
        conds, READY, "True" if ok else "False", reason, message, generation, timestamp=timestamp
    )
    conds = set_condition(
        conds,
        STALLED,
        "True" if stalled else "False",
        reason if stalled else Reason.RESOLVED,
        message,
        generation,
        timestamp=timestamp,
    )
    conds = set_condition(
        conds,
        RECONCILING,
        "True" if waiting else "False",
        reason if waiting else Reason.RESOLVED,
        message if waiting else "resolved",
        generation,
        timestamp=timestamp,
    )
    return {
        "observedGeneration": generation,
        # What a MailService using this group admits: empty when it cannot be resolved
        # (services using it fail closed).
        "cidrs": list(resolution.cidrs) if ok else [],
        "conditions": conds,
    }
