"""deploy/crds is what the models generate, and the CRDs are valid Kubernetes objects."""

import pathlib
import re

import kubernetes_validate
import pytest
import yaml

from mailwarden.operator import crd

CRD_DIR = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "crds"
# The oldest minor the project supports and the newest the installed schemas know.
KUBERNETES_VERSIONS = ["1.34.0", kubernetes_validate.latest_version()]


def test_the_checked_in_crds_are_exactly_what_the_models_generate():
    expected = crd.rendered()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), "run scripts/gen-crds"
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} is out of date: run scripts/gen-crds"


def test_the_check_command_passes_on_the_checked_in_files_and_fails_on_a_stale_one(
    tmp_path, capsys
):
    assert crd.main(["--check", str(CRD_DIR)]) == 0
    assert crd.main(["--write", str(tmp_path)]) == 0
    stale = tmp_path / "mailwarden.io_mailservices.yaml"
    stale.write_text(stale.read_text().replace("maxItems: 16", "maxItems: 17"))
    assert crd.main(["--check", str(tmp_path)]) == 1
    assert "mailwarden.io_mailservices.yaml" in capsys.readouterr().err


def test_the_generator_is_deterministic():
    assert crd.rendered() == crd.rendered()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name", ["mailwarden.io_mailservices.yaml", "mailwarden.io_ipaddressgroups.yaml"]
)
def test_each_crd_is_valid_against_the_official_kubernetes_schema(name, version):
    document = yaml.safe_load((CRD_DIR / name).read_text(encoding="utf-8"))
    assert kubernetes_validate.validate(document, version, strict=True)


def test_a_broken_crd_is_refused_by_the_official_schema():
    document = crd.mailservice_crd()
    document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "maxItem"
    ] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="maxItem"):
        kubernetes_validate.validate(document, "1.34.0", strict=True)


def test_names_short_names_categories_and_subresources():
    msvc, ipg = crd.crds()
    assert msvc["metadata"]["name"] == "mailservices.mailwarden.io"
    assert msvc["spec"]["scope"] == ipg["spec"]["scope"] == "Namespaced"
    assert msvc["spec"]["names"]["shortNames"] == ["msvc"]
    assert ipg["spec"]["names"]["shortNames"] == ["ipg"]
    assert (
        msvc["spec"]["names"]["categories"] == ipg["spec"]["names"]["categories"] == ["mailwarden"]
    )
    (version,) = msvc["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    assert ipg["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_printer_columns_show_service_startup_state_address_endpoints_ready_active_refused_age():
    (version,) = crd.mailservice_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"] if "priority" not in c}
    assert list(columns) == [
        "Service",
        "Startup",
        "State",
        "Address",
        "Endpoints",
        "Ready",
        "Active",
        "Refused",
        "Age",
    ]
    assert columns["Address"]["jsonPath"] == ".status.address"
    assert columns["Active"]["jsonPath"] == ".status.connections.active"
    assert columns["Refused"]["jsonPath"] == ".status.connections.refused"
    assert columns["Active"]["type"] == columns["Refused"]["type"] == "integer"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": "Time since creation.",
    }
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        assert _field_exists(schema, column["jsonPath"]), column


def test_every_group_printer_column_points_at_a_field_of_the_schema():
    (version,) = crd.ipaddressgroup_crd()["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        assert _field_exists(version["schema"]["openAPIV3Schema"], column["jsonPath"]), column


def _field_exists(schema, json_path):
    if json_path == ".metadata.creationTimestamp":
        return True  # ObjectMeta, not part of the CRD's schema
    # `.status.conditions[?(@.type=="Ready")].status`: into the list items, then the field.
    parts = re.sub(r"\[\?\(.*?\)\]", ".[]", json_path).strip(".").split(".")
    node = schema
    for part in parts:
        node = node["items"] if part == "[]" else node.get("properties", {}).get(part)
        if node is None:
            return False
    return True


def test_status_fields_are_the_ones_the_operator_writes():
    status = crd.mailservice_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["status"]
    assert sorted(status["properties"]) == sorted(
        [
            "observedGeneration",
            "conditions",
            "state",
            "lastStateChange",
            "endpoints",
            "address",
            "listeners",
            "effectiveMaxConnectionsPerPod",
            "replicas",
            "selector",
            "connections",
        ]
    )
    assert sorted(status["properties"]["connections"]["properties"]) == sorted(
        [
            "active",
            "refused",
            "denied",
            "overCap",
            "overAddressCap",
            "rateLimited",
            "banned",
            "backendDown",
            "bannedAddresses",
            "observedAt",
        ]
    )
    assert status["properties"]["state"]["enum"] == ["Running", "Stopped", "Starting"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert sorted(conditions["items"]["properties"]) == sorted(
        ["type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"]
    )
    group_status = crd.ipaddressgroup_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["status"]
    assert sorted(group_status["properties"]) == ["cidrs", "conditions", "observedGeneration"]
