"""Pure builders: listeners (listeners.py: the MailServices sharing a fixed address, or one
MailService's own) → the objects the operator keeps in the cluster for them. No I/O:
`mailwarden render` prints exactly what these return, and the handlers apply exactly that."""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import ipaddress
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from mailwarden.listener import config as lc
from mailwarden.operator import access, conflicts, listener_config, listeners, models, naming
from mailwarden.operator import settings as settings_mod
from mailwarden.operator.conditions import Reason

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A listen endpoint as asked for, with the listener (Deployment and Service) serving it."""

    address: str | None
    port: int
    service: str

    @property
    def listener(self) -> str:
        return self.service  # a listener's Service has the listener's name


@dataclasses.dataclass(frozen=True)
class SpecWarning:
    """Something the spec asks for that cannot work as written: the Warning condition and a
    Warning Event. `reason` is one of conditions.Reason's warnings."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class ListenerChildren:
    """The objects of one listener, shared or not."""

    listener: listeners.Listener
    config_map: Manifest
    deployment: Manifest
    service: Manifest
    network_policy: Manifest
    disruption_budget: Manifest | None
    # The listener configuration of each running member, by MailService name.
    configs: Mapping[str, lc.ServiceConfig]
    # ServiceAccount, Role and RoleBinding: the pods may read their own ConfigMap (access.py).
    access: tuple[Manifest, ...] = ()

    @property
    def name(self) -> str:
        return self.listener.name

    @property
    def all(self) -> list[Manifest]:
        # The pods' ServiceAccount exists before the Deployment that names it.
        out = [*self.access, self.config_map, self.deployment, self.service, self.network_policy]
        if self.disruption_budget is not None:
            out.append(self.disruption_budget)
        return out


@dataclasses.dataclass(frozen=True)
class Children:
    """What one MailService's reconciliation applies and reports on: the listeners serving it
    (each with all of its members), its own rendering, its endpoints and the warnings about
    its spec."""

    listeners: tuple[ListenerChildren, ...]
    rendered: listener_config.Rendered
    endpoints: tuple[Endpoint, ...]
    warnings: tuple[SpecWarning, ...]
    running: bool = True

    @property
    def all(self) -> list[Manifest]:
        return [obj for lst in self.listeners for obj in lst.all]

    @property
    def services(self) -> tuple[Manifest, ...]:
        return tuple(lst.service for lst in self.listeners)

    # The first listener's objects: the only ones for the many MailServices with one listener.
    @property
    def deployment(self) -> Manifest:
        return self.listeners[0].deployment if self.listeners else {}

    @property
    def config_map(self) -> Manifest:
        return self.listeners[0].config_map if self.listeners else {}

    @property
    def network_policy(self) -> Manifest:
        return self.listeners[0].network_policy if self.listeners else {}


def build(
    msvc: models.MailService,
    groups: Mapping[str, models.IPAddressGroupSpec],
    *,
    lost: Mapping[conflicts.Claim, conflicts.Claimant] | None = None,
    settings: settings_mod.Settings | None = None,
    others: Sequence[listeners.Member] = (),
    created: str = "",
) -> Children:
    """The children serving `msvc`, built with the `others` MailServices of its namespace
    (each a listeners.Member, defaults applied) that may share a listener with it."""
    settings = settings or settings_mod.Settings()
    msvc = with_defaults(msvc, settings.listener_defaults)
    me = listeners.Member(msvc, created, dict(lost or {}))
    members = [m for m in others if m.name != me.name] + [me]
    plan = listeners.plan(members)
    mine = listeners.of_member(plan, me.name)
    built = tuple(build_listener(lst, groups, settings) for lst in mine)
    return for_member(me, built, groups, settings)


