"""The schemas are structural, documented everywhere and bounded (the API server's rules for
CRDs, plus what `kubectl explain` and CEL cost estimation need)."""

import jsonschema
import pytest

from kubeemu import crdcheck
from mailwarden.operator import crd

SCHEMAS = {c["spec"]["names"]["kind"]: crdcheck.openapi_schema(c) for c in crd.crds()}
NODES = [
    pytest.param(node, id=f"{kind}{path or '.'}")
    for kind, schema in SCHEMAS.items()
    for path, node in crdcheck.walk(schema)
]
PROPERTIES = [
    pytest.param(path, node, id=f"{kind}{path}")
    for kind, schema in SCHEMAS.items()
    for path, node in crdcheck.walk(schema)
    if path and not path.endswith(("[]", "{}"))
]
# Free-form Kubernetes objects passed through to the pod template.
PRESERVED = {".spec.resources", ".spec.affinity", ".spec.tolerations[]"}

FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "nullable", "title", "const"}


@pytest.mark.parametrize("node", NODES)
def test_no_node_uses_what_a_structural_schema_forbids_or_pydantic_leftovers(node):
    assert not FORBIDDEN & set(node), sorted(FORBIDDEN & set(node))
    assert node.get("additionalProperties") is not False
    assert not ("properties" in node and "additionalProperties" in node)


@pytest.mark.parametrize("node", NODES)
def test_every_node_has_a_type(node):
    assert node.get("type") in {"object", "array", "string", "integer", "boolean", "number"}


@pytest.mark.parametrize(("path", "node"), PROPERTIES)
def test_every_field_has_a_description_for_kubectl_explain(path, node):
    description = node.get("description", "")
    assert len(description) > 8 and description[0].isupper(), path
    assert "\n" not in description.replace("\n\n", ""), "paragraphs only, no wrapped lines"


@pytest.mark.parametrize("node", NODES)
def test_every_string_list_and_map_is_bounded(node):
    if node in [s["properties"][f] for s in SCHEMAS.values() for f in ("apiVersion", "kind")]:
        return  # the API server's own
    if node["type"] == "string":
        assert "maxLength" in node or "enum" in node or node.get("format") == "date-time"
    if node["type"] == "array":
        assert "maxItems" in node
    if isinstance(node.get("additionalProperties"), dict):
        assert "maxProperties" in node


@pytest.mark.parametrize(
    ("kind", "path", "node"),
    [
        (kind, path, node)
        for kind, schema in SCHEMAS.items()
        for path, node in crdcheck.walk(schema)
        if node.get("x-kubernetes-preserve-unknown-fields")
    ],
)
def test_unknown_fields_are_preserved_only_in_pass_through_kubernetes_objects(kind, path, node):
    assert kind == "MailService" and path in PRESERVED
    assert node["type"] == "object"


@pytest.mark.parametrize("node", NODES)
def test_every_list_declares_its_list_type(node):
    if node["type"] == "array":
        assert node["x-kubernetes-list-type"] in {"atomic", "map", "set"}
        if node["x-kubernetes-list-type"] == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in node["items"]["required"]


@pytest.mark.parametrize(
    ("path", "node"),
    [
        pytest.param(path, node, id=f"{kind}{path}")
        for kind, schema in SCHEMAS.items()
        for path, node in crdcheck.walk(schema)
        if "default" in node
    ],
)
def test_every_default_is_valid_against_its_own_schema_once_defaulted(path, node):
    value = crdcheck.apply_defaults(node, node["default"])
    jsonschema.Draft202012Validator(crdcheck.strict_json_schema(node)).validate(value)


def test_only_optional_fields_have_defaults():
    for schema in SCHEMAS.values():
        for path, node in crdcheck.walk(schema):
            for name in node.get("required", ()):
                assert "default" not in node["properties"][name], f"{path}.{name}"


def test_metadata_restricts_only_the_name():
    for schema in SCHEMAS.values():
        assert set(schema["properties"]["metadata"]["properties"]) == {"name"}


def test_a_mailservice_with_only_the_required_fields_is_defaulted_like_pydantic_does():
    stored, errors = crdcheck.validate(
        crd.mailservice_crd(),
        {
            "apiVersion": "mailwarden.io/v1alpha1",
            "kind": "MailService",
            "metadata": {"name": "smtp"},
            "spec": {"service": "SMTP", "backend": {"host": "postfix"}},
        },
    )
    assert errors == []
    assert stored["spec"] == {
        "service": "SMTP",
        "startup": "Automatic",
        "access": {"anonymous": False, "maxConnections": 0, "maxConnectionsPerAddress": 0},
        "backend": {
            "host": "postfix",
            "proxyProtocol": "None",
            "tls": {"enabled": False, "insecureSkipVerify": False},
        },
        "proxyProtocol": {},
        "replicas": 1,
        # Left to the operator's cluster-wide defaults (crd.OPERATOR_DEFAULTS).
        "expose": {},
        "timeouts": {"handshakeSeconds": 10, "idleSeconds": 600},
        "drainSeconds": 30,
    }
