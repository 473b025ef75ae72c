"""Status of MailServices and IPAddressGroups. Ready comes from an ordered chain of small
pure checks (cert-manager's policy chain): the first that fails gives the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from mailwarden.operator import children, conditions, conflicts, groups, models, naming
from mailwarden.operator.conditions import (
    WARNING,
    Reason,
    set_condition,
)
from mailwarden.operator.conditions import get as conditions_get

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
    # Endpoints as assigned ("192.0.2.25:25", "*:30025"), and what is still waiting for an
    # address (the load balancer's, a node port, a cluster IP).
    assigned: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    # Children whose names are taken by objects someone else controls.
    foreign: tuple[str, ...] = ()
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
    # way. (kstatus reads exactly these two.) None: as conditions.READY_FALSE says for the
    # reason; a check sets them only where one case of a reason differs (a quota refusal).
    stalled: bool = None  # type: ignore[assignment]
    reconciling: bool = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        meaning = conditions.READY_FALSE.get(self.reason)
        for name in ("stalled", "reconciling"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, bool(meaning and getattr(meaning, name)))


Check = Callable[[Facts], Verdict | None]


def group_not_found(f: Facts) -> Verdict | None:
    if f.resolution is None or not f.resolution.missing:
        return None
    return Verdict(
        Reason.GROUP_NOT_FOUND, f"{f.resolution.describe()}; refusing every client until it exists"
    )


def group_cycle(f: Facts) -> Verdict | None:
    if f.resolution is None or not f.resolution.cycles:
        return None
    return Verdict(
        Reason.GROUP_CYCLE, f"{f.resolution.describe()}; refusing every client until it is broken"
    )


def listen_conflict(f: Facts) -> Verdict | None:
    if not f.lost:
        return None
    return Verdict(
        Reason.LISTEN_CONFLICT,
        f"not taking {conflicts.describe(dict(f.lost))}",
    )


def owned_elsewhere(f: Facts) -> Verdict | None:
    if not f.foreign:
        return None
    return Verdict(
        Reason.OWNED_ELSEWHERE,
        "not changing objects another owner controls: " + "; ".join(f.foreign),
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
            return Verdict(reason, f.deployment_failures[reason])
    return None


def pods_failing(f: Facts) -> Verdict | None:
    for reason in (Reason.IMAGE_PULL_BACK_OFF, Reason.CRASH_LOOP_BACK_OFF):
        if reason in f.pod_failures:
            return Verdict(reason, f.pod_failures[reason])
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
    )


def address_pending(f: Facts) -> Verdict | None:
    if not f.pending:
        return None
    return Verdict(
        Reason.ADDRESS_PENDING,
        f"waiting for {', '.join(f.pending)}",
    )


CHECKS: tuple[Check, ...] = (
    group_not_found,
    group_cycle,
    listen_conflict,
    owned_elsewhere,
    apply_failed,
    stopped,
    deployment_failed,
    pods_failing,
    backend_unreachable,
    starting,
    address_pending,
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
    deployments: Mapping[str, Mapping[str, Any]] | Mapping[str, Any] | None,
    services: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    backend_error: str | None = None,
    foreign: tuple[str, ...] = (),
    apply_failure: ApplyFailure | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
) -> Facts:
    """deployments and services: the live objects of the MailService's listeners, by
    listener name (a single Deployment is taken as the first listener's)."""
    names = [lst.name for lst in built.listeners]
    if deployments is not None and "metadata" in deployments:  # one live Deployment
        deployments = {names[0]: deployments} if names else {}
    deployments = dict(deployments or {})
    wanted = [int(lst.deployment["spec"]["replicas"]) for lst in built.listeners]
    current = available = updated = 0
    observed = bool(built.listeners)
    for lst, want in zip(built.listeners, wanted, strict=True):
        live = deployments.get(lst.name)
        dstatus: Mapping[str, Any] = (live or {}).get("status") or {}
        dmeta: Mapping[str, Any] = (live or {}).get("metadata") or {}
        gen = dstatus.get("observedGeneration")
        observed = observed and (
            live is not None and gen is not None and int(gen) >= int(dmeta.get("generation") or 0)
        )
        current += int(dstatus.get("replicas") or 0)
        # A pod above what this listener wants (a rollout's surge) does not make up for
        # another listener's missing one.
        available += min(int(dstatus.get("availableReplicas") or 0), want)
        updated += min(int(dstatus.get("updatedReplicas") or 0), want)
    assigned, pending = addresses(built, services or {})
    return Facts(
        generation=msvc.metadata.generation or 0,
        running=built.running,
        replicas=sum(wanted),
        resolution=built.rendered.resolution,
        lost=lost,
        current_replicas=current,
        available_replicas=available,
        updated_replicas=updated,
        rollout_observed=observed,
        backend=endpoint(built.rendered.service.backend.host, built.rendered.service.backend.port),
        backend_error=backend_error,
        assigned=assigned,
        pending=pending,
        foreign=foreign,
        apply_failure=apply_failure,
        deployment_failures=deployment_failures(*deployments.values()),
        pod_failures=pod_failures(pods),
    )


def addresses(
    built: children.Children, services: Mapping[str, Mapping[str, Any]]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The MailService's endpoints as the cluster assigned them, and what it still waits
    for. LoadBalancer: the requested address must be in status.loadBalancer.ingress (any
    ingress address without one); NodePort: the node port (and a fixed address as an
    external IP, which needs no assignment); ClusterIP: the cluster IP."""
    assigned: list[str] = []
    pending: list[str] = []
    for lst in built.listeners:
        live = services.get(lst.name) or {}
        desired = lst.service
        kind = desired["spec"]["type"]
        mine = [e.port for e in built.endpoints if e.service == lst.name]
        address = lst.listener.address
        lspec: Mapping[str, Any] = live.get("spec") or {}
        if kind == "LoadBalancer":
            ingress = ((live.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            entries = [i for i in ingress if isinstance(i, Mapping)]
            ips = [str(i["ip"]) for i in entries if i.get("ip")]
            names = [str(i["hostname"]) for i in entries if i.get("hostname") and not i.get("ip")]
            hosts = ips + names
            if address is not None:
                # The requested address must be there. A load balancer that reports only a
                # DNS name (an AWS NLB, whose fixed addresses are Elastic IPs given by
                # allocation) cannot show it: its name is what there is to report.
                hosts = [h for h in ips if h == address] or ([] if ips else names)
            if not hosts:
                what = (
                    f"the load balancer to assign {address}"
                    if address
                    else ("the load balancer to assign an address")
                )
                pending.append(f"{what} (Service {lst.name})")
            assigned += [endpoint(h, p) for h in hosts for p in mine]
        elif kind == "NodePort":
            node_ports = {
                int(p.get("port") or 0): p.get("nodePort") for p in lspec.get("ports") or []
            }
            if address is not None:
                assigned += [endpoint(address, p) for p in mine]
            missing = [p for p in mine if not node_ports.get(p)]
            if missing:
                pending.append(
                    f"node ports for {', '.join(map(str, missing))} (Service {lst.name})"
                )
            assigned += [f"*:{node_ports[p]}" for p in mine if node_ports.get(p)]
        else:
            cluster_ip = lspec.get("clusterIP")
            if not cluster_ip or cluster_ip == "None":
                pending.append(f"a cluster IP (Service {lst.name})")
            else:
                assigned += [endpoint(cluster_ip, p) for p in mine]
    return tuple(dict.fromkeys(assigned)), tuple(pending)


def address_of(f: Facts) -> str:
    """The ADDRESS column: the distinct hosts of the assigned endpoints, or <pending>."""
    hosts = list(dict.fromkeys(e.rsplit(":", 1)[0].strip("[]") for e in f.assigned))
    if f.pending and not hosts:
        return "<pending>"
    return ",".join(hosts)


def deployment_failures(*deployments: Mapping[str, Any] | None) -> dict[str, str]:
    """The Deployment controller's failure conditions
    (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#failed-deployment):
    Progressing=False with reason ProgressDeadlineExceeded, and ReplicaFailure=True; of any of
    the MailService's listener Deployments."""
    out = {}
    conds = [
        cond
        for deployment in deployments
        for cond in ((deployment or {}).get("status") or {}).get("conditions") or []
    ]
    for cond in conds:
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
    gen = f.generation
    # kstatus: a Reconciling or Stalled that is True carries the reason it waits for.
    conds = conditions.set_kstatus(
        list(old.get("conditions") or []),
        gen,
        ready=(Reason.RUNNING, _running_message(built, f)) if v is None else None,
        blocked=None if v is None else (v.reason, v.message),
        stalled=None if v is None else v.stalled,
        reconciling=None if v is None else v.reconciling,
        reconciled=(Reason.RECONCILED, "the children match the spec"),
        not_stalled=(Reason.RECONCILED, "nothing blocks the service"),
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
        "selector": ",".join(f"{k}={v}" for k, v in _selector(msvc, built).items()),
        "effectiveMaxConnectionsPerPod": built.rendered.service.max_connections,
        "endpoints": list(f.assigned),
        "address": address_of(f),
        "listeners": [lst.name for lst in built.listeners],
        "conditions": warning_condition(built, conds, gen, timestamp),
    }
    # The live figures are written by the poller (reconcile.figures), not here; keep them.
    if "connections" in old:
        out["connections"] = old["connections"]
    return out


def _selector(msvc: models.MailService, built: children.Children) -> dict[str, str]:
    if built.listeners:
        return built.listeners[0].listener.selector
    return naming.selector(naming.base(msvc.metadata.name), msvc.metadata.name)


def warning_condition(
    built: children.Children, conds: list[Any], generation: int, timestamp: str
) -> list[Any]:
    """Warning=True while the spec asks for something that cannot work as written (an
    allow-list the listener cannot apply to real client addresses, an address that may
    change...); the Events say the same once per generation."""
    if built.warnings:
        first = built.warnings[0]
        message = "; ".join(w.message for w in built.warnings)
        return set_condition(
            conds, WARNING, "True", first.reason, message, generation, timestamp=timestamp
        )
    if conditions_get(conds, WARNING) is None:
        return conds
    return set_condition(
        conds, WARNING, "False", Reason.RECONCILED, "no warnings", generation, timestamp=timestamp
    )


def endpoint(address: str | None, port: int) -> str:
    """address:port as the status shows it: *:25, 192.0.2.1:25, [2001:db8::1]:25."""
    if address is None:
        return f"*:{port}"
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _running_message(built: children.Children, f: Facts | None = None) -> str:
    if f is not None and f.assigned:
        return "listening on " + ", ".join(f.assigned)
    ports = ", ".join(str(p) for p in sorted({e.port for e in built.endpoints}))
    return f"listening on port {ports}" if ports else "running"


def invalid(
    generation: int, message: str, old: Mapping[str, Any], *, timestamp: str
) -> dict[str, Any]:
    """An invalid spec: the children are left as they were, the conditions say why."""
    out = dict(old)
    out["observedGeneration"] = generation
    out["conditions"] = conditions.set_kstatus(
        list(old.get("conditions") or []),
        generation,
        ready=None,
        blocked=(Reason.INVALID_SPEC, message),
        reconciled=(Reason.INVALID_SPEC, message),
        not_stalled=(Reason.INVALID_SPEC, message),
        timestamp=timestamp,
    )
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
    if resolution.missing:
        reason = Reason.GROUP_NOT_FOUND
    elif resolution.cycles:
        reason = Reason.GROUP_CYCLE
    else:
        reason = Reason.RESOLVED
    ok = reason == Reason.RESOLVED
    message = f"{len(resolution.cidrs)} networks" if ok else resolution.describe()
    # A missing nested group can appear by itself (applied together with this one): it
    # reconciles; a cycle needs an edit: it stalls (conditions.READY_FALSE).
    conds = conditions.set_kstatus(
        list(old.get("conditions") or []),
        generation,
        ready=(reason, message) if ok else None,
        blocked=None if ok else (reason, message),
        reconciled=(Reason.RESOLVED, "resolved"),
        not_stalled=(Reason.RESOLVED, message),
        timestamp=timestamp,
    )
    return {
        "observedGeneration": generation,
        # What a MailService using this group admits: empty when it cannot be resolved
        # (services using it fail closed).
        "cidrs": list(resolution.cidrs) if ok else [],
        "conditions": conds,
    }
