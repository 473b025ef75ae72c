"""The kind setup, checked without a cluster: the cluster config, the demo overlay of the
examples and the scripts agree with each other and with the operator's labels."""

from __future__ import annotations

import pathlib
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mailwarden.operator import manifests, models
from tests.deploy.tools import KUBERNETES_VERSION, ROOT, binary, render
from tests.kind import test_e2e_cluster
from tests.support import crdcheck

KIND_CONFIG = ROOT / "kind-config.yaml"
OVERLAY = ROOT / "deploy" / "kind"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return dict(yaml.safe_load(KIND_CONFIG.read_text()))


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(binary("kubectl")), "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def parsed(overlay: list[dict[str, Any]], tmp_path: pathlib.Path) -> manifests.Manifests:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump_all(overlay))
    return manifests.load([path], "mail")


def test_kind_node_image_is_pinned_by_digest_and_kindnet_is_replaced(
    config: dict[str, Any],
) -> None:
    (node,) = config["nodes"]
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
    assert config["networking"]["disableDefaultCNI"] is True
    demo = (ROOT / "scripts" / "kind-demo").read_text()
    assert "calico" in demo.lower() and "kind-config.yaml" in demo


def test_every_demo_nodeport_is_mapped_to_the_host_port_the_e2e_tests_use(
    config: dict[str, Any], overlay: list[dict[str, Any]]
) -> None:
    mappings = {m["containerPort"]: m["hostPort"] for m in config["nodes"][0]["extraPortMappings"]}
    nodeports = [
        o for o in overlay if o["kind"] == "Service" and o["spec"].get("type") == "NodePort"
    ]
    assert len(nodeports) == 7
    for svc in nodeports:
        (port,) = svc["spec"]["ports"]
        assert port["nodePort"] in mappings, f"{svc['metadata']['name']}: nodePort not mapped"
        assert svc["spec"]["externalTrafficPolicy"] == "Local"
        msvc = svc["spec"]["selector"]["mailwarden.io/mailservice"]
        if msvc in test_e2e_cluster.PORTS:
            assert mappings[port["nodePort"]] == test_e2e_cluster.PORTS[msvc]


def test_demo_nodeports_select_listener_pods_of_existing_mail_services_on_their_ports(
    overlay: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    found = parsed(overlay, tmp_path)
    services = {s.metadata.name: s for s in found.services}
    for svc in (
        o for o in overlay if o["kind"] == "Service" and o["spec"].get("type") == "NodePort"
    ):
        selector = svc["spec"]["selector"]
        assert selector["app.kubernetes.io/name"] == "mailwarden-listener"
        msvc = services[selector["mailwarden.io/mailservice"]]
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] in [p for _, p in msvc.spec.endpoints()]


def test_demo_overlay_points_every_service_at_a_backend_that_exists_without_proxy_headers(
    overlay: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    found = parsed(overlay, tmp_path)
    backends = {
        (o["metadata"]["name"], p["port"])
        for o in overlay
        if o["kind"] == "Service" and o["spec"].get("type", "ClusterIP") == "ClusterIP"
        for p in o["spec"]["ports"]
    }
    for msvc in found.services:
        backend = msvc.spec.backend
        assert backend.proxy_protocol == "None", msvc.metadata.name
        assert msvc.spec.expose.type == "ClusterIP"
        host = backend.host.removesuffix(".mail.svc.cluster.local")
        if msvc.spec.service != "NNTP":  # no news server image: the demo shows "400"
            assert (host, backend.port) in backends, (
                f"{msvc.metadata.name}: no {host}:{backend.port}"
            )


def test_demo_overlay_objects_are_valid_kubernetes_objects(overlay: list[dict[str, Any]]) -> None:
    crds = {}
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    for obj in overlay:
        if obj["apiVersion"] == models.API_VERSION:
            _, errors = crdcheck.validate(crds[obj["kind"]], obj)
            assert errors == [], f"{obj['kind']} {obj['metadata']['name']}: {errors}"
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("script", ["kind-demo", "kind-e2e", "fetch-k8s-tools", "sync-chart-crds"])
def test_scripts_are_valid_bash(script: str) -> None:
    path = ROOT / "scripts" / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_kind_e2e_runs_the_kind_marked_tests_against_the_demo_context() -> None:
    text = (ROOT / "scripts" / "kind-e2e").read_text()
    assert "-m kind" in text and "MAILWARDEN_KIND_CONTEXT" in text


def test_the_demo_s_helm_settings_pass_the_chart_s_schema() -> None:
    demo = (ROOT / "scripts" / "kind-demo").read_text()
    sets = re.findall(r"--set ([\w.]+)=", demo)
    assert "listener.image.repository" in sets
    values = {
        "image.repository": "mailwarden",
        "image.tag": "0.1.0",
        "listener.image.repository": "mailwarden-listener",
        "listener.image.tag": "0.1.0",
        "image.pullPolicy": "IfNotPresent",
    }
    assert set(sets) == set(values)
    objs = render(sets=tuple(f"{k}={v}" for k, v in values.items()))
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mailwarden:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILWARDEN_LISTENER_IMAGE"] == "mailwarden-listener:0.1.0"
