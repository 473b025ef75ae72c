"""The pure builders: every child validated against the official Kubernetes schemas, and the
properties the design asks of them. No API, no operator: fast."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from mailwarden.listener import catalogue
from mailwarden.listener import config as lc
from mailwarden.operator import children, conflicts, models, naming

KUBERNETES = "1.34"  # the current minor of the official schemas
GROUPS = {
    "office": models.IPAddressGroupSpec.model_validate(
        {"items": [{"network": "192.0.2.0/24"}, {"host": "2001:db8::7"}, {"group": "vpn"}]}
    ),
    "vpn": models.IPAddressGroupSpec.model_validate({"items": [{"range": "10.8.0.1-10.8.0.9"}]}),
}


def msvc(
    name: str = "svc", annotations: dict[str, str] | None = None, **spec: Any
) -> models.MailService:
    spec.setdefault("service", "SMTP")
    spec.setdefault("backend", {"host": "backend.mail.svc"})
    kind = catalogue.kind_of(spec["service"])
    if kind.tls is catalogue.TLSMode.IMPLICIT:
        spec.setdefault("tls", {"secretName": "mail-tls"})
    return models.MailService.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "mail",
                "uid": "0d9ad0c5-1111-2222-3333-444455556666",
                "generation": 3,
                "annotations": annotations or {},
            },
            "spec": spec,
        }
    )


def spread() -> list[models.MailService]:
    """Every service of the catalogue, each with a different mix of options."""
    out = []
    exposes = ["LoadBalancer", "NodePort", "ClusterIP"]
    for i, service in enumerate(catalogue.SERVICE_NAMES):
        kind = catalogue.kind_of(service)
        spec: dict[str, Any] = {
            "service": service,
            "replicas": i % 4,
            "expose": {"type": exposes[i % 3], "annotations": {"example.com/lb": "x"}},
            "access": {
                "maxConnections": 10 * i,
                "maxConnectionsPerAddress": i,
                "anonymous": kind.anonymous_allowed and i % 2 == 0,
            },
            "drainSeconds": 5 * i,
        }
        if i % 2:
            spec["listen"] = [
                {"address": f"192.0.2.{i}"},
                {"address": f"2001:db8::{i}", "port": 10000 + i},
                {"port": 20000 + i},
            ]
            spec["access"]["allowFrom"] = "office"
            spec["resources"] = {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"memory": "256Mi"},
            }
            spec["nodeSelector"] = {"kubernetes.io/os": "linux"}
            spec["tolerations"] = [{"key": "mail", "operator": "Exists", "effect": "NoSchedule"}]
        if i % 3 == 0:
            spec["proxyProtocol"] = {"trustedCIDRs": ["10.0.0.0/8"]}
            spec["backend"] = {"host": "backend", "port": 1000 + i, "proxyProtocol": "V2"}
        if i % 5 == 0:
            spec["startup"] = "Manual"
        out.append(msvc(service.lower(), **spec))
    return out


@pytest.mark.parametrize("service", spread(), ids=lambda m: m.spec.service)
def test_every_child_validates_against_the_official_schemas(service: models.MailService) -> None:
    built = children.build(service, GROUPS)
    assert built.all
    for child in built.all:
        kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_the_spread_covers_all_fifteen_services() -> None:
    assert sorted(m.spec.service for m in spread()) == sorted(catalogue.SERVICE_NAMES)
    assert len(catalogue.SERVICE_NAMES) == 15


def pod(built: children.Children) -> dict[str, Any]:
    return built.deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_pods_meet_the_restricted_pod_security_level() -> None:
    spec = pod(children.build(msvc(), {}))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "hostNetwork" not in spec and "hostPort" not in str(container)


def test_the_listener_runs_from_the_mounted_config_with_probes_on_the_metrics_port() -> None:
    built = children.build(msvc(service="IMAPS", drainSeconds=45), {})
    (container,) = pod(built)["containers"]
    assert container["command"] == [
        "mailwarden-listener",
        "--config",
        "/etc/mailwarden/config/listener.yaml",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # One directory per TLS Secret: the members of a shared listener may each bring one.
    assert mounts["tls-0"]["mountPath"] == "/etc/mailwarden/tls/mail-tls"
    assert "subPath" not in mounts["config"]  # a subPath mount never sees ConfigMap updates
    # lame duck (5) + drain (45) + margin (10)
    assert pod(built)["terminationGracePeriodSeconds"] == 5 + 45 + 10
    cfg = lc.loads(built.config_map["data"]["listener.yaml"])
    assert cfg.drain_seconds == 45
    assert cfg.services[0].tls is not None
    assert str(cfg.services[0].tls.cert_file) == "/etc/mailwarden/tls/mail-tls/tls.crt"


def test_a_config_change_leaves_the_deployment_alone() -> None:
    a = children.build(msvc(access={"maxConnections": 10}), GROUPS)
    b = children.build(msvc(access={"maxConnections": 20, "allowFrom": "office"}), GROUPS)
    assert a.config_map["data"] != b.config_map["data"]
    assert a.deployment == b.deployment


def test_a_restart_annotation_changes_only_the_pod_template_annotations() -> None:
    a = children.build(msvc(), {})
    b = children.build(msvc(annotations={models.RESTART_ANNOTATION: "2026-01-01T00:00:00Z"}), {})
    assert (
        b.deployment["spec"]["template"]["metadata"]["annotations"][models.RESTART_ANNOTATION]
        == "2026-01-01T00:00:00Z"
    )
    a_spec = {**a.deployment["spec"], "template": {}}
    b_spec = {**b.deployment["spec"], "template": {}}
    assert a_spec == b_spec
    assert pod(a) == pod(b)


def test_stopped_means_zero_replicas() -> None:
    assert (
        children.build(msvc(startup="Manual", replicas=3), {}).deployment["spec"]["replicas"] == 0
    )
    started = msvc(startup="Manual", replicas=3, annotations={models.STATE_ANNOTATION: "Running"})
    assert children.build(started, {}).deployment["spec"]["replicas"] == 3
    stopped = msvc(replicas=3, annotations={models.STATE_ANNOTATION: "Stopped"})
    assert children.build(stopped, {}).deployment["spec"]["replicas"] == 0


def test_one_service_per_distinct_address_with_the_address_fixed() -> None:
    built = children.build(
        msvc(
            service="HTTP",
            listen=[
                {"address": "192.0.2.10"},
                {"address": "192.0.2.10", "port": 8080},
                {"address": "2001:db8::10"},
                {"port": 8081},
            ],
        ),
        {},
    )
    by_name = {s["metadata"]["name"]: s for s in built.services}
    assert set(by_name) == {
        "mailwarden-svc",
        "mailwarden--192-0-2-10",
        "mailwarden--2001-db8--10",
    }
    v4 = by_name["mailwarden--192-0-2-10"]
    # MetalLB's annotation, and not spec.loadBalancerIP as well: MetalLB refuses both.
    assert v4["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == "192.0.2.10"
    assert "loadBalancerIP" not in v4["spec"]
    assert [p["port"] for p in v4["spec"]["ports"]] == [80, 8080]
    assert by_name["mailwarden--2001-db8--10"]["spec"]["ipFamilies"] == ["IPv6"]
    assert [p["port"] for p in by_name["mailwarden-svc"]["spec"]["ports"]] == [8081]
    assert all(s["spec"]["externalTrafficPolicy"] == "Local" for s in by_name.values())


def test_the_address_can_be_asked_for_in_spec_load_balancer_ip_instead() -> None:
    built = children.build(
        msvc(
            listen=[{"address": "192.0.2.10"}],
            expose={"addressRequest": "LoadBalancerIP", "loadBalancerClass": "example.com/lb"},
        ),
        {},
    )
    (svc,) = built.services
    assert svc["spec"]["loadBalancerIP"] == "192.0.2.10"
    assert svc["spec"]["loadBalancerClass"] == "example.com/lb"
    assert "metallb.io/loadBalancerIPs" not in svc["metadata"]["annotations"]


def test_a_nodeport_service_holds_its_address_as_an_external_ip() -> None:
    built = children.build(
        msvc(listen=[{"address": "192.0.2.10"}], expose={"type": "NodePort"}), {}
    )
    (svc,) = built.services
    assert svc["spec"]["externalIPs"] == ["192.0.2.10"]
    assert "loadBalancerIP" not in svc["spec"]


def test_a_fixed_address_on_clusterip_is_ignored_with_a_warning() -> None:
    built = children.build(
        msvc(listen=[{"address": "192.0.2.10"}], expose={"type": "ClusterIP"}), {}
    )
    (svc,) = built.services
    assert "externalIPs" not in svc["spec"] and "externalTrafficPolicy" not in svc["spec"]
    assert [w.reason for w in built.warnings] == ["FixedAddressIgnored"]


@pytest.mark.parametrize(
    ("address", "dynamic"),
    [
        ("169.254.1.1", True),
        ("fe80::1", True),
        ("100.64.3.4", True),
        ("2001:db8::211:22ff:fe33:4455", True),
        ("192.0.2.10", False),
        ("2001:db8::10", False),
    ],
)
def test_addresses_that_look_dynamic_get_a_warning(address: str, dynamic: bool) -> None:
    built = children.build(msvc(listen=[{"address": address}]), {})
    assert ("DynamicAddress" in [w.reason for w in built.warnings]) is dynamic


def test_a_lost_claim_gets_no_service() -> None:
    service = msvc(listen=[{"address": "192.0.2.10"}, {"address": "192.0.2.11"}])
    holder = conflicts.Claimant(
        "mail", "other", "2020-01-01T00:00:00Z", frozenset({("192.0.2.10", 25)})
    )
    built = children.build(service, {}, lost={("192.0.2.10", 25): holder})
    assert [s["metadata"]["name"] for s in built.services] == ["mailwarden--192-0-2-11"]
    assert [(e.address, e.port) for e in built.endpoints] == [("192.0.2.11", 25)]


def test_the_network_policy_admits_the_group_and_the_monitoring_namespace() -> None:
    built = children.build(
        msvc(access={"allowFrom": "office"}, proxyProtocol={"trustedCIDRs": ["10.0.0.0/8"]}), GROUPS
    )
    service_rule, metrics_rule = built.network_policy["spec"]["ingress"]
    cidrs = [f["ipBlock"]["cidr"] for f in service_rule["from"]]
    assert cidrs == sorted(
        {
            "10.0.0.0/8",
            "10.8.0.1/32",
            "10.8.0.2/31",
            "10.8.0.4/30",
            "10.8.0.8/31",
            "192.0.2.0/24",
            "2001:db8::7/128",
        }
    )
    assert service_rule["ports"] == [{"protocol": "TCP", "port": 25}]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_without_allow_from_the_policy_admits_everyone_on_the_service_ports() -> None:
    rule = children.build(msvc(), {}).network_policy["spec"]["ingress"][0]
    assert "from" not in rule


def test_a_missing_group_fails_closed_in_config_and_policy() -> None:
    built = children.build(msvc(access={"allowFrom": "nowhere"}), {})
    assert built.rendered.service.allow == ()
    rules = built.network_policy["spec"]["ingress"]
    assert len(rules) == 1 and "namespaceSelector" in str(rules[0])


def test_children_carry_owner_references_and_no_argo_tracking_label() -> None:
    for child in children.build(msvc(), {}).all:
        meta = child["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "0d9ad0c5-1111-2222-3333-444455556666"
        assert meta["ownerReferences"][0]["controller"] is True
        assert "app.kubernetes.io/instance" not in meta["labels"]
        assert meta["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY


def test_long_names_are_cut_deterministically_to_63_characters() -> None:
    name = "a" * 63
    assert len(naming.base(name)) <= 63
    assert naming.base(name) == naming.base(name)
    assert naming.base(name) != naming.base("a" * 62 + "b")
    service = naming.address_listener("2001:db8:1234:5678:9abc:def0:1234:5678")
    assert len(service) <= 63 and service[-1].isalnum()
    assert naming.address_listener("2001:db8::").startswith("mailwarden--")


def test_no_two_mailservices_map_to_one_child_name() -> None:
    """`smtp-192-0-2-25` without an address and `smtp` on 192.0.2.25 used to share a
    Service name; a shared listener's names start with a double dash, which no MailService's
    own can (its name starts with a letter or digit)."""
    lonely = children.build(msvc("smtp-192-0-2-25"), {})
    fixed = children.build(msvc("smtp", listen=[{"address": "192.0.2.25"}]), {})
    a = {(c["kind"], c["metadata"]["name"]) for c in lonely.all}
    b = {(c["kind"], c["metadata"]["name"]) for c in fixed.all}
    assert a and b and not a & b


def test_the_per_pod_cap_is_the_service_cap_split_over_replicas() -> None:
    cfg = children.build(msvc(replicas=3, access={"maxConnections": 100}), {}).rendered.service
    assert cfg.max_connections == 33
