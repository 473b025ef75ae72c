"""Every CEL rule of the CRDs, evaluated with cel-python against valid and invalid objects."""

import copy
import re

import pydantic
import pytest

from kubeemu import crdcheck
from mailwarden.listener import catalogue
from mailwarden.operator import crd, models
from tests.support.cel_coverage import EVALUATED

MSVC = crd.mailservice_crd()
IPG = crd.ipaddressgroup_crd()


def msvc(**spec):
    base = {"service": "SMTP", "backend": {"host": "postfix.mail"}}
    return {
        "apiVersion": "mailwarden.io/v1alpha1",
        "kind": "MailService",
        "metadata": {"name": "m"},
        "spec": {**base, **spec},
    }


def ipg(*items):
    return {
        "apiVersion": "mailwarden.io/v1alpha1",
        "kind": "IPAddressGroup",
        "metadata": {"name": "g"},
        "spec": {"items": list(items)},
    }


def errors(crd_, obj, old=None):
    _, found = crdcheck.validate(crd_, obj, old, seen=EVALUATED)
    return found


def test_every_rule_compiles_in_plain_cel():
    for rule in crdcheck.rules(crdcheck.openapi_schema(MSVC)) + crdcheck.rules(
        crdcheck.openapi_schema(IPG)
    ):
        crdcheck._ENV.compile(rule.rule)
        if rule.message_expression:
            crdcheck._ENV.compile(rule.message_expression)
        assert rule.message, "a static message too, for when messageExpression fails"


# -- anonymous ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["NNTP", "NNTPS"])
def test_anonymous_reading_is_accepted_for_nntp_and_nntps(service):
    extra = {"tls": {"secretName": "news-tls"}} if service == "NNTPS" else {}
    assert errors(MSVC, msvc(service=service, access={"anonymous": True}, **extra)) == []


@pytest.mark.parametrize("service", [s for s in catalogue.SERVICE_NAMES if "NNTP" not in s])
def test_anonymous_access_is_refused_for_every_other_service_with_a_message_that_says_so(service):
    obj = msvc(service=service, access={"anonymous": True}, tls={"secretName": "t"})
    assert errors(MSVC, obj) == [
        "spec.access.anonymous: access.anonymous: anonymous access is only allowed for NNTP and "
        "NNTPS, "
        f"not {service}"
    ]
    obj["spec"]["access"]["anonymous"] = False
    assert errors(MSVC, obj) == []


# -- service is immutable -------------------------------------------------------------------


def test_service_cannot_be_changed_on_update():
    old = msvc(service="SMTP")
    new = copy.deepcopy(old)
    new["spec"]["service"] = "Submission"
    assert errors(MSVC, new, old) == [
        "spec.service: service is immutable: create a new MailService for another service"
    ]


def test_an_update_that_keeps_the_service_passes_and_creation_has_no_old_service():
    old = msvc(service="IMAP")
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = 3
    assert errors(MSVC, new, old) == []
    assert errors(MSVC, new) == []


# -- ports and listen duplicates ------------------------------------------------------------


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_ports_outside_1_to_65535_are_refused_by_the_schema(port):
    (error,) = errors(MSVC, msvc(listen=[{"port": port}]))
    assert error.startswith("spec.listen[0].port: ")
    (error,) = errors(MSVC, msvc(backend={"host": "h", "port": port}))
    assert error.startswith("spec.backend.port: ")


@pytest.mark.parametrize("port", [1, 25, 65535])
def test_ports_from_1_to_65535_are_accepted(port):
    assert errors(MSVC, msvc(listen=[{"port": port}], backend={"host": "h", "port": port})) == []


DUPLICATE = (
    "spec.listen: listen: the same address and port is listed twice in this MailService (an absent "
    "port is the service's standard port, an absent address all addresses)"
)


@pytest.mark.parametrize(
    "listen",
    [
        [{"port": 25}, {"port": 25}],
        [{}, {}],
        [{"port": 25}, {}],  # absent port: SMTP's standard port 25
        [{"address": "192.0.2.1"}, {"address": "192.0.2.1", "port": 25}],
        [
            {"address": "192.0.2.1", "port": 2525},
            {"port": 26},
            {"address": "192.0.2.1", "port": 2525},
        ],
    ],
)
def test_the_same_address_and_port_twice_is_refused_counting_the_defaults(listen):
    assert errors(MSVC, msvc(listen=listen)) == [DUPLICATE]


