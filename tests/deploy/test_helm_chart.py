"""The Helm chart, checked with the official helm binary and the official Kubernetes schemas."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mailwarden.operator import settings
from tests.deploy.tools import (
    CHART,
    CI_VALUES,
    KUBERNETES_VERSION,
    ROOT,
    by_kind,
    helm,
    one,
    render,
)

# Kinds from the Prometheus Operator: no official schema; checked for their structure below.
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

# What the operator uses, as tests/operator/test_rbac.py derives it by running the operator;
# here the rules' layout is pinned too.
NAMESPACED_RULES = [
    (["mailwarden.io"], ["mailservices"], ["get", "list", "watch"]),
    (["mailwarden.io"], ["ipaddressgroups"], ["list", "watch"]),
    (["mailwarden.io"], ["mailservices/status", "ipaddressgroups/status"], ["patch"]),
    (["mailwarden.io"], ["mailservices/finalizers"], ["update"]),
    ([""], ["configmaps"], ["get", "list", "watch", "create", "patch", "delete"]),
    ([""], ["services"], ["get", "list", "watch", "create", "patch", "delete"]),
    (["apps"], ["deployments"], ["get", "list", "watch", "create", "patch", "delete"]),
    (
        ["networking.k8s.io"],
        ["networkpolicies"],
        ["get", "list", "watch", "create", "patch", "delete"],
    ),
    (["policy"], ["poddisruptionbudgets"], ["get", "list", "watch", "create", "patch", "delete"]),
    # Never `patch` (it would let the operator change any pod's image).
    ([""], ["pods"], ["list", "watch"]),
    ([""], ["serviceaccounts"], ["get", "create", "patch", "delete"]),
    (
        ["rbac.authorization.k8s.io"],
        ["roles", "rolebindings"],
        ["get", "create", "patch", "delete"],
    ),
    ([""], ["events"], ["create"]),
]
CRD_RULE = (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"])
DISCOVERY_RULES = [CRD_RULE]
# Watching listed namespaces, kopf also lists and watches the Namespaces.
DISCOVERY_RULES_NAMESPACED = [([""], ["namespaces"], ["list", "watch"]), CRD_RULE]


def rules(role: dict[str, Any]) -> list[tuple[list[str], list[str], list[str]]]:
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]]


def values_id(path: pathlib.Path) -> str:
    return path.name.removesuffix("-values.yaml")


@pytest.mark.parametrize("values", CI_VALUES, ids=values_id)
def test_chart_passes_helm_lint_strict_with_each_values_file(values: pathlib.Path) -> None:
    proc = helm("lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=values_id)
def test_every_rendered_object_is_valid_against_the_official_kubernetes_schemas(
    values: pathlib.Path,
) -> None:
    objs = render(values)
    assert objs, "the chart rendered nothing"
    for obj in objs:
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if obj["kind"] in PROMETHEUS_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
            assert obj["metadata"]["namespace"] == "mail", where
            assert obj["spec"], where
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from None


def test_operator_runs_as_one_replica_replaced_not_rolled() -> None:
    dep = one(render(), "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mailwarden"]
    assert container["args"][:1] == ["operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--metrics-port=9091" in container["args"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_operator_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_rbac_grants_exact_verbs_with_status_split_and_no_wildcards() -> None:
    objs = render()
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{role['metadata']['name']}: wildcard in {key}"
    assert rules(one(objs, "ClusterRole", "mw-mailwarden")) == NAMESPACED_RULES
    assert rules(one(objs, "ClusterRole", "mw-mailwarden-discovery")) == DISCOVERY_RULES
    assert not by_kind(objs, "Role")
    binding = one(objs, "ClusterRoleBinding", "mw-mailwarden")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mw-mailwarden", "namespace": "mail"}
    ]


def test_watching_listed_namespaces_makes_one_role_each_and_passes_them_to_the_operator() -> None:
    objs = render(sets=("watchNamespaces={mail,mail-staging}",))
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["mail", "mail-staging"]
    assert all(rules(r) == NAMESPACED_RULES for r in roles)
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["mail", "mail-staging"]
    assert all(b["subjects"][0]["namespace"] == "mail" for b in bindings)
    # Only kopf's discovery stays cluster-wide.
    assert [r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")] == [
        "mw-mailwarden-discovery"
    ]
    assert rules(one(objs, "ClusterRole", "mw-mailwarden-discovery")) == (
        DISCOVERY_RULES_NAMESPACED
    )
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=mail",
        "--namespace=mail-staging",
    ]


def test_rbac_and_service_account_can_be_left_to_the_cluster_admin() -> None:
    objs = render(
        sets=("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    )
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "Role", "ServiceAccount")]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"


def listener_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_listener_image_defaults_to_the_listener_image_of_the_same_version() -> None:
    objs = render()
    dep_image = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert dep_image == "mailwarden:0.1.0"
    assert listener_env(objs)["MAILWARDEN_LISTENER_IMAGE"] == "mailwarden-listener:0.1.0"
    # An empty repository: the operator image, which holds the listener too.
    objs = render(sets=("listener.image.repository=",))
    assert listener_env(objs)["MAILWARDEN_LISTENER_IMAGE"] == "mailwarden:0.1.0"


def test_operator_default_listener_image_is_the_chart_s_and_the_dockerfile_s_listener_image() -> (
    None
):
    """Without the chart (`mailwarden render`, a hand-made Deployment) the operator names the
    same listener image the chart passes and the Dockerfile's `listener` target is tagged as."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    operator_default = settings.Settings().image
    assert operator_default == f"mailwarden-listener:{chart['appVersion']}"
    assert settings.Settings.from_env({}).image == operator_default
    assert listener_env(render())["MAILWARDEN_LISTENER_IMAGE"] == operator_default
    listener_stage = (ROOT / "Dockerfile").read_text().split("AS listener", 1)[1]
    assert 'org.opencontainers.image.title="mailwarden-listener"' in listener_stage
    # The chart's value wins over the built-in default.
    env = {"MAILWARDEN_LISTENER_IMAGE": "registry.example.com/mail/mailwarden-listener:0.1.0"}
    assert settings.Settings.from_env(env).image == env["MAILWARDEN_LISTENER_IMAGE"]


