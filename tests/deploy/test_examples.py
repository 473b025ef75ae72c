"""The examples are what a mail administrator would write, and they are valid: mailwarden's own
models read them, the listener configuration renders from them, and (once generated) the
CRD schemas accept them."""

from __future__ import annotations

import ipaddress
import os
import pathlib
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeemu import crdcheck, loadbalancer
from mailwarden.operator import groups, listener_config, manifests, models, naming
from tests.deploy.tools import CRDS, ROOT

KUBERNETES = "1.34"  # the current minor of the official schemas

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def found() -> manifests.Manifests:
    # The top-level files only: examples/demo/ holds the quick-start demo's own manifests.
    return manifests.load(sorted(EXAMPLES.glob("*.yaml")), "mail")


def service(found: manifests.Manifests, name: str) -> models.MailService:
    (msvc,) = [s for s in found.services if s.metadata.name == name]
    return msvc


def test_every_example_is_read_by_mailwarden_s_models(found: manifests.Manifests) -> None:
    assert len(found.services) == 8
    assert {g.metadata.name for g in found.groups} == {"office", "vpn", "internal"}
    assert sorted(o["kind"] for o in found.others) == ["Kustomization", "Namespace"]
    assert all(s.metadata.namespace == "mail" for s in found.services)


def test_office_group_has_hosts_networks_ranges_ipv6_and_the_nested_vpn_group(
    found: manifests.Manifests,
) -> None:
    specs = found.group_specs("mail")
    items = specs["office"].items
    assert {k for i in items for k in ("host", "network", "range", "group") if getattr(i, k)} == {
        "host",
        "network",
        "range",
        "group",
    }
    resolution = groups.resolve("office", specs)
    assert resolution.ok
    assert "10.8.0.0/16" in resolution.cidrs  # from vpn
    assert "2001:db8:42::/48" in resolution.cidrs
    assert resolution.uses == {"office", "vpn"}


def test_smtp_is_the_mx_open_to_everyone_on_port_25(found: manifests.Manifests) -> None:
    smtp = service(found, "smtp")
    assert smtp.spec.service == "SMTP"
    assert smtp.spec.access.allow_from is None
    assert [port for _, port in smtp.spec.endpoints()] == [25]


@pytest.mark.parametrize("name", ["submission", "imaps"])
def test_submission_and_imaps_are_for_the_office_only_with_caps(
    found: manifests.Manifests, name: str
) -> None:
    access = service(found, name).spec.access
    assert access.allow_from == "office"
    assert access.max_connections > 0 and access.max_connections_per_address > 0


def test_nntp_allows_anonymous_reading(found: manifests.Manifests) -> None:
    nntp = service(found, "nntp")
    assert nntp.spec.service == "NNTP" and nntp.spec.access.anonymous


def test_ldaps_is_internal_only(found: manifests.Manifests) -> None:
    ldaps = service(found, "ldaps")
    assert ldaps.spec.service == "LDAPS"
    assert ldaps.spec.access.allow_from == "internal"
    assert ldaps.spec.expose.type == "ClusterIP"
    cidrs = groups.resolve("internal", found.group_specs("mail")).cidrs
    assert all(ipaddress.ip_network(c).is_private for c in cidrs)


def test_two_http_services_share_port_80_on_two_addresses(found: manifests.Manifests) -> None:
    http = [s for s in found.services if s.spec.service == "HTTP"]
    endpoints = [e for s in http for e in s.spec.endpoints()]
    assert [port for _, port in endpoints] == [80, 80]
    assert len({address for address, _ in endpoints}) == 2


def test_one_manual_service_starts_stopped(found: manifests.Manifests) -> None:
    manual = [s for s in found.services if s.spec.startup == "Manual"]
    assert [s.metadata.name for s in manual] == ["pop3s"]
    assert not models.wants_running(manual[0])
    assert all(models.wants_running(s) for s in found.services if s not in manual)


def test_every_example_renders_a_listener_configuration_without_problems(
    found: manifests.Manifests,
) -> None:
    specs = found.group_specs("mail")
    for msvc in found.services:
        rendered = listener_config.service_config(msvc, specs, bind_addresses=False)
        assert not rendered.problems, f"{msvc.metadata.name}: {rendered.problems}"
        if msvc.spec.access.allow_from:
            assert rendered.service.allow