def for_member(
    me: listeners.Member,
    built: Sequence[ListenerChildren],
    groups: Mapping[str, models.IPAddressGroupSpec],
    settings: settings_mod.Settings,
) -> Children:
    msvc = me.msvc
    replicas = built[0].deployment["spec"]["replicas"] if built else msvc.spec.replicas
    rendered = _render(msvc, groups, replicas or msvc.spec.replicas)
    endpoints: list[Endpoint] = []
    for lst in built:
        for port in lst.listener.ports_of(me):
            endpoints.append(Endpoint(lst.listener.address, port, lst.name))
    warnings = _warnings(me, built, settings)
    warnings += [SpecWarning(Reason.EXEMPT_GROUP_UNRESOLVED, p) for p in rendered.exempt_problems]
    return Children(tuple(built), rendered, tuple(endpoints), tuple(warnings), me.running)


def with_defaults(
    msvc: models.MailService, defaults: settings_mod.ListenerDefaults
) -> models.MailService:
    """The MailService as the operator acts on it: what its spec leaves out taken from the
    cluster-wide defaults (the chart's `listener.defaults`). The spec wins wherever it says
    something: `expose.type` and `expose.externalTrafficPolicy` when written in it (even when
    written as the built-in default), `resources`, `nodeSelector`, `tolerations` and `affinity`
    as a whole when present (`{}` or `[]` clears a default), `expose.annotations` key by key.
    Applying it twice gives the same result."""
    spec = msvc.spec
    expose = spec.expose
    given = expose.model_fields_set
    expose = expose.model_copy(
        update={
            "type": expose.type if "type" in given else defaults.expose.type,
            "external_traffic_policy": (
                expose.external_traffic_policy
                if "external_traffic_policy" in given
                else defaults.expose.external_traffic_policy
            ),
            "annotations": {**defaults.expose.annotations, **expose.annotations},
            "load_balancer_class": (
                expose.load_balancer_class
                if expose.load_balancer_class is not None
                else (defaults.expose.load_balancer_class or None)
            ),
            "address_request": (
                expose.address_request
                if "address_request" in given
                else defaults.expose.address_request
            ),
        }
    )
    fallback: dict[str, Any] = {
        "resources": defaults.resources_dict,
        "node_selector": dict(defaults.node_selector) or None,
        "tolerations": defaults.tolerations_list() or None,
        "affinity": dict(defaults.affinity) or None,
    }
    update: dict[str, Any] = {"expose": expose}
    for field, value in fallback.items():
        if getattr(spec, field) is None and value is not None:
            update[field] = value
    return msvc.model_copy(update={"spec": spec.model_copy(update=update)})


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- one listener -------------------------------------------------------------------------


def build_listener(
    listener: listeners.Listener,
    groups: Mapping[str, models.IPAddressGroupSpec],
    settings: settings_mod.Settings,
) -> ListenerChildren:
    replicas = replicas_of(listener)
    configs = {m.name: _service_config(m, listener, groups, replicas) for m in listener.running}
    cfg = listener_config.assemble(
        list(configs.values()),
        drain_seconds=float(drain_seconds(listener)),
        metrics_port=settings.metrics_port,
        lame_duck_seconds=float(settings.lame_duck_seconds),
    )
    # JSON (which is YAML too): the listener pod then needs no YAML parser (its footprint).
    text = lc.dumps(cfg, "json")
    budget = disruption_budget(listener) if replicas > 1 else None
    return ListenerChildren(
        listener=listener,
        config_map=config_map(listener, text),
        deployment=deployment(listener, settings, replicas),
        service=service(listener),
        network_policy=network_policy(listener, configs, settings),
        disruption_budget=budget,
        configs=configs,
        access=tuple(access.objects(listener.name, listener.namespace, _meta(listener))),
    )


def replicas_of(listener: listeners.Listener) -> int:
    """Pods of a listener: as many as the running member that asks for most (every pod
    serves every member); none when no member runs."""
    return max((m.msvc.spec.replicas for m in listener.running), default=0)


def drain_seconds(listener: listeners.Listener) -> int:
    """The longest drain any member asks for: the pods are shared, and so is their stop."""
    return max(m.msvc.spec.drain_seconds for m in listener.members)


def _render(
    msvc: models.MailService, groups: Mapping[str, models.IPAddressGroupSpec], replicas: int
) -> listener_config.Rendered:
    rendered = listener_config.service_config(
        msvc, groups, bind_addresses=False, tls_dir=tls_dir(msvc), replicas=replicas
    )
    return rendered