def test_listener_image_and_defaults_reach_the_operator_from_values() -> None:
    objs = render(CHART / "ci" / "listener-defaults-values.yaml")
    env = listener_env(objs)
    assert (
        env["MAILWARDEN_LISTENER_IMAGE"]
        == "registry.example.com/mail/mailwarden-listener:0.1.0-debug"
    )
    image = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == (
        "registry.example.com/mail/mailwarden:0.1.0@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    defaults = json.loads(env["MAILWARDEN_LISTENER_DEFAULTS"])
    assert defaults["resources"] == {
        "requests": {"cpu": "200m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    }
    assert defaults["expose"] == {
        "type": "NodePort",
        "externalTrafficPolicy": "Local",
        "annotations": {"metallb.universe.tf/address-pool": "mail"},
        "loadBalancerClass": "example.com/edge-lb",
        "addressRequest": "LoadBalancerIP",
    }
    assert defaults["nodeSelector"] == {"node-role.example.com/edge": "true"}
    assert defaults["tolerations"][0]["key"] == "edge"
    assert defaults["affinity"]["podAntiAffinity"]
    assert defaults["priorityClassName"] == "mail-edge"
    assert defaults["imagePullPolicy"] == "IfNotPresent"
    assert defaults["imagePullSecrets"] == [{"name": "registry-example-com"}]
    assert defaults["podLabels"] == {"team": "mail"}
    assert env["MAILWARDEN_LISTENER_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env["MAILWARDEN_LISTENER_UID"] == "65532"


@pytest.mark.parametrize("values", CI_VALUES, ids=values_id)
def test_the_operator_accepts_the_settings_the_chart_renders(values: pathlib.Path) -> None:
    env = listener_env(render(values))
    config = settings.Settings.from_env(env)  # raises SettingsError on anything it refuses
    assert config.image == env["MAILWARDEN_LISTENER_IMAGE"]
    assert config.image_pull_policy == env["MAILWARDEN_LISTENER_IMAGE_PULL_POLICY"]
    d = config.listener_defaults
    rendered = json.loads(env["MAILWARDEN_LISTENER_DEFAULTS"])
    assert d.expose.type == rendered["expose"]["type"]
    assert d.resources_dict == (rendered["resources"] or None)
    assert d.pull_secrets_list() == rendered["imagePullSecrets"]


def test_changing_listener_defaults_restarts_the_operator_through_a_checksum() -> None:
    a = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    b = one(render(sets=("listener.defaults.expose.type=ClusterIP",)), "Deployment")
    assert (
        a["checksum/listener-defaults"]
        != b["spec"]["template"]["metadata"]["annotations"]["checksum/listener-defaults"]
    )


def test_monitoring_is_off_by_default() -> None:
    objs = render()
    kinds = {o["kind"] for o in objs}
    assert not kinds & PROMETHEUS_KINDS
    assert not [o for o in by_kind(objs, "ConfigMap") if "dashboard" in o["metadata"]["name"]]


def test_monitoring_values_add_monitors_rules_and_a_dashboard_for_the_sidecar() -> None:
    objs = render(CHART / "ci" / "monitoring-values.yaml")
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service", "mw-mailwarden-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mailwarden-listener",
        "app.kubernetes.io/component": "listener",
        "app.kubernetes.io/managed-by": "mailwarden-operator",
    }
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    rule = one(objs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "MailwardenServiceAtConnectionCap",
        "MailwardenOverCapRefusals",
        "MailwardenBackendErrors",
        "MailwardenListenerNotReady",
        "MailwardenOperatorReconcileErrors",
    } <= alerts
    dash = one(objs, "ConfigMap", "mw-mailwarden-dashboard")
    assert dash["metadata"]["namespace"] == "monitoring"
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["mailwarden.json"])["uid"] == "mailwarden-services"
    assert listener_env(objs)["MAILWARDEN_MONITORING_NAMESPACE"] == "prometheus"


def test_pod_monitor_watches_only_the_listed_namespaces_when_the_operator_does() -> None:
    pm = one(render(CHART / "ci" / "watch-namespaces-values.yaml"), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["mail", "mail-staging"]}


def test_notes_tell_how_to_check_a_mailservice_s_conditions() -> None:
    notes = helm("install", "mw", str(CHART), "--dry-run=client", "--namespace", "mail").stdout
    assert "kubectl -n NAMESPACE get msvc NAME" in notes
    assert ".status.conditions" in notes
    assert "--for=condition=Ready" in notes
    assert "mailwarden.io/state=Running" in notes


BAD_VALUES = [
    (("image.pullPolicy=Sometimes",), "/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"),
    (("image.digest=sha256:abc",), "/image/digest", "does not match pattern"),
    (("watchNamespaces={Mail_Prod}",), "/watchNamespaces/0", "does not match pattern"),
    (("crds.keep=maybe",), "/crds/keep", "want boolean"),
    (("operatr.verbose=true",), "additional properties 'operatr' not allowed", ""),
    (("listener.defaults.expose.type=External",), "/listener/defaults/expose/type", "LoadBalancer"),
    (("listener.defaults.resources.limits.memory=lots",), "/listener/defaults/resources", ""),
    (("monitoring.prometheusRule.for=5 minutes",), "/monitoring/prometheusRule/for", "pattern"),
    (("operator.metricsPort=70000",), "/operator/metricsPort", "maximum"),
]


@pytest.mark.parametrize(
    ("sets", "where", "message"), BAD_VALUES, ids=[s[0][0] for s in BAD_VALUES]
)
def test_values_schema_refuses_bad_values_with_a_message_naming_the_field(
    sets: tuple[str, ...], where: str, message: str
) -> None:
    args = ["template", "mw", str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert where in proc.stderr
    assert message in proc.stderr