def crds() -> dict[str, dict[str, Any]]:
    files = sorted(CRDS.glob("*.yaml"))
    assert files, "deploy/crds holds no CRDs: run scripts/gen-crds"
    out = {}
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                out[crd["spec"]["names"]["kind"]] = crd
    return out


def example_objects() -> list[dict[str, Any]]:
    out = []
    for path in [*sorted(EXAMPLES.glob("*.yaml")), *sorted(EXAMPLES.glob("one-address/*.yaml"))]:
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def test_every_example_is_accepted_by_its_crd_schema_and_cel_rules() -> None:
    by_kind = crds()
    checked = 0
    for obj in example_objects():
        if obj.get("apiVersion") != models.API_VERSION:
            continue
        _, errors = crdcheck.validate(by_kind[obj["kind"]], obj)
        assert errors == [], f"{obj['kind']} {obj['metadata']['name']}: {errors}"
        checked += 1
    assert checked == 11 + 9  # 3 groups, 8 services; one-address: 1 group, 8 services


def mailwarden_render(*paths: pathlib.Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailwarden.cli",
            "render",
            *(a for p in paths for a in ("-f", str(p))),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAILWARDEN_")},
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize(
    "paths",
    [sorted(EXAMPLES.glob("*.yaml")), [EXAMPLES / "one-address"], [EXAMPLES]],
    ids=["readme-examples", "one-address", "all-examples"],
)
def test_render_shows_one_service_per_fixed_address_and_every_pod_serves_every_port(
    paths: list[pathlib.Path],
) -> None:
    docs = mailwarden_render(*paths)
    services = [d for d in docs if d["kind"] == "Service"]
    fixed = [
        (s["metadata"]["namespace"], s["metadata"]["annotations"][naming.ANNOTATION_ADDRESS])
        for s in services
        if s["metadata"]["annotations"][naming.ANNOTATION_ADDRESS]
    ]
    assert fixed and len(fixed) == len(set(fixed)), fixed
    # What MetalLB (modelled from its sources, kubeemu/loadbalancer.py) makes of them:
    # every Service on a fixed address gets it, and every pod behind it serves every port.
    assigned = loadbalancer.MetalLB().assign(services)
    for s in services:
        key = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
        address = s["metadata"]["annotations"][naming.ANNOTATION_ADDRESS]
        if s["spec"]["type"] == "LoadBalancer" and address:
            assert assigned[key] == [address], (key, loadbalancer.MetalLB().failures)
        s["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in assigned.get(key, [])]}}
    assert loadbalancer.routing_problems(docs) == []
    for doc in docs:
        kubernetes_validate.validate(doc_without_status(doc), KUBERNETES, strict=True)


def test_the_one_address_example_puts_a_whole_mail_host_on_one_service() -> None:
    docs = mailwarden_render(EXAMPLES / "one-address")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert sorted(services) == [
        "mailwarden--198-51-100-25",
        "mailwarden--198-51-100-80",
        "mailwarden--2001-db8-25--25",
    ]
    shared = services["mailwarden--198-51-100-25"]
    # SMTP, webmail's HTTP and HTTPS, Submission, IMAPS, POP3S; IMAP (143) is stopped.
    assert [p["port"] for p in shared["spec"]["ports"]] == [25, 80, 443, 587, 993, 995]
    assert shared["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == "198.51.100.25"
    assert [p["port"] for p in services["mailwarden--198-51-100-80"]["spec"]["ports"]] == [80]
    assert services["mailwarden--2001-db8-25--25"]["spec"]["ipFamilies"] == ["IPv6"]
    config = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mailwarden--198-51-100-25"
    )
    names = sorted(s["name"] for s in yaml.safe_load(config["data"]["listener.yaml"])["services"])
    assert names == [
        f"mailhost/{n}"
        for n in sorted(["smtp", "submission", "imaps", "pop3s", "webmail", "webmail-http"])
    ]


def doc_without_status(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "status"}
