"""The operator against the emulator: a MailService's children, status and events through
create, update and delete."""

from __future__ import annotations

from typing import Any

from mailwarden.operator import metrics
from tests.operator.resources import (
    MW,
    condition,
    events_include,
    listener_config,
    mailservice,
    ready,
)
from tests.support.operator import Client, eventually


def test_a_new_mailservice_gets_its_children_and_becomes_ready(kube: Client, ns: str) -> None:
    created = kube.apply(
        mailservice(
            ns,
            "smtp",
            listen=[{"address": "192.0.2.25"}],
            access={"maxConnections": 100},
            replicas=2,
        )
    )
    obj = eventually(lambda: ready(kube, ns, "smtp"))
    status = obj["status"]
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["state"] == "Running"
    assert status["effectiveMaxConnectionsPerPod"] == 50
    assert status["endpoints"] == ["192.0.2.25:25"]
    assert condition(obj, "Reconciling")["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "False"

    # The listener of the address (shared with any other MailService on it): every
    # MailService on it an owner, none the controller.
    deployment = kube.get("apps/v1", "Deployment", ns, "mailwarden--192-0-2-25")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "MailService",
        "smtp",
        created["metadata"]["uid"],
        False,
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["mailwarden.io/listener"] == "mailwarden--192-0-2-25"
    svc = kube.get("v1", "Service", ns, "mailwarden--192-0-2-25")
    assert svc is not None
    assert svc["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == "192.0.2.25"
    assert svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.25"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert obj["status"]["address"] == "192.0.2.25"
    np = kube.get("networking.k8s.io/v1", "NetworkPolicy", ns, "mailwarden--192-0-2-25")
    assert np is not None
    budget = kube.get("policy/v1", "PodDisruptionBudget", ns, "mailwarden--192-0-2-25")
    assert budget is not None and budget["spec"]["maxUnavailable"] == 1
    assert listener_config(kube, ns, "smtp").services[0].max_connections == 50
    eventually(lambda: events_include(kube, ns, "smtp", {"Created", "Running"}))


def test_reconciling_again_writes_nothing(kube: Client, ns: str, emulator: Any) -> None:
    kube.apply(mailservice(ns, "imap", service="IMAP"))
    eventually(lambda: ready(kube, ns, "imap"))
    before = {
        kind: kube.get(api, kind, ns, "mailwarden-imap")["metadata"]["resourceVersion"]  # type: ignore[index]
        for api, kind in [
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
        ]
    }
    # A label change is a change: a full reconcile (counted by the operator's metrics; the
    # operator runs in this process).
    done = _reconciles()
    kube.patch(MW, "MailService", ns, "imap", {"metadata": {"labels": {"team": "mail"}}})
    eventually(lambda: _more(_reconciles(), done))
    after = {
        kind: kube.get(api, kind, ns, "mailwarden-imap")["metadata"]["resourceVersion"]  # type: ignore[index]
        for api, kind in [
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
        ]
    }
    assert after == before


def _reconciles() -> float:
    return sum(
        sample.value
        for metric in metrics.RECONCILES.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("kind") == "MailService"
    )


def _more(now: float, before: float) -> None:
    assert now > before, (now, before)


def test_a_spec_change_reaches_the_config_without_restarting_pods(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "pop", service="POP3", access={"maxConnections": 10}))
    eventually(lambda: ready(kube, ns, "pop"))
    template = kube.get("apps/v1", "Deployment", ns, "mailwarden-pop")["spec"]["template"]  # type: ignore[index]
    kube.patch(MW, "MailService", ns, "pop", {"spec": {"access": {"maxConnections": 20}}})

    def updated() -> None:
        assert listener_config(kube, ns, "pop").services[0].max_connections == 20
        obj = ready(kube, ns, "pop")
        assert obj["status"]["effectiveMaxConnectionsPerPod"] == 20
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    eventually(updated)
    after = kube.get("apps/v1", "Deployment", ns, "mailwarden-pop")["spec"]["template"]  # type: ignore[index]
    assert after == template


def test_a_changed_port_moves_the_service_port_without_restarting(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "sub", service="Submission"))
    eventually(lambda: ready(kube, ns, "sub"))
    kube.patch(MW, "MailService", ns, "sub", {"spec": {"listen": [{"port": 2525}]}})

    def moved() -> None:
        svc = kube.get("v1", "Service", ns, "mailwarden-sub")
        assert svc is not None
        assert [p["port"] for p in svc["spec"]["ports"]] == [2525]
        assert listener_config(kube, ns, "sub").services[0].listen[0].port == 2525
        dep = kube.get("apps/v1", "Deployment", ns, "mailwarden-sub")
        assert dep is not None
        # Container ports are informational; listing the services' would restart the pods.
        ports = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert [p["containerPort"] for p in ports] == [9090]

    eventually(moved)


