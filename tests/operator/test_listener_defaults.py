"""Cluster-wide defaults for listener pods and Services (the chart's `listener.defaults`, passed
as MAILWARDEN_LISTENER_DEFAULTS): read and checked at start-up, applied to what a MailService
leaves out, never over what it says."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeemu.emulator import EmulatorThread
from mailwarden.operator import children, conflicts, models, naming, reconcile, settings
from tests.deploy.tools import CHART
from tests.operator.resources import MW, mailservice, ready
from tests.support.operator import Client, OperatorThread, eventually

KUBERNETES = "1.34"
# Of the shape the chart renders into MAILWARDEN_LISTENER_DEFAULTS (as for its
# ci/listener-defaults-values.yaml, plus pod annotations and another pull policy).
CHART_DEFAULTS: dict[str, Any] = {
    "resources": {
        "requests": {"cpu": "200m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    },
    "nodeSelector": {"node-role.example.com/edge": "true"},
    "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/component": "listener"}
                        },
                    },
                }
            ]
        }
    },
    "priorityClassName": "mail-edge",
    "podAnnotations": {"example.com/owner": "mail-team"},
    "podLabels": {"team": "mail"},
    "expose": {
        "type": "NodePort",
        "externalTrafficPolicy": "Local",
        "annotations": {"metallb.universe.tf/address-pool": "mail"},
    },
    "imagePullPolicy": "Always",
    "imagePullSecrets": [{"name": "registry-example-com"}],
}


def config(defaults: dict[str, Any] | None = None, **env: str) -> settings.Settings:
    return settings.Settings.from_env(
        {"MAILWARDEN_LISTENER_DEFAULTS": json.dumps(defaults or CHART_DEFAULTS), **env}
    )


def parse(**spec: Any) -> models.MailService:
    obj = mailservice("mail", spec.pop("name", "smtp"), **spec)
    obj["metadata"]["uid"] = "5f0c1a2b-0000-4000-8000-000000000001"
    return models.MailService.model_validate(obj)


def pod(built: children.Children) -> dict[str, Any]:
    return built.deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_a_mailservice_that_says_nothing_gets_every_default() -> None:
    built = children.build(parse(), {}, settings=config())
    spec = pod(built)
    (container,) = spec["containers"]
    assert container["resources"] == CHART_DEFAULTS["resources"]
    assert container["imagePullPolicy"] == "Always"
    assert spec["nodeSelector"] == CHART_DEFAULTS["nodeSelector"]
    assert spec["tolerations"] == CHART_DEFAULTS["tolerations"]
    assert spec["affinity"] == CHART_DEFAULTS["affinity"]
    assert spec["priorityClassName"] == "mail-edge"
    assert spec["imagePullSecrets"] == [{"name": "registry-example-com"}]
    template = built.deployment["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "mail"
    assert template["annotations"]["example.com/owner"] == "mail-team"
    (svc,) = built.services
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["metadata"]["annotations"]["metallb.universe.tf/address-pool"] == "mail"


def test_what_the_mailservice_says_wins_even_when_it_says_the_built_in_default() -> None:
    own_resources = {"requests": {"cpu": "10m"}}
    msvc = parse(
        expose={
            "type": "LoadBalancer",  # the built-in default, said on purpose
            "externalTrafficPolicy": "Cluster",
            "annotations": {"metallb.universe.tf/address-pool": "dmz", "x.example.com/y": "z"},
        },
        resources=own_resources,
        nodeSelector={},  # {} clears the default
        tolerations=[],
        affinity={"nodeAffinity": {}},
    )
    built = children.build(msvc, {}, settings=config())
    spec = pod(built)
    assert spec["containers"][0]["resources"] == own_resources
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert spec["affinity"] == {"nodeAffinity": {}}
    (svc,) = built.services
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Cluster"
    # Annotations merge key by key, the MailService's winning.
    assert svc["metadata"]["annotations"]["metallb.universe.tf/address-pool"] == "dmz"
    assert svc["metadata"]["annotations"]["x.example.com/y"] == "z"


def test_only_the_expose_fields_written_in_the_spec_count_as_said() -> None:
    said_type = parse(expose={"type": "ClusterIP"})
    merged = children.with_defaults(said_type, config().listener_defaults)
    assert merged.spec.expose.type == "ClusterIP"
    # Not written: the cluster default, not the model's built-in Local/LoadBalancer.
    defaults = dict(CHART_DEFAULTS, expose={"type": "NodePort", "externalTrafficPolicy": "Cluster"})
    merged = children.with_defaults(
        parse(expose={"type": "NodePort"}), config(defaults).listener_defaults
    )
    assert merged.spec.expose.external_traffic_policy == "Cluster"


def test_applying_the_defaults_twice_changes_nothing() -> None:
    d = config().listener_defaults
    for msvc in (parse(), parse(expose={"type": "LoadBalancer", "annotations": {"a": "b"}})):
        once = children.with_defaults(msvc, d)
        assert children.with_defaults(once, d) == once
        assert (
            children.build(once, {}, settings=config()).all
            == children.build(msvc, {}, settings=config()).all
        )


def test_the_operator_s_own_labels_and_annotations_win_over_the_defaults() -> None:
    defaults = dict(
        CHART_DEFAULTS,
        podAnnotations={"kubectl.kubernetes.io/default-container": "sidecar"},
    )
    built = children.build(parse(), {}, settings=config(defaults))
    template = built.deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["kubectl.kubernetes.io/default-container"] == naming.CONTAINER
    selector = built.deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["labels"].items()


def test_with_defaults_every_child_validates_against_the_official_schemas() -> None:
    for msvc in (
        parse(),
        parse(
            name="imaps",
            service="IMAPS",
            tls={"secretName": "t"},
            listen=[{"address": "192.0.2.7"}],
        ),
        parse(name="pop3", service="POP3", expose={"type": "ClusterIP"}, resources={}),
    ):
        for child in children.build(msvc, {}, settings=config()).all:
            kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_a_clusterip_default_means_fixed_addresses_claim_nothing() -> None:
    d = settings.ListenerDefaults.model_validate({"expose": {"type": "ClusterIP"}})
    first = parse(name="a", listen=[{"address": "192.0.2.1"}])
    second = parse(name="b", listen=[{"address": "192.0.2.1"}], expose={"type": "NodePort"})
    assert conflicts.claims(children.with_defaults(first, d).spec) == frozenset()
    assert conflicts.claims(children.with_defaults(second, d).spec) == {("192.0.2.1", 25)}


def test_without_the_variable_the_built_in_defaults_change_nothing() -> None:
    plain = children.build(parse(), {}, settings=settings.Settings())
    from_env = children.build(parse(), {}, settings=settings.Settings.from_env({}))
    assert plain.all == from_env.all
    assert plain.services[0]["spec"]["type"] == "LoadBalancer"
    # Never unbounded, even without the chart (checkov CKV_K8S_10/12/13): the built-in
    # requests and memory limit, the same as the chart's listener.defaults.resources.
    assert pod(plain)["containers"][0]["resources"] == settings.DEFAULT_RESOURCES
    assert "priorityClassName" not in pod(plain)
    none = settings.Settings(
        listener_defaults=settings.ListenerDefaults.model_validate({"resources": {}})
    )
    assert "resources" not in pod(children.build(parse(), {}, settings=none))["containers"][0]


def test_the_built_in_listener_resources_are_the_chart_s_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["listener"]["defaults"]["resources"] == settings.DEFAULT_RESOURCES


BAD = [
    ("{not json", "not JSON"),
    ('{"expose": {"type": "External"}}', "expose.type"),
    ('{"resources": {"limits": {"memory": "lots"}}}', "resources.limits"),
    ('{"nodeSelectr": {}}', "nodeSelectr"),
    ('{"podLabels": {"app.kubernetes.io/name": "x"}}', "set by the operator"),
    ('{"podLabels": {"team": "not a value!"}}', "not a valid label value"),
    ('{"tolerations": [{"operator": "Sometimes"}]}', "tolerations.0.operator"),
    ('{"affinity": {"nodeAfinity": {}}}', "unknown affinity nodeAfinity"),
    ('{"imagePullSecrets": [{}]}', "imagePullSecrets.0.name"),
    ('{"imagePullPolicy": "Sometimes"}', "imagePullPolicy"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_defaults_value_is_refused_naming_the_variable_and_the_field(
    text: str, message: str
) -> None:
    with pytest.raises(settings.SettingsError) as refused:
        settings.Settings.from_env({"MAILWARDEN_LISTENER_DEFAULTS": text})
    assert str(refused.value).startswith("MAILWARDEN_LISTENER_DEFAULTS: ")
    assert message in str(refused.value)


def test_other_bad_settings_are_refused_naming_the_variable() -> None:
    with pytest.raises(settings.SettingsError, match="MAILWARDEN_LISTENER_UID"):
        settings.Settings.from_env({"MAILWARDEN_LISTENER_UID": "root"})
    with pytest.raises(settings.SettingsError, match="MAILWARDEN_LISTENER_IMAGE_PULL_POLICY"):
        settings.Settings.from_env({"MAILWARDEN_LISTENER_IMAGE_PULL_POLICY": "Sometimes"})


def test_the_pull_policy_variable_wins_over_the_one_in_the_defaults() -> None:
    assert config().image_pull_policy == "Always"
    assert config(MAILWARDEN_LISTENER_IMAGE_PULL_POLICY="Never").image_pull_policy == "Never"


def test_the_operator_command_refuses_bad_defaults_before_it_connects() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "MAILWARDEN_LISTENER_DEFAULTS": '{"expose": {"type": "External"}}',
        # Nowhere to connect to: the refusal must come first.
        "KUBECONFIG": os.devnull,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli", "operator", "--metrics-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "mailwarden operator: MAILWARDEN_LISTENER_DEFAULTS: expose.type" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- through the operator and the emulator (the CRD leaves expose.type absent) -------------


@pytest.fixture(scope="module")
def operator(emulator: EmulatorThread) -> Iterator[OperatorThread]:
    op = OperatorThread(
        emulator.url,
        settings.Settings(
            image="mailwarden-listener:test",
            listener_defaults=config().listener_defaults,
            backend_probe_seconds=0,  # postfix.mail.svc is made up
        ),
    ).start()
    yield op
    op.stop()


def test_the_operator_gives_a_stored_mailservice_the_cluster_defaults(
    kube: Client, ns: str
) -> None:
    kube.apply(mailservice(ns, "smtp"))
    kube.apply(mailservice(ns, "imap", service="IMAP", expose={"type": "LoadBalancer"}))
    eventually(lambda: ready(kube, ns, "smtp"))
    eventually(lambda: ready(kube, ns, "imap"))
    stored = kube.get(MW, "MailService", ns, "smtp")
    assert stored is not None and "type" not in stored["spec"]["expose"]
    smtp = kube.get("v1", "Service", ns, naming.base("smtp"))
    imap = kube.get("v1", "Service", ns, naming.base("imap"))
    assert smtp is not None and imap is not None
    assert smtp["spec"]["type"] == "NodePort"
    assert imap["spec"]["type"] == "LoadBalancer"
    dep = kube.get("apps/v1", "Deployment", ns, naming.base("smtp"))
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["priorityClassName"] == "mail-edge"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "mailwarden-listener:test"


def test_world_claimants_apply_the_defaults() -> None:
    body = mailservice("mail", "a", listen=[{"address": "192.0.2.1"}])
    body["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    world = reconcile.World(services={("mail", "a"): body}, groups={})
    clusterip = settings.ListenerDefaults.model_validate({"expose": {"type": "ClusterIP"}})
    assert [c.claims for c in world.claimants()] == [{("192.0.2.1", 25)}]
    assert [c.claims for c in world.claimants(clusterip)] == [frozenset()]


def test_render_applies_the_defaults_from_the_environment_and_refuses_bad_ones(
    tmp_path: pathlib.Path,
) -> None:
    manifest = tmp_path / "smtp.yaml"
    manifest.write_text(yaml.safe_dump(mailservice("mail", "smtp")))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "MAILWARDEN_LISTENER_DEFAULTS": json.dumps(CHART_DEFAULTS),
    }
    run = [sys.executable, "-m", "mailwarden.cli", "render", "-f", str(manifest)]
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(proc.stdout) if d}
    assert docs["Service"]["spec"]["type"] == "NodePort"
    assert docs["Deployment"]["spec"]["template"]["spec"]["priorityClassName"] == "mail-edge"
    env["MAILWARDEN_LISTENER_DEFAULTS"] = '{"tolerations": "all"}'
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mailwarden render: MAILWARDEN_LISTENER_DEFAULTS: tolerations")
    assert proc.stdout == ""
