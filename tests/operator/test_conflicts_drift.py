"""Listen conflicts and takeover, hand edits put back, invalid specs."""

from __future__ import annotations

from typing import Any

from tests.operator.resources import (
    MW,
    condition,
    events_include,
    listener_config,
    mailservice,
    ready,
)
from tests.support.operator import Client, eventually


def test_the_later_service_does_not_take_a_claimed_address_and_takes_over_later(
    kube: Client, ns: str, emulator: Any
) -> None:
    # Creation times have one-second resolution, like a real API server's; ties go by name,
    # so "a-first" also wins a tie.
    kube.apply(mailservice(ns, "a-first", service="HTTP", listen=[{"address": "192.0.2.100"}]))
    eventually(lambda: ready(kube, ns, "a-first"))
    kube.apply(
        mailservice(
            ns,
            "b-second",
            service="HTTPS",
            tls={"secretName": "t"},
            listen=[
                {"address": "192.0.2.100", "port": 80},
                {"address": "192.0.2.101", "port": 443},
            ],
        )
    )
    loser = eventually(lambda: ready(kube, ns, "b-second", reason="ListenConflict"))
    message = condition(loser, "Ready")["message"]
    assert "192.0.2.100:80" in message and f"{ns}/a-first" in message
    # It clears by itself when the holder goes: waiting (Reconciling), not Stalled.
    assert condition(loser, "Stalled")["status"] == "False"
    assert condition(loser, "Reconciling")["status"] == "True"
    # It keeps what it can have, not what it cannot.
    assert kube.get("v1", "Service", ns, "mailwarden--192-0-2-101") is not None
    held = kube.get("v1", "Service", ns, "mailwarden--192-0-2-100")
    assert held is not None and [p["port"] for p in held["spec"]["ports"]] == [80]
    assert [r["name"] for r in held["metadata"]["ownerReferences"]] == ["a-first"]

    def assigned() -> None:
        obj = kube.get(MW, "MailService", ns, "b-second")
        assert obj is not None and obj["status"]["endpoints"] == ["192.0.2.101:443"]

    eventually(assigned)
    eventually(lambda: events_include(kube, ns, "b-second", {"ListenConflict"}))

    kube.delete(MW, "MailService", ns, "a-first")
    eventually(lambda: ready(kube, ns, "b-second"))
    svc = kube.get("v1", "Service", ns, "mailwarden--192-0-2-100")
    assert svc is not None
    assert svc["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == "192.0.2.100"
    assert [r["name"] for r in svc["metadata"]["ownerReferences"]] == ["b-second"]


def test_a_conflict_across_namespaces_counts_too(kube: Client, ns: str) -> None:
    other = f"{ns}-other"
    kube.apply(mailservice(ns, "a", service="SMTP", listen=[{"address": "192.0.2.200"}]))
    eventually(lambda: ready(kube, ns, "a"))
    kube.apply(mailservice(other, "b", service="SMTP", listen=[{"address": "192.0.2.200"}]))
    eventually(lambda: ready(kube, other, "b", reason="ListenConflict"))
    # Moving the first away frees the address.
    kube.patch(MW, "MailService", ns, "a", {"spec": {"listen": [{"address": "192.0.2.201"}]}})
    eventually(lambda: ready(kube, other, "b"))


def test_a_child_edited_by_hand_is_put_back(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "imap", service="IMAP", access={"maxConnections": 7}))
    eventually(lambda: ready(kube, ns, "imap"))
    kube.patch(
        "v1",
        "ConfigMap",
        ns,
        "mailwarden-imap",
        {"data": {"listener.yaml": "version: 1\nservices: []\n"}},
    )
    kube.patch("apps/v1", "Deployment", ns, "mailwarden-imap", {"spec": {"replicas": 5}})
    kube.patch(
        "v1", "Service", ns, "mailwarden-imap", {"spec": {"externalTrafficPolicy": "Cluster"}}
    )

    def repaired() -> None:
        services = listener_config(kube, ns, "imap").services
        assert [s.max_connections for s in services] == [7]
        dep = kube.get("apps/v1", "Deployment", ns, "mailwarden-imap")
        assert dep is not None and dep["spec"]["replicas"] == 1
        svc = kube.get("v1", "Service", ns, "mailwarden-imap")
        assert svc is not None and svc["spec"]["externalTrafficPolicy"] == "Local"

    eventually(repaired)
    eventually(lambda: events_include(kube, ns, "imap", {"Updated"}))


