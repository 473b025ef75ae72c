"""Pure builders: a MailService (with the groups it uses and the listen claims it lost) →
the objects the operator keeps in the cluster for it. No I/O: `mailwarden render` prints
exactly what these return, and the handlers apply exactly that."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Mapping
from typing import Any

from mailwarden.listener import config as lc
from mailwarden.operator import conflicts, models, naming, render
from mailwarden.operator import settings as settings_mod

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    address: str | None
    port: int
    service: str


@dataclasses.dataclass(frozen=True)
class Warning:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Children:
    config_map: Manifest
    deployment: Manifest
    services: tuple[Manifest, ...]
    network_policy: Manifest
    rendered: render.Rendered
    endpoints: tuple[Endpoint, ...]
    warnings: tuple[Warning, ...]

    @property
    def all(self) -> list[Manifest]:
        return [self.config_map, self.deployment, *self.services, self.network_policy]


def build(
    msvc: models.MailService,
    groups: Mapping[str, models.IPAddressGroupSpec],
    *,
    lost: Mapping[conflicts.Claim, conflicts.Claimant] | None = None,
    settings: settings_mod.Settings | None = None,
) -> Children:
    settings = settings or settings_mod.Settings()
    msvc = with_defaults(msvc, settings.listener_defaults)
    lost = lost or {}
    rendered = render.service_config(msvc, groups, bind_addresses=False)
    cfg = render.listener_config(
        [rendered.service],
        drain_seconds=float(msvc.spec.drain_seconds),
        metrics_port=settings.metrics_port,
    )
    # JSON (which is YAML too): the listener pod then needs no YAML parser (its footprint).
    text = lc.dumps(cfg, "json")
    services, endpoints, warnings = _services(msvc, lost)
    warnings += [Warning("ExemptGroupUnresolved", p) for p in rendered.exempt_problems]
    return Children(
        config_map=config_map(msvc, text),
        deployment=deployment(msvc, settings),
        services=tuple(services),
        network_policy=network_policy(msvc, rendered, settings),
        rendered=rendered,
        endpoints=tuple(endpoints),
        warnings=tuple(warnings),
    )


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


def _meta(
    msvc: models.MailService, name: str, annotations: Mapping[str, str] | None = None
) -> Manifest:
    meta: Manifest = {
        "name": name,
        "namespace": msvc.metadata.namespace,
        "labels": naming.labels(msvc),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if msvc.metadata.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": models.API_VERSION,
                "kind": "MailService",
                "name": msvc.metadata.name,
                "uid": msvc.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def config_map(msvc: models.MailService, text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            msvc,
            naming.base(msvc.metadata.name),
            {naming.ANNOTATION_CONFIG_HASH: config_hash(text)},
        ),
        "data": {naming.CONFIG_FILE: text},
    }


def ports(msvc: models.MailService) -> list[int]:
    return sorted({p for _, p in msvc.spec.endpoints()})


def deployment(msvc: models.MailService, settings: settings_mod.Settings) -> Manifest:
    spec = msvc.spec
    name = naming.base(msvc.metadata.name)
    running = models.wants_running(msvc)
    defaults = settings.listener_defaults
    # The operator's own annotations and labels win over the defaults' (the selector among
    # them; settings refuses default labels under the operator's prefixes anyway).
    template_annotations = {
        **defaults.pod_annotations,
        "kubectl.kubernetes.io/default-container": naming.CONTAINER,
    }
    restarted = msvc.metadata.annotations.get(models.RESTART_ANNOTATION)
    if restarted:
        # Changing this rolls the pods one by one (maxUnavailable 0), each draining.
        template_annotations[models.RESTART_ANNOTATION] = restarted
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": naming.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Manifest] = [
        # Mounted as a directory, never with subPath: only then does the kubelet swap the
        # file in place when the ConfigMap changes, and the listener reloads it.
        {"name": "config", "configMap": {"name": name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if spec.tls is not None:
        mounts.append({"name": "tls", "mountPath": naming.TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": spec.tls.secret_name}})
    container_ports = [
        {"name": naming.port_name(p), "containerPort": p, "protocol": "TCP"} for p in ports(msvc)
    ]
    container_ports.append(
        {"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"}
    )
    container: Manifest = {
        "name": naming.CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "mailwarden-listener",
            "--config",
            f"{naming.CONFIG_DIR}/{naming.CONFIG_FILE}",
        ],
        "ports": container_ports,
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
    if spec.resources:
        container["resources"] = spec.resources
    pull_secrets = defaults.pull_secrets_list()
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.drain_seconds + settings.termination_margin_seconds,
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
    }
    if defaults.priority_class_name:
        pod_spec["priorityClassName"] = defaults.priority_class_name
    if pull_secrets:
        pod_spec["imagePullSecrets"] = pull_secrets
    if spec.node_selector:
        pod_spec["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod_spec["tolerations"] = spec.tolerations
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    labels = {**defaults.pod_labels, **naming.labels(msvc)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(msvc, name),
        "spec": {
            "replicas": spec.replicas if running else 0,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": naming.selector(msvc.metadata.name)},
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


def _services(
    msvc: models.MailService, lost: Mapping[conflicts.Claim, conflicts.Claimant]
) -> tuple[list[Manifest], list[Endpoint], list[Warning]]:
    expose = msvc.spec.expose
    by_address: dict[str | None, list[int]] = {}
    warnings: list[Warning] = []
    for address, port in msvc.spec.endpoints():
        if address is not None and (address, port) in lost:
            continue
        if address is not None and expose.type == "ClusterIP":
            warnings.append(
                Warning(
                    "FixedAddressIgnored",
                    f"listen address {address}:{port} ignored: a ClusterIP Service cannot hold "
                    "a fixed external address; use expose.type LoadBalancer or NodePort",
                )
            )
            address = None
        by_address.setdefault(address, [])
        if port not in by_address[address]:
            by_address[address].append(port)
    services: list[Manifest] = []
    endpoints: list[Endpoint] = []
    for address in sorted(by_address, key=lambda a: (a is not None, a or "")):
        if address is not None and (why := dynamic_address(address)):
            warnings.append(
                Warning("DynamicAddress", f"listen address {address} may change: {why}")
            )
        svc = service(msvc, address, sorted(by_address[address]))
        services.append(svc)
        endpoints += [
            Endpoint(address, p, svc["metadata"]["name"]) for p in sorted(by_address[address])
        ]
    return services, endpoints, warnings


def service(msvc: models.MailService, address: str | None, port_list: list[int]) -> Manifest:
    expose = msvc.spec.expose
    annotations = dict(expose.annotations)
    annotations[naming.ANNOTATION_ADDRESS] = address or ""
    spec: Manifest = {
        "type": expose.type,
        "selector": naming.selector(msvc.metadata.name),
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
            spec["loadBalancerIP"] = address
        else:
            spec["externalIPs"] = [address]
    if expose.type in ("LoadBalancer", "NodePort"):
        spec["externalTrafficPolicy"] = expose.external_traffic_policy
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(msvc, naming.service(msvc.metadata.name, address), annotations),
        "spec": spec,
    }


def network_policy(
    msvc: models.MailService, rendered: render.Rendered, settings: settings_mod.Settings
) -> Manifest:
    allow = rendered.service.allow
    service_ports = [{"protocol": "TCP", "port": p} for p in ports(msvc)]
    ingress: list[Manifest] = []
    if allow is None:
        ingress.append({"ports": service_ports})  # everyone
    else:
        # Load balancers that send PROXY headers reach the pod with their own address.
        cidrs = sorted(set(allow) | set(rendered.service.proxy_protocol_from))
        if cidrs:
            ingress.append(
                {"from": [{"ipBlock": {"cidr": c}} for c in cidrs], "ports": service_ports}
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
        "metadata": _meta(msvc, naming.base(msvc.metadata.name)),
        "spec": {
            "podSelector": {"matchLabels": naming.selector(msvc.metadata.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