@pytest.mark.parametrize(
    "listen",
    [
        [],
        [{}],
        [{"port": 25}, {"port": 587}],
        [{"port": 26}, {}],  # absent port is 25, not 26
        [{"address": "192.0.2.1"}, {"address": "192.0.2.2"}],
        [{"address": "192.0.2.1", "port": 25}, {"port": 25}],  # one address vs all: distinct
        [{"port": p} for p in range(1000, 1016)],  # maxItems
    ],
)
def test_distinct_address_and_port_pairs_are_accepted(listen):
    assert errors(MSVC, msvc(listen=listen)) == []


def test_the_standard_port_used_for_duplicates_is_the_services_own():
    # 993 is IMAPS's standard port: an absent port and 993 collide for IMAPS, not for IMAP.
    listen = [{"port": 993}, {}]
    assert errors(MSVC, msvc(service="IMAP", listen=listen)) == []
    assert errors(MSVC, msvc(service="IMAPS", listen=listen, tls={"secretName": "t"})) == [
        DUPLICATE
    ]


# -- implicit TLS ---------------------------------------------------------------------------


IMPLICIT = [k.name for k in catalogue.CATALOGUE.values() if k.tls is catalogue.TLSMode.IMPLICIT]


@pytest.mark.parametrize("service", IMPLICIT)
def test_implicit_tls_services_need_a_tls_secret(service):
    assert errors(MSVC, msvc(service=service)) == [
        f"spec.tls: tls: {service} is an implicit-TLS service and needs tls.secretName"
    ]
    assert errors(MSVC, msvc(service=service, tls={"secretName": "mail-tls"})) == []


@pytest.mark.parametrize("service", [s for s in catalogue.SERVICE_NAMES if s not in IMPLICIT])
def test_other_services_run_without_a_tls_secret(service):
    assert errors(MSVC, msvc(service=service)) == []


# -- maxConnections and replicas ------------------------------------------------------------


def cap_error(cap, replicas):
    return (
        f"spec.access.maxConnections: access.maxConnections: {cap} is below replicas "
        f"({replicas}); each replica takes floor(maxConnections / replicas) connections, so use "
        "0 (unlimited) or at least replicas"
    )


@pytest.mark.parametrize(
    ("cap", "replicas"), [(0, 5), (3, 3), (10, 3), (1, 0), (1, None), (5, 1), (None, 100)]
)
def test_max_connections_of_zero_or_at_least_the_replicas_is_accepted(cap, replicas):
    spec = {}
    if cap is not None:
        spec["access"] = {"maxConnections": cap}
    if replicas is not None:
        spec["replicas"] = replicas
    assert errors(MSVC, msvc(**spec)) == []


@pytest.mark.parametrize(("cap", "replicas"), [(1, 2), (2, 3), (99, 100)])
def test_max_connections_below_the_replicas_is_refused(cap, replicas):
    obj = msvc(access={"maxConnections": cap}, replicas=replicas)
    assert errors(MSVC, obj) == [cap_error(cap, replicas)]


def test_scaling_past_max_connections_is_refused_like_any_update():
    old = msvc(access={"maxConnections": 4}, replicas=2)
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = 5
    assert errors(MSVC, new, old) == [cap_error(4, 5)]


# -- IPAddressGroup items -------------------------------------------------------------------

ONE_KIND = "an item must have exactly one of host, network, range or group"


@pytest.mark.parametrize(
    "item",
    [
        {"host": "192.0.2.7"},
        {"network": "198.51.100.0/24", "description": "office"},
        {"range": "203.0.113.10-203.0.113.50"},
        {"group": "vpn"},
        {"host": "2001:db8::1"},
    ],
)
def test_a_group_item_of_exactly_one_kind_is_accepted(item):
    assert errors(IPG, ipg(item)) == []


@pytest.mark.parametrize(
    "item",
    [
        {},
        {"description": "nothing"},
        {"host": "192.0.2.7", "network": "192.0.2.0/24"},
        {"range": "192.0.2.1-192.0.2.9", "group": "vpn"},
        {
            "host": "192.0.2.7",
            "network": "192.0.2.0/24",
            "range": "192.0.2.1-192.0.2.2",
            "group": "x",
        },
    ],
)
def test_a_group_item_with_none_or_several_kinds_is_refused(item):
    assert errors(IPG, ipg({"host": "192.0.2.1"}, item)) == [f"spec.items[1]: {ONE_KIND}"]


# -- rate limit and auto-ban ----------------------------------------------------------------