def _service_config(
    member: listeners.Member,
    listener: listeners.Listener,
    groups: Mapping[str, models.IPAddressGroupSpec],
    replicas: int,
) -> lc.ServiceConfig:
    rendered = _render(member.msvc, groups, replicas)
    ports = listener.ports_of(member)
    # Only this listener's ports: the member's other addresses have listeners of their own.
    return msgspec.structs.replace(
        rendered.service, listen=tuple(lc.Endpoint(address=None, port=p) for p in ports)
    )


def tls_dir(msvc: models.MailService) -> pathlib.Path | None:
    """Where a member's TLS Secret is mounted: one directory per Secret, as the members of a
    shared listener may each bring their own."""
    if msvc.spec.tls is None:
        return None
    return pathlib.Path(naming.TLS_DIR) / msvc.spec.tls.secret_name


def _meta(listener: listeners.Listener, annotations: Mapping[str, str] | None = None) -> Manifest:
    meta: Manifest = {
        "name": listener.name,
        "namespace": listener.namespace,
        "labels": naming.labels(listener.name, listener.owner),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    refs = owner_references(listener)
    if refs:
        meta["ownerReferences"] = refs
    return meta


def owner_references(listener: listeners.Listener) -> list[Manifest]:
    """A MailService's own listener: it is the controller, as before. A shared listener:
    every member is an owner and none is the controller (Kubernetes allows one controller,
    and no member controls what the others share); the garbage collector deletes the
    children when the last owner goes and drops the references of owners that went
    (kubernetes/pkg/controller/garbagecollector: dangling references are removed while solid
    owners remain)."""
    out = []
    for member in listener.members:
        uid = member.msvc.metadata.uid
        if not uid:
            continue  # `mailwarden render`: no cluster, no uid
        out.append(
            {
                "apiVersion": models.API_VERSION,
                "kind": "MailService",
                "name": member.name,
                "uid": uid,
                "controller": not listener.shared,
                "blockOwnerDeletion": True,
            }
        )
    return out


def config_map(listener: listeners.Listener, text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(listener, {naming.ANNOTATION_CONFIG_HASH: config_hash(text)}),
        "data": {naming.CONFIG_FILE: text},
    }


def ports(msvc: models.MailService) -> list[int]:
    return sorted({p for _, p in msvc.spec.endpoints()})


def oldest(listener: listeners.Listener) -> models.MailService:
    """The member whose pod placement and Service settings the listener takes: the oldest
    (members that differ are told, see _warnings)."""
    return listener.members[0].msvc


_BINARY = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL = ("k", "M", "G", "T", "P", "E")
_SUFFIXES = {
    **{s: decimal.Decimal(1024) ** (i + 1) for i, s in enumerate(_BINARY)},
    **{s: decimal.Decimal(1000) ** (i + 1) for i, s in enumerate(_DECIMAL)},
    "m": decimal.Decimal("0.001"),
    "u": decimal.Decimal("0.000001"),
    "n": decimal.Decimal("0.000000001"),
}


def _quantity(value: Any) -> decimal.Decimal:
    """A Kubernetes quantity's value, to compare two (k8s.io/apimachinery resource.Quantity:
    binary and decimal suffixes, exponents). Settings and the CRD check the syntax; anything
    unreadable counts as 0, so a readable value wins."""
    text = str(value).strip()
    try:
        for suffix in sorted(_SUFFIXES, key=len, reverse=True):
            if text.endswith(suffix):
                return decimal.Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
        return decimal.Decimal(text)
    except decimal.InvalidOperation:
        return decimal.Decimal(0)


def merged_resources(specs: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Per resource name, the largest request and the largest limit any member asks for:
    a pod serving several members needs at least what the most demanding one needs, and
    adding up members' figures would multiply the cluster-wide default by their number."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for section in ("requests", "limits"):
            for name, value in ((spec or {}).get(section) or {}).items():
                current = out.setdefault(section, {}).get(name)
                if current is None or _quantity(value) > _quantity(current):
                    out[section][name] = value
    if not any(specs):
        return None if all(s is None for s in specs) else {}
    return out


def deployment(
    listener: listeners.Listener, settings: settings_mod.Settings, replicas: int
) -> Manifest:
    """Nothing in the pod template depends on which members run, or on their ports: starting
    or stopping a member changes the ConfigMap (and the replicas), never the pods. Only what
    the pods must carry does: TLS Secrets, resources, placement, drain time, restarts."""
    head = oldest(listener)
    members = [m.msvc for m in listener.members]
    defaults = settings.listener_defaults
    # The operator's own annotations and labels win over the defaults' (the selector among
    # them; settings refuses default labels under the operator's prefixes anyway).
    template_annotations = {
        **defaults.pod_annotations,
        "kubectl.kubernetes.io/default-container": naming.CONTAINER,
    }
    restarts = [m.metadata.annotations.get(models.RESTART_ANNOTATION) or "" for m in members]
    if max(restarts):
        # Changing this rolls the pods one by one (maxUnavailable 0), each draining. On a
        # shared listener the latest restart of any member: all of them restart together.
        template_annotations[models.RESTART_ANNOTATION] = max(restarts)
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": naming.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Manifest] = [
        # Mounted as a directory, never with subPath: only then does the kubelet swap the
        # file in place when the ConfigMap changes, and the listener reloads it.
        {"name": "config", "configMap": {"name": listener.name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    secrets = sorted({m.spec.tls.secret_name for m in members if m.spec.tls is not None})
    for i, secret in enumerate(secrets):
        volume = f"tls-{i}"
        mounts.append({"name": volume, "mountPath": f"{naming.TLS_DIR}/{secret}", "readOnly": True})
        volumes.append({"name": volume, "secret": {"secretName": secret}})
    container: Manifest = {
        "name": naming.CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "mailwarden-listener",
            "--config",
            f"{naming.CONFIG_DIR}/{naming.CONFIG_FILE}",
        ],
        # Only the metrics port: container ports are informational (the Service targets port
        # numbers), and listing the members' ports would restart the pods whenever a member
        # comes or goes.
        "ports": [{"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    resources = merged_resources([m.spec.resources for m in members])
    if resources:
        container["resources"] = resources
    pull_secrets = defaults.pull_secrets_list()
    # SIGTERM -> the lame duck (readyz 503, still accepting, while endpoints and load
    # balancers' health checks catch up) -> drain -> the kubelet's SIGKILL after this.
    grace = settings.lame_duck_seconds + drain_seconds(listener)
    api_fields, api_volume, api_mount, api_env = access.pod_spec(listener.name, listener.namespace)
    volumes.append(api_volume)
    mounts.append(api_mount)
    container["env"] = [api_env]
    pod_spec: Manifest = {
        **api_fields,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace + settings.termination_margin_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
            # Lets the non-root listener bind 25, 110, 143...; a "safe" sysctl, allowed by
            # the restricted Pod Security level.
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [container],
        "volumes": volumes,
        # Replicas on different nodes where possible. Always present (harmless with one
        # replica) so that scaling never changes the template; ScheduleAnyway so that a
        # cluster with fewer nodes than replicas still runs them all.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": listener.selector},
            }
        ],
    }
    if defaults.priority_class_name:
        pod_spec["priorityClassName"] = defaults.priority_class_name
    if pull_secrets:
        pod_spec["imagePullSecrets"] = pull_secrets
    if head.spec.node_selector:
        pod_spec["nodeSelector"] = head.spec.node_selector
    if head.spec.tolerations:
        pod_spec["tolerations"] = head.spec.tolerations
    if head.spec.affinity:
        pod_spec["affinity"] = head.spec.affinity
    labels = {**defaults.pod_labels, **naming.labels(listener.name, listener.owner)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(listener),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": listener.selector},
            "strategy": {
                "type": "RollingUpdate",
                # A new pod is ready before an old one starts draining.
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels, "annotations": template_annotations},
                "spec": pod_spec,
            },
        },
    }


def disruption_budget(listener: listeners.Listener) -> Manifest:
    """At most one pod of a listener evicted at a time (node drains, cluster upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(listener),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": listener.selector}},
    }


def dynamic_address(address: str) -> str | None:
    """Why an address is probably assigned dynamically (and a binding to it will break when
    it changes), or None."""
    ip = ipaddress.ip_address(address)
    if ip.is_link_local:
        return "it is link-local, assigned automatically"
    if ip.version == 4 and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "it is in the carrier-grade NAT range, assigned by the provider"
    if ip.version == 6 and (int(ip) >> 24) & 0xFFFF == 0xFFFE:
        return "its interface identifier is EUI-64 (SLAAC), derived from a network card"
    return None


def client_address_lost(msvc: models.MailService, expose: models.Expose) -> str | None:
    """Why access rules that look at the client's address cannot work, or None. With
    externalTrafficPolicy Cluster, kube-proxy (or the load balancer) may forward through
    another node and replace the client's address with that node's (source NAT); unless a
    trusted load balancer restores it with a PROXY header, the listener sees node addresses."""
    spec = msvc.spec
    if expose.type == "ClusterIP" or expose.external_traffic_policy != "Cluster":
        return None
    if spec.proxy_protocol.trusted_cidrs:
        return None
    void = []
    if spec.access.allow_from is not None:
        void.append(f"access.allowFrom ({spec.access.allow_from})")
    if spec.access.max_connections_per_address:
        void.append("access.maxConnectionsPerAddress")
    if not void:
        return None
    return (
        f"{' and '.join(void)} void: the Service uses externalTrafficPolicy Cluster and no "
        "proxyProtocol.trustedCIDRs is set, so the listener sees node addresses instead of "
        "clients' (use externalTrafficPolicy Local, or a load balancer sending PROXY headers)"
    )


def _warnings(
    me: listeners.Member, built: Sequence[ListenerChildren], settings: settings_mod.Settings
) -> list[SpecWarning]:
    msvc = me.msvc
    out: list[SpecWarning] = []
    for address, port in msvc.spec.endpoints():
        if address is not None and msvc.spec.expose.type == "ClusterIP":
            out.append(
                SpecWarning(
                    Reason.FIXED_ADDRESS_IGNORED,
                    f"listen address {address}:{port} ignored: a ClusterIP Service cannot hold "
                    "a fixed external address; use expose.type LoadBalancer or NodePort",
                )
            )
    for lst in built:
        address = lst.listener.address
        if address is not None and (why := dynamic_address(address)):
            message = f"listen address {address} may change: {why}"
            out.append(SpecWarning(Reason.DYNAMIC_ADDRESS, message))
    exposes = [effective_expose(lst.listener) for lst in built] or [msvc.spec.expose]
    for expose in exposes:
        if why := client_address_lost(msvc, expose):
            out.append(SpecWarning(Reason.CLIENT_ADDRESS_LOST, why))
            break
    for lst in built:
        head = oldest(lst.listener)
        if head.metadata.name == msvc.metadata.name:
            continue
        differ = [
            field
            for field, mine, theirs in (
                ("expose.type", msvc.spec.expose.type, head.spec.expose.type),
                (
                    "expose.externalTrafficPolicy",
                    msvc.spec.expose.external_traffic_policy,
                    head.spec.expose.external_traffic_policy,
                ),
                (
                    "expose.loadBalancerClass",
                    msvc.spec.expose.load_balancer_class,
                    head.spec.expose.load_balancer_class,
                ),
                (
                    "expose.addressRequest",
                    msvc.spec.expose.address_request,
                    head.spec.expose.address_request,
                ),
                ("nodeSelector", msvc.spec.node_selector, head.spec.node_selector),
                ("tolerations", msvc.spec.tolerations, head.spec.tolerations),
                ("affinity", msvc.spec.affinity, head.spec.affinity),
            )
            if mine != theirs
        ]
        if differ:
            out.append(
                SpecWarning(
                    Reason.SHARED_LISTENER_SETTINGS,
                    f"address {lst.listener.address} is shared with MailService "
                    f"{head.metadata.name}, created earlier, whose {', '.join(differ)} the "
                    "shared Service and pods use; this MailService's differ",
                )
            )
    return out


def effective_expose(listener: listeners.Listener) -> models.Expose:
    """How a listener's Service is exposed: as its oldest member says, with the annotations
    of every member (the older one's value where two set the same key)."""
    head = oldest(listener).spec.expose
    annotations: dict[str, str] = {}
    for member in reversed(listener.members):
        annotations.update(member.msvc.spec.expose.annotations)
    return head.model_copy(update={"annotations": annotations})


def service(listener: listeners.Listener) -> Manifest:
    """One Service per listener: for a shared one, the address's only Service, with the ports
    of every running member (of every member when none runs, so the Service stays valid)."""
    expose = effective_expose(listener)
    address = listener.address
    members = listener.running or listener.members
    port_list = sorted({p for m in members for p in listener.ports_of(m)})
    annotations = dict(expose.annotations)
    annotations[naming.ANNOTATION_ADDRESS] = address or ""
    spec: Manifest = {
        "type": expose.type,
        "selector": listener.selector,
        "ports": [
            {"name": naming.port_name(p), "port": p, "targetPort": p, "protocol": "TCP"}
            for p in port_list
        ],
    }
    if address is None:
        spec["ipFamilyPolicy"] = "PreferDualStack"
    else:
        spec["ipFamilyPolicy"] = "SingleStack"
        spec["ipFamilies"] = ["IPv6" if ":" in address else "IPv4"]
        if expose.type == "LoadBalancer":
            # MetalLB refuses a Service carrying both its annotation and spec.loadBalancerIP
            # (metallb controller/service.go, getDesiredLbIPs): one form, chosen per Service.
            if expose.address_request == "LoadBalancerIP":
                spec["loadBalancerIP"] = address
            else:
                annotations[METALLB_IPS] = address
        else:
            spec["externalIPs"] = [address]
    if expose.type == "LoadBalancer" and expose.load_balancer_class:
        spec["loadBalancerClass"] = expose.load_balancer_class
    if expose.type in ("LoadBalancer", "NodePort"):
        spec["externalTrafficPolicy"] = expose.external_traffic_policy
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(listener, annotations),
        "spec": spec,
    }


# MetalLB's annotation for the addresses a Service asks for (https://metallb.io/usage/).
METALLB_IPS = "metallb.io/loadBalancerIPs"


def network_policy(
    listener: listeners.Listener,
    configs: Mapping[str, lc.ServiceConfig],
    settings: settings_mod.Settings,
) -> Manifest:
    """One rule per running member: its ports, from whom it admits (a union of rules, as
    NetworkPolicy rules are)."""
    ingress: list[Manifest] = []
    for member in listener.running:
        cfg = configs[member.name]
        member_ports = [{"protocol": "TCP", "port": p} for p in listener.ports_of(member)]
        if cfg.allow is None:
            ingress.append({"ports": member_ports})  # everyone
            continue
        # Load balancers that send PROXY headers reach the pod with their own address.
        cidrs = sorted(set(cfg.allow) | set(cfg.proxy_protocol_from))
        if cidrs:
            ingress.append(
                {"from": [{"ipBlock": {"cidr": c}} for c in cidrs], "ports": member_ports}
            )
    ingress.append(
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {
                            "kubernetes.io/metadata.name": settings.monitoring_namespace
                        }
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": settings.metrics_port}],
        }
    )
    if settings.operator_namespace and settings.figures_seconds > 0:
        # The operator reads the live figures (GET /status) on the metrics port.
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {
                                "kubernetes.io/metadata.name": settings.operator_namespace
                            }
                        },
                        "podSelector": {"matchLabels": {naming.LABEL_COMPONENT: "operator"}},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": settings.metrics_port}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(listener),
        "spec": {
            "podSelector": {"matchLabels": listener.selector},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
