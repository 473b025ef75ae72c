"""IPAddressGroups: their status, and changes reaching every MailService that uses them,
directly or through nesting, without restarting pods."""

from __future__ import annotations

import time
from typing import Any

from mailwarden.operator import naming
from tests.operator.resources import (
    MW,
    allowed,
    condition,
    group,
    mailservice,
    policy_cidrs,
    ready,
)
from tests.support.operator import Client, eventually


def group_status(kube: Client, ns: str, name: str) -> dict[str, Any]:
    obj = kube.get(MW, "IPAddressGroup", ns, name)
    assert obj is not None and "status" in obj, obj
    return obj


def test_a_group_status_lists_its_minimal_cidrs(kube: Client, ns: str) -> None:
    kube.apply(
        group(
            ns,
            "office",
            {"host": "192.0.2.7"},
            {"network": "192.0.2.0/255.255.255.0"},
            {"range": "198.51.100.0-198.51.100.255"},
            {"network": "2001:db8::/48"},
        )
    )

    def resolved() -> dict[str, Any]:
        obj = group_status(kube, ns, "office")
        assert obj["status"]["cidrs"] == ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/48"]
        return obj

    obj = eventually(resolved)
    assert condition(obj, "Ready")["status"] == "True"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


def test_a_group_change_reaches_the_config_and_policy_without_a_restart(
    kube: Client, ns: str
) -> None:
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}))
    kube.apply(mailservice(ns, "sub", service="Submission", access={"allowFrom": "office"}))
    eventually(lambda: ready(kube, ns, "sub"))
    assert allowed(kube, ns, "sub") == ("192.0.2.0/24",)
    template = kube.get("apps/v1", "Deployment", ns, "mailwarden-sub")["spec"]["template"]  # type: ignore[index]

    start = time.monotonic()
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}, {"host": "203.0.113.9"}))

    def spread() -> None:
        assert allowed(kube, ns, "sub") == ("192.0.2.0/24", "203.0.113.9/32")
        assert policy_cidrs(kube, ns, "sub") == ["192.0.2.0/24", "203.0.113.9/32"]

    eventually(spread)
    assert time.monotonic() - start < 5  # "within seconds"
    after = kube.get("apps/v1", "Deployment", ns, "mailwarden-sub")["spec"]["template"]  # type: ignore[index]
    assert after == template


def test_a_group_change_patches_no_pod(kube: Client, ns: str) -> None:
    """Listener pods follow their ConfigMap through the API (tests/listener/test_kubesource.py
    runs a real listener doing so); the operator never patches a pod for it (no
    `pods: patch` in its RBAC)."""
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}))
    kube.apply(mailservice(ns, "sub", service="Submission", access={"allowFrom": "office"}))
    eventually(lambda: ready(kube, ns, "sub"))
    labels = naming.labels(naming.base("sub"), "sub")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "mailwarden-sub-abc12", "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "listener", "image": "mailwarden:test"}]},
        }
    )
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}, {"host": "203.0.113.9"}))
    eventually(lambda: _allows(kube, ns, "sub", "203.0.113.9/32"))
    pod = kube.get("v1", "Pod", ns, "mailwarden-sub-abc12")
    assert pod is not None and not pod["metadata"].get("annotations")


def _allows(kube: Client, ns: str, name: str, cidr: str) -> None:
    assert cidr in (allowed(kube, ns, name) or ())


def test_a_change_to_a_nested_group_reaches_services_of_the_outer_one(
    kube: Client, ns: str
) -> None:
    kube.apply(group(ns, "vpn", {"network": "10.8.0.0/24"}))
    kube.apply(group(ns, "staff", {"host": "192.0.2.7"}, {"group": "vpn"}))
    kube.apply(mailservice(ns, "imap", service="IMAP", access={"allowFrom": "staff"}))
    kube.apply(mailservice(ns, "pop", service="POP3", access={"allowFrom": "vpn"}))
    eventually(lambda: ready(kube, ns, "imap"))
    eventually(lambda: ready(kube, ns, "pop"))
    assert allowed(kube, ns, "imap") == ("10.8.0.0/24", "192.0.2.7/32")

    kube.apply(group(ns, "vpn", {"network": "10.9.0.0/24"}))

    def spread() -> None:
        assert allowed(kube, ns, "imap") == ("10.9.0.0/24", "192.0.2.7/32")
        assert allowed(kube, ns, "pop") == ("10.9.0.0/24",)
        assert group_status(kube, ns, "staff")["status"]["cidrs"] == ["10.9.0.0/24", "192.0.2.7/32"]

    eventually(spread)


def test_a_cycle_is_reported_and_fails_closed_until_broken(kube: Client, ns: str) -> None:
    kube.apply(group(ns, "a", {"host": "192.0.2.1"}, {"group": "b"}))
    kube.apply(group(ns, "b", {"host": "192.0.2.2"}))
    kube.apply(mailservice(ns, "web", service="HTTP", access={"allowFrom": "a"}))
    eventually(lambda: ready(kube, ns, "web"))

    kube.apply(group(ns, "b", {"host": "192.0.2.2"}, {"group": "a"}))
    obj = eventually(lambda: ready(kube, ns, "web", reason="IPAddressGroupCycle"))
    assert "a -> b -> a" in condition(obj, "Ready")["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    assert allowed(kube, ns, "web") == ()
    assert policy_cidrs(kube, ns, "web") == []

    def group_reports() -> None:
        cond = condition(group_status(kube, ns, "a"), "Ready")
        assert (cond["status"], cond["reason"]) == ("False", "IPAddressGroupCycle")

    eventually(group_reports)

    kube.apply(group(ns, "b", {"host": "192.0.2.2"}))
    eventually(lambda: ready(kube, ns, "web"))
    assert allowed(kube, ns, "web") == ("192.0.2.1/32", "192.0.2.2/32")


def test_a_missing_group_is_reported_and_recovers_when_it_appears(kube: Client, ns: str) -> None:
    """GitOps applies in any order: the MailService first, its group later."""
    kube.apply(mailservice(ns, "smtp", access={"allowFrom": "partners"}))
    obj = eventually(lambda: ready(kube, ns, "smtp", reason="IPAddressGroupNotFound"))
    assert "partners" in condition(obj, "Ready")["message"]
    assert allowed(kube, ns, "smtp") == ()  # fails closed meanwhile

    kube.apply(group(ns, "partners", {"network": "198.51.100.0/24"}))
    eventually(lambda: ready(kube, ns, "smtp"))
    assert allowed(kube, ns, "smtp") == ("198.51.100.0/24",)


def test_an_unknown_nested_group_is_a_condition_of_the_group(kube: Client, ns: str) -> None:
    kube.apply(group(ns, "outer", {"host": "192.0.2.1"}, {"group": "nowhere"}))

    def reported() -> None:
        cond = condition(group_status(kube, ns, "outer"), "Ready")
        assert (cond["status"], cond["reason"]) == ("False", "IPAddressGroupNotFound")
        assert "nowhere" in cond["message"]

    eventually(reported)


def test_deleting_a_group_fails_its_users_closed(kube: Client, ns: str) -> None:
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}))
    kube.apply(
        mailservice(
            ns, "imaps", service="IMAPS", tls={"secretName": "tls"}, access={"allowFrom": "office"}
        )
    )
    eventually(lambda: ready(kube, ns, "imaps"))
    kube.delete(MW, "IPAddressGroup", ns, "office")
    eventually(lambda: ready(kube, ns, "imaps", reason="IPAddressGroupNotFound"))
    assert allowed(kube, ns, "imaps") == ()