ABUSE_OK = {
    "rateLimit": {"connectionsPerMinute": 30},
    "autoBan": {"afterFailures": 5, "withinSeconds": 60, "banSeconds": 600, "exemptFrom": "office"},
}


def test_the_issue_example_of_a_rate_limit_and_auto_ban_is_accepted_and_defaulted():
    stored, found = crdcheck.validate(MSVC, msvc(access=ABUSE_OK), seen=EVALUATED)
    assert found == []
    stored, found = crdcheck.validate(
        MSVC, msvc(access={"rateLimit": {}, "autoBan": {}}), seen=EVALUATED
    )
    assert found == []
    assert stored["spec"]["access"]["rateLimit"] == {
        "connectionsPerMinute": 0,
        "ipv6PrefixLength": 64,
    }
    assert stored["spec"]["access"]["autoBan"] == {
        "afterFailures": 5,
        "withinSeconds": 60,
        "banSeconds": 600,
        "ipv6PrefixLength": 64,
    }


@pytest.mark.parametrize(
    ("section", "field", "value", "range_"),
    [
        ("rateLimit", "connectionsPerMinute", -1, "0 to 100000 (0: off)"),
        ("rateLimit", "connectionsPerMinute", 100001, "0 to 100000 (0: off)"),
        ("rateLimit", "ipv6PrefixLength", 15, "16 to 128"),
        ("rateLimit", "ipv6PrefixLength", 129, "16 to 128"),
        ("autoBan", "afterFailures", 0, "1 to 10000"),
        ("autoBan", "afterFailures", 10001, "1 to 10000"),
        ("autoBan", "withinSeconds", 0, "1 to 86400"),
        ("autoBan", "withinSeconds", 86401, "1 to 86400"),
        ("autoBan", "banSeconds", 0, "1 to 2592000"),
        ("autoBan", "banSeconds", 2592001, "1 to 2592000"),
        ("autoBan", "ipv6PrefixLength", 8, "16 to 128"),
    ],
)
def test_abuse_settings_out_of_range_are_refused_naming_the_field_the_value_and_the_range(
    section, field, value, range_
):
    obj = msvc(access={section: {field: value}})
    assert errors(MSVC, obj) == [
        f"spec.access.{section}.{field}: access.{section}.{field}: {value} is out of range; "
        f"use {range_}"
    ]
    # pydantic refuses it with the same words.
    with pytest.raises(pydantic.ValidationError, match=re.escape(f"{value} is out of range")):
        models.MailService.model_validate(obj)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("rateLimit", "connectionsPerMinute", 0),
        ("rateLimit", "connectionsPerMinute", 100000),
        ("rateLimit", "ipv6PrefixLength", 128),
        ("autoBan", "afterFailures", 1),
        ("autoBan", "banSeconds", 2592000),
        ("autoBan", "ipv6PrefixLength", 16),
    ],
)
def test_abuse_settings_at_the_ends_of_their_ranges_are_accepted(section, field, value):
    obj = msvc(access={section: {field: value}})
    assert errors(MSVC, obj) == []
    models.MailService.model_validate(obj)


def test_exempt_from_must_name_a_group():
    (error,) = errors(MSVC, msvc(access={"autoBan": {"exemptFrom": "Not A Name"}}))
    assert error.startswith("spec.access.autoBan.exemptFrom: ")


# -- ports the listener pod uses itself -----------------------------------------------------


def test_the_pod_s_own_metrics_port_is_refused_by_cel_and_the_models_naming_the_field():
    """Port 9090 is the listener pod's /metrics, /healthz and /readyz: a service there would
    make every pod fail to bind and crash-loop."""
    obj = msvc(listen=[{"address": "192.0.2.1", "port": 25}, {"port": 9090}])
    found = errors(MSVC, obj)
    assert found, "the CRD accepted port 9090"
    assert any("spec.listen[1].port" in e and "metrics and health port" in e for e in found)
    with pytest.raises(pydantic.ValidationError) as exc:
        models.MailService.model_validate(obj)
    assert "listen.1.port" in str(exc.value) and "metrics and health port" in str(exc.value)


@pytest.mark.parametrize("port", [25, 443, 1023, 9089, 9091])
def test_other_ports_including_privileged_ones_are_accepted(port):
    # Below 1024 is fine: the pod sets net.ipv4.ip_unprivileged_port_start=0.
    assert errors(MSVC, msvc(listen=[{"port": port}])) == []