def test_a_dropped_address_loses_its_service(kube: Client, ns: str) -> None:
    kube.apply(
        mailservice(
            ns, "web", service="HTTP", listen=[{"address": "192.0.2.80"}, {"address": "192.0.2.81"}]
        )
    )
    eventually(lambda: ready(kube, ns, "web"))
    assert kube.get("v1", "Service", ns, "mailwarden--192-0-2-81") is not None
    kube.patch(MW, "MailService", ns, "web", {"spec": {"listen": [{"address": "192.0.2.80"}]}})
    # The address's listener had no other member: all of its children go.
    for api, kind in (("v1", "Service"), ("apps/v1", "Deployment"), ("v1", "ConfigMap")):
        eventually(lambda api=api, kind=kind: _gone(kube, api, kind, ns, "mailwarden--192-0-2-81"))
    assert kube.get("v1", "Service", ns, "mailwarden--192-0-2-80") is not None


def _gone(kube: Client, api: str, kind: str, ns: str, name: str) -> None:
    assert kube.get(api, kind, ns, name) is None


def test_a_deleted_mailservice_is_left_to_the_garbage_collector(kube: Client, ns: str) -> None:
    """The emulator has no garbage collector: the test checks what the real one acts on (an
    ownerReference with the MailService's uid on every child) and that the operator does not
    recreate anything for a MailService that is gone. Only the kind e2e test sees the
    children actually disappear."""
    created = kube.apply(mailservice(ns, "gone", service="IMAPS", tls={"secretName": "t"}))
    eventually(lambda: ready(kube, ns, "gone"))
    children = [
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    ]
    for api, kind in children:
        child = kube.get(api, kind, ns, "mailwarden-gone")
        assert child is not None
        assert child["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    kube.delete(MW, "MailService", ns, "gone")
    eventually(lambda: _gone(kube, MW, "MailService", ns, "gone"))
    # Deleting a child now must not bring it back: its owner is gone.
    kube.delete("v1", "ConfigMap", ns, "mailwarden-gone")
    kube.apply(mailservice(ns, "marker", service="POP3"))  # something later to wait for
    eventually(lambda: ready(kube, ns, "marker"))
    assert kube.get("v1", "ConfigMap", ns, "mailwarden-gone") is None


def test_warnings_about_the_spec_become_events(kube: Client, ns: str) -> None:
    kube.apply(
        mailservice(
            ns,
            "warned",
            service="HTTP",
            listen=[{"address": "192.0.2.180"}],
            expose={"type": "ClusterIP"},
        )
    )
    eventually(lambda: ready(kube, ns, "warned"))
    eventually(lambda: events_include(kube, ns, "warned", {"FixedAddressIgnored"}))
    kube.patch(
        MW,
        "MailService",
        ns,
        "warned",
        {"spec": {"listen": [{"address": "169.254.10.10"}], "expose": {"type": "LoadBalancer"}}},
    )
    eventually(lambda: events_include(kube, ns, "warned", {"DynamicAddress"}))
    warning = [e for e in kube.list("v1", "Event", ns) if e["reason"] == "DynamicAddress"]
    assert warning[0]["type"] == "Warning" and "link-local" in warning[0]["message"]