def test_a_child_deleted_by_hand_comes_back(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "pop", service="POP3"))
    eventually(lambda: ready(kube, ns, "pop"))
    for api, kind in [
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("v1", "ConfigMap"),
    ]:
        old = kube.get(api, kind, ns, "mailwarden-pop")
        assert old is not None
        kube.delete(api, kind, ns, "mailwarden-pop")

        def back(api: str = api, kind: str = kind, old: dict[str, Any] = old) -> None:
            new = kube.get(api, kind, ns, "mailwarden-pop")
            assert new is not None and new["metadata"]["uid"] != old["metadata"]["uid"]

        eventually(back)


def test_the_crd_refuses_what_its_schema_and_rules_forbid(kube: Client, ns: str) -> None:
    """The emulator admits custom resources through the CRDs in deploy/crds (schema, defaults,
    CEL), so this is refused before the operator sees it, as on a real API server."""
    r = kube.http.post(
        kube.path(MW, "MailService", ns),
        json=mailservice(ns, "anon", service="SMTP", access={"anonymous": True}),
    )
    assert r.status_code == 422
    assert "only allowed for NNTP and NNTPS" in r.json()["message"]


def test_an_invalid_spec_is_reported_once_and_not_retried_in_a_loop(kube: Client, ns: str) -> None:
    """300.1.2.3 has the shape the CRD's schema checks (digits and dots) but is no address:
    only the operator's own validation finds it."""
    kube.apply(mailservice(ns, "bad", service="SMTP", listen=[{"address": "300.1.2.3"}]))
    obj = eventually(lambda: ready(kube, ns, "bad", reason="InvalidSpec"))
    message = condition(obj, "Ready")["message"]
    assert "spec.listen.0.address" in message and "300.1.2.3" in message
    assert condition(obj, "Stalled")["status"] == "True"
    assert kube.get("apps/v1", "Deployment", ns, "mailwarden-bad") is None
    eventually(lambda: events_include(kube, ns, "bad", {"InvalidSpec"}))

    # No hot loop: once the status says so, nothing more is written about it while the spec
    # stays as it is; and the operator keeps no bookkeeping of its own in the object.
    obj = kube.get(MW, "MailService", ns, "bad")
    assert obj is not None
    annotations = obj["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("kopf.")], annotations
    rv = str(obj["metadata"]["resourceVersion"])
    events = len(kube.list("v1", "Event", ns))
    kube.apply(mailservice(ns, "marker", service="POP3"))  # something later to wait for
    eventually(lambda: ready(kube, ns, "marker"))
    assert kube.get(MW, "MailService", ns, "bad")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    assert (
        len([e for e in kube.list("v1", "Event", ns) if e["involvedObject"]["name"] == "bad"])
        <= events
    )

    # Fixed, it recovers by itself.
    kube.patch(MW, "MailService", ns, "bad", {"spec": {"listen": [{"address": "192.0.2.30"}]}})
    eventually(lambda: ready(kube, ns, "bad"))


def test_api_errors_are_retried_with_backoff(kube: Client, ns: str, emulator: Any) -> None:
    emulator.emulator.faults[("POST", "configmaps")] = 2
    kube.apply(mailservice(ns, "flaky", service="POP3S", tls={"secretName": "t"}))
    eventually(lambda: ready(kube, ns, "flaky"), timeout=15)
    assert emulator.emulator.faults[("POST", "configmaps")] == 0
