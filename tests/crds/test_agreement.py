"""pydantic (what the operator and `mailwarden render` read) and the CRD schema (what the API
server enforces) accept and refuse the same manifests, and default them the same way."""

import copy
import datetime
import pathlib
import re

import jsonschema
import pydantic
import pytest
import yaml

from kubeemu import crdcheck
from mailwarden.listener import catalogue
from mailwarden.operator import crd, models

MSVC = crd.mailservice_crd()
IPG = crd.ipaddressgroup_crd()


def msvc(name="m", **spec):
    base = {"service": "SMTP", "backend": {"host": "postfix.mail"}}
    return {
        "apiVersion": "mailwarden.io/v1alpha1",
        "kind": "MailService",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def ipg(*items):
    return {
        "apiVersion": "mailwarden.io/v1alpha1",
        "kind": "IPAddressGroup",
        "metadata": {"name": "g"},
        "spec": {"items": list(items)},
    }


README_EXAMPLE = msvc(
    name="submission",
    service="Submission",
    startup="Automatic",
    listen=[{"address": "192.0.2.10", "port": 587}],
    access={
        "allowFrom": "office",
        "anonymous": False,
        "maxConnections": 200,
        "maxConnectionsPerAddress": 20,
    },
    backend={
        "host": "postfix.mail.svc.cluster.local",
        "port": 587,
        "proxyProtocol": "V2",
        "tls": {"enabled": False, "insecureSkipVerify": False},
    },
    tls={"secretName": "mail-tls"},
    proxyProtocol={"trustedCIDRs": ["10.0.0.0/8"]},
    timeouts={"handshakeSeconds": 10, "idleSeconds": 600},
    drainSeconds=30,
    replicas=2,
    expose={"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
)
IMPLICIT = {k.name for k in catalogue.CATALOGUE.values() if k.tls is catalogue.TLSMode.IMPLICIT}

VALID = [
    pytest.param(README_EXAMPLE, id="readme"),
    *(
        pytest.param(
            msvc(service=s, **({"tls": {"secretName": "t"}} if s in IMPLICIT else {})), id=s
        )
        for s in catalogue.SERVICE_NAMES
    ),
    pytest.param(msvc(service="NNTP", access={"anonymous": True}), id="nntp-anonymous"),
    pytest.param(
        msvc(
            service="HTTP",
            listen=[
                {"address": "192.0.2.1", "port": 80},
                {"address": "2001:db8::1", "port": 80},
                {"port": 8080},
            ],
        ),
        id="two-addresses-one-port",
    ),
    pytest.param(
        msvc(
            replicas=0,
            access={"maxConnections": 7},
            resources={"requests": {"cpu": "100m", "memory": "64Mi"}},
            nodeSelector={"kubernetes.io/os": "linux"},
            tolerations=[{"key": "mail", "operator": "Exists", "effect": "NoSchedule"}],
            affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
            expose={"type": "NodePort", "annotations": {"lb.example/pool": "mail"}},
        ),
        id="pod-settings",
    ),
    pytest.param(
        ipg(
            {"host": "192.0.2.7", "description": "the boss"},
            {"network": "198.51.100.0/24"},
            {"range": "203.0.113.10-203.0.113.50"},
            {"network": "2001:db8:42::/48"},
            {"group": "vpn"},
        ),
        id="group",
    ),
    pytest.param(ipg(), id="empty-group"),
]
# Valid, but pydantic rewrites them into canonical form (or, for nulls, the API server drops
# them and pydantic reads them as absent).
REWRITTEN = [
    pytest.param(ipg({"network": "198.51.100.0/255.255.255.0"}), id="address/mask"),
    pytest.param(ipg({"range": "203.0.113.10 - 203.0.113.50"}), id="range-with-spaces"),
    pytest.param(msvc(listen=[{"address": "2001:DB8:0::1"}]), id="ipv6-upper-case"),
    pytest.param(msvc(tls=None, listen=[{"address": None, "port": None}]), id="nulls"),
    pytest.param(
        msvc(access={"allowFrom": None}, backend={"host": "h", "port": None}), id="nulls2"
    ),
]

# (manifest, the field both must name)
INVALID = [
    pytest.param(msvc(service="FTP"), "service", id="unknown-service"),
    pytest.param(msvc(access={"anonymous": True}), "access.anonymous", id="anonymous-smtp"),
    pytest.param(msvc(listen=[{"port": 0}]), "listen.port", id="port-0"),
    pytest.param(msvc(listen=[{"port": 65536}]), "listen.port", id="port-65536"),
    pytest.param(msvc(backend={"host": "h", "port": 70000}), "backend.port", id="backend-port"),
    pytest.param(msvc(listen=[{"port": 25}, {}]), "listen", id="duplicate-listen"),
    pytest.param(msvc(listen=[{"port": p} for p in range(17)]), "listen", id="17-listens"),
    pytest.param(msvc(listen=[{"address": "mail.example"}]), "listen.address", id="address"),
    pytest.param(msvc(service="SMTPS"), "tls", id="implicit-tls-without-secret"),
    pytest.param(msvc(tls={"secretName": ""}), "tls.secretName", id="empty-secret"),
    pytest.param(msvc(tls={}), "tls.secretName", id="tls-without-secret"),
    pytest.param(
        msvc(access={"maxConnections": 1}, replicas=2), "access.maxConnections", id="cap<replicas"
    ),
    pytest.param(msvc(access={"maxConnections": -1}), "access.maxConnections", id="cap<0"),
    pytest.param(msvc(access={"allowFrom": "Office!"}), "access.allowFrom", id="group-name"),
    pytest.param(msvc(replicas=101), "replicas", id="replicas>100"),
    pytest.param(msvc(startup="Sometimes"), "startup", id="startup"),
    pytest.param(msvc(backend={"host": ""}), "backend.host", id="empty-backend-host"),
    pytest.param(
        msvc(backend={"host": "h", "proxyProtocol": "V3"}), "backend.proxyProtocol", id="proxy-v3"
    ),
    pytest.param(msvc(timeouts={"idleSeconds": 0}), "timeouts.idleSeconds", id="idle-0"),
    pytest.param(msvc(expose={"type": "Ingress"}), "expose.type", id="expose-type"),
    pytest.param(
        msvc(proxyProtocol={"trustedCIDRs": ["lb"]}),
        "proxyProtocol.trustedCIDRs",
        id="trusted-cidr",
    ),
    pytest.param(msvc(nodeSelector={"zone": "z" * 64}), "nodeSelector", id="label-value"),
    pytest.param(msvc(bogus=1), "bogus", id="unknown-field"),
    pytest.param(msvc(access={"maxConnection": 1}), "maxConnection", id="misspelt-field"),
    pytest.param({**msvc(), "spec": {"service": "SMTP"}}, "backend", id="no-backend"),
    pytest.param(msvc(name="m" * 64), "metadata.name", id="long-name"),
    pytest.param(ipg({"host": "192.0.2.1", "network": "192.0.2.0/24"}), "items", id="two-kinds"),
    pytest.param(ipg({"description": "x"}), "items", id="no-kind"),
    pytest.param(ipg({"host": "example.org"}), "items.host", id="host-name"),
    pytest.param(ipg({"network": "10.0.0.0/8/9"}), "items.network", id="network"),
    pytest.param(ipg({"range": "10.0.0.1"}), "items.range", id="range-without-dash"),
    pytest.param(ipg({"group": "Bad_Name"}), "items.group", id="group-name"),
    pytest.param(ipg({"group": "g", "description": "d" * 257}), "items.description", id="note"),
    pytest.param(ipg(*[{"host": "192.0.2.1"}] * 1025), "items", id="1025-items"),
]


def crd_for(obj):
    return MSVC if obj["kind"] == "MailService" else IPG


def model_for(obj):
    return models.MailService if obj["kind"] == "MailService" else models.IPAddressGroup


def without_indexes(text):
    return re.sub(r"\[\d+\]|\.\d+(?=\.|\s|$)", "", text)


def without_empty(value):
    if isinstance(value, dict):
        pruned = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


def without_operator_defaults(model, dumped):
    """The dump less the fields the operator defaults (crd.OPERATOR_DEFAULTS) where the
    manifest left them out: the API server leaves those absent."""
    if not isinstance(model, pydantic.BaseModel) or not isinstance(dumped, dict):
        return dumped
    out = dict(dumped)
    for name, field in type(model).model_fields.items():
        alias = field.alias or name
        if alias not in out:
            continue
        if (type(model).__name__, alias) in crd.OPERATOR_DEFAULTS:
            if name not in model.model_fields_set:
                del out[alias]
            continue
        out[alias] = without_operator_defaults(getattr(model, name), out[alias])
    return out


@pytest.mark.parametrize("obj", VALID)
def test_both_accept_a_valid_manifest_and_default_it_the_same_way(obj):
    stored, errors = crdcheck.validate(crd_for(obj), obj)
    assert errors == []
    parsed = model_for(obj).model_validate(copy.deepcopy(obj))
    dumped = parsed.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    dumped = without_operator_defaults(parsed.spec, dumped)
    # The API server leaves absent lists and maps absent where pydantic fills in empty ones.
    assert without_empty(stored["spec"]) == without_empty(dumped)
    assert model_for(obj).model_validate(stored) == parsed


@pytest.mark.parametrize("obj", REWRITTEN)
def test_both_accept_manifests_pydantic_rewrites_and_defaulting_keeps_their_meaning(obj):
    stored, errors = crdcheck.validate(crd_for(obj), obj)
    assert errors == []
    model = model_for(obj)
    assert model.model_validate(stored) == model.model_validate(copy.deepcopy(obj))


@pytest.mark.parametrize(("obj", "field"), INVALID)
def test_both_refuse_an_invalid_manifest_naming_the_field(obj, field):
    _, errors = crdcheck.validate(crd_for(obj), obj)
    assert errors, "the CRD accepts it"
    with pytest.raises(pydantic.ValidationError) as refused:
        model_for(obj).model_validate(copy.deepcopy(obj))
    for where, text in (("CRD", "\n".join(errors)), ("pydantic", str(refused.value))):
        text = without_indexes(text)
        for part in field.split("."):
            assert part in text, f"{where} does not name {field}: {text}"


# What plain CEL and patterns cannot check: the API server stores these and the operator
# refuses them (a Stalled condition). Listed so that the gap stays known and small.
OPERATOR_ONLY = [
    pytest.param(msvc(listen=[{"address": "999.1.1.1"}]), id="address-out-of-range"),
    pytest.param(
        msvc(listen=[{"address": "2001:db8::1"}, {"address": "2001:DB8::1"}]),
        id="same-address-spelt-twice",
    ),
    pytest.param(ipg({"network": "10.0.0.0/33"}), id="prefix-too-long"),
    pytest.param(ipg({"range": "10.0.0.9-10.0.0.1"}), id="range-backwards"),
    pytest.param(ipg({"range": "10.0.0.1-::1"}), id="range-mixing-families"),
]


@pytest.mark.parametrize("obj", OPERATOR_ONLY)
def test_address_details_beyond_the_schemas_reach_are_refused_by_the_models(obj):
    _, errors = crdcheck.validate(crd_for(obj), obj)
    assert errors == []
    with pytest.raises(pydantic.ValidationError):
        model_for(obj).model_validate(copy.deepcopy(obj))


def readme_examples():
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    return [d for b in blocks for d in yaml.safe_load_all(b) if d and "kind" in d]


def test_the_readme_examples_of_both_kinds_are_accepted_by_both():
    examples = readme_examples()
    assert {e["kind"] for e in examples} >= {"MailService", "IPAddressGroup"}
    for obj in examples:
        if obj["kind"] not in ("MailService", "IPAddressGroup"):
            continue
        _, errors = crdcheck.validate(crd_for(obj), obj)
        assert errors == [], obj["metadata"]
        model_for(obj).model_validate(copy.deepcopy(obj))


def test_a_status_built_with_the_status_models_passes_the_crd_status_schema():
    when = datetime.datetime(2026, 11, 28, 8, 0, tzinfo=datetime.UTC)
    ready = models.Condition(
        type="Ready",
        status="False",
        reason="ListenConflict",
        message="192.0.2.1:25 is taken by mail/smtp",
        last_transition_time=when,
        observed_generation=3,
    )
    statuses = [
        (
            MSVC,
            models.MailServiceStatus(
                observed_generation=3,
                conditions=[ready],
                state="Starting",
                last_state_change=when,
                endpoints=["192.0.2.1:25", "[2001:db8::1]:25", "*:587"],
                effective_max_connections_per_pod=50,
                replicas=2,
                selector="app.kubernetes.io/name=mailwarden,app.kubernetes.io/instance=smtp",
            ),
        ),
        (
            IPG,
            models.IPAddressGroupStatus(
                observed_generation=1, conditions=[ready], cidrs=["192.0.2.0/24", "2001:db8::/32"]
            ),
        ),
    ]
    for crd_, status in statuses:
        dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
        schema = crdcheck.strict_json_schema(crdcheck.openapi_schema(crd_)["properties"]["status"])
        jsonschema.Draft202012Validator(schema).validate(dumped)
        # RFC 3339, as metav1.Time serialises.
        assert dumped["conditions"][0]["lastTransitionTime"] == "2026-11-28T08:00:00Z"


def test_a_condition_without_a_reason_is_refused_by_the_crd_status_schema():
    schema = crdcheck.strict_json_schema(crdcheck.openapi_schema(MSVC)["properties"]["status"])
    condition = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T08:00:00Z"}
    with pytest.raises(jsonschema.ValidationError, match="reason"):
        jsonschema.Draft202012Validator(schema).validate({"conditions": [condition]})
