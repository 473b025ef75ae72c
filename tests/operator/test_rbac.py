"""The chart's RBAC is exactly what the operator uses: the real operator (kopf and the
project's handlers) runs through every kind of change it handles against the emulator, which
records each request as RBAC sees it (verb, API group, resource/subresource); the chart's
rendered ClusterRoles and Roles must grant those and nothing more. Once watching every
namespace, once watching listed ones (kopf then also lists and watches Namespaces)."""

from __future__ import annotations

from typing import Any

from kubeemu.emulator import EmulatorThread
from mailwarden.operator import kube as kube_mod
from mailwarden.operator import models, naming
from mailwarden.operator import settings as settings_mod
from tests.deploy.tools import by_kind, render
from tests.operator.resources import MW, events_include, group, mailservice, ready
from tests.support.operator import Client, OperatorThread, eventually

Triple = tuple[str, str, str]  # API group, resource[/subresource], verb
OPERATOR_AGENTS = ("kopf/", kube_mod.USER_AGENT)


def exercise(kube: Client, ns: str) -> None:
    """Every path of the operator that talks to the API: children created, patched back,
    recreated and pruned, listener access (ServiceAccount, Role, RoleBinding), conflicts,
    start and stop, groups, events, deletion."""
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}))
    kube.apply(group(ns, "outer", {"group": "office"}))
    kube.apply(
        mailservice(
            ns,
            "sub",
            service="Submission",
            listen=[{"address": "198.51.100.7"}, {"address": "198.51.100.8"}, {"port": 2587}],
            access={"allowFrom": "outer"},
            replicas=2,
        )
    )
    eventually(lambda: ready(kube, ns, "sub"))
    kube.apply(mailservice(ns, "takeover", listen=[{"address": "198.51.100.7", "port": 587}]))
    eventually(lambda: ready(kube, ns, "takeover", "ListenConflict"))
    labels = naming.labels(naming.base("sub"), "sub")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "mailwarden-sub-abc12", "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "listener", "image": "mailwarden-listener:test"}]},
        }
    )
    # A group change: ConfigMap and NetworkPolicy patched, group statuses. The pods are not
    # touched: they follow their ConfigMap through the API themselves.
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}, {"host": "203.0.113.9"}))

    def spread() -> None:
        cm = kube.get("v1", "ConfigMap", ns, naming.base("sub"))
        assert cm is not None and "203.0.113.9/32" in cm["data"][naming.CONFIG_FILE]

    eventually(spread)
    pod = kube.get("v1", "Pod", ns, "mailwarden-sub-abc12")
    assert pod is not None and not (pod["metadata"].get("annotations") or {})
    # A disruption budget edited by hand is put back.
    budget = ("policy/v1", "PodDisruptionBudget", ns, naming.base("sub"))
    kube.patch(*budget, {"spec": {"maxUnavailable": 2}})
    eventually(lambda: _budget(kube, *budget, 1))
    # Fixed addresses dropped and down to one replica: the listener no one else uses goes
    # whole, the later service takes the other over, the budgets go.
    kube.apply(
        mailservice(
            ns,
            "sub",
            service="Submission",
            listen=[{"port": 2587}],
            access={"allowFrom": "outer"},
            replicas=1,
        )
    )
    eventually(lambda: ready(kube, ns, "takeover"))
    eventually(lambda: _gone(kube, ns, naming.address_listener("198.51.100.8")))
    eventually(lambda: _no_budget(kube, *budget))
    # Hand edits and deletions of children are put back.
    kube.delete("v1", "ConfigMap", ns, naming.base("sub"))
    eventually(lambda: _there(kube, ns, "v1", "ConfigMap", naming.base("sub")))
    kube.patch("apps/v1", "Deployment", ns, naming.base("sub"), {"spec": {"replicas": 7}})
    eventually(lambda: _replicas(kube, ns, "sub", 1))
    kube.patch("v1", "Service", ns, naming.base("sub"), {"spec": {"type": "ClusterIP"}})
    eventually(lambda: _service_type(kube, ns, naming.base("sub"), "LoadBalancer"))
    # Stop and start.
    kube.patch(
        MW,
        "MailService",
        ns,
        "sub",
        {"metadata": {"annotations": {models.STATE_ANNOTATION: models.STOPPED}}},
    )
    eventually(lambda: ready(kube, ns, "sub", "Stopped"))
    kube.patch(
        MW,
        "MailService",
        ns,
        "sub",
        {"metadata": {"annotations": {models.STATE_ANNOTATION: models.RUNNING}}},
    )
    eventually(lambda: ready(kube, ns, "sub"))
    # A missing group, then the group deleted and a service deleted.
    kube.apply(mailservice(ns, "nogroup", service="IMAP", access={"allowFrom": "nowhere"}))
    eventually(lambda: ready(kube, ns, "nogroup", "IPAddressGroupNotFound"))
    events_include(kube, ns, "takeover", {"ListenConflict", "Updated"})
    kube.delete(MW, "IPAddressGroup", ns, "outer")
    eventually(lambda: ready(kube, ns, "sub", "IPAddressGroupNotFound"))
    kube.delete(MW, "MailService", ns, "takeover")
    eventually(lambda: _gone_msvc(kube, ns, "takeover"))


def _gone(kube: Client, ns: str, name: str) -> None:
    assert kube.get("v1", "Service", ns, name) is None


def _budget(kube: Client, api: str, kind: str, ns: str, name: str, max_unavailable: int) -> None:
    obj = kube.get(api, kind, ns, name)
    assert obj is not None and obj["spec"]["maxUnavailable"] == max_unavailable


def _no_budget(kube: Client, api: str, kind: str, ns: str, name: str) -> None:
    assert kube.get(api, kind, ns, name) is None


def _gone_msvc(kube: Client, ns: str, name: str) -> None:
    assert kube.get(MW, "MailService", ns, name) is None


def _there(kube: Client, ns: str, api_version: str, kind: str, name: str) -> None:
    assert kube.get(api_version, kind, ns, name) is not None


def _service_type(kube: Client, ns: str, name: str, type: str) -> None:
    svc = kube.get("v1", "Service", ns, name)
    assert svc is not None and svc["spec"]["type"] == type


def _replicas(kube: Client, ns: str, name: str, replicas: int) -> None:
    dep = kube.get("apps/v1", "Deployment", ns, naming.base(name))
    assert dep is not None and dep["spec"]["replicas"] == replicas


def used(et: EmulatorThread) -> tuple[set[Triple], set[Triple]]:
    """What the operator asked for: (namespaced requests, cluster-scoped requests)."""
    assert et.emulator is not None
    namespaced: set[Triple] = set()
    cluster: set[Triple] = set()
    for agent, verb, api_group, resource, namespace in set(et.emulator.audit):
        if not agent.startswith(OPERATOR_AGENTS):
            continue  # the test acting as a user
        (namespaced if namespace else cluster).add((api_group, resource, verb))
    for agent, api_version, kind in set(et.emulator.blocking_owners):
        if agent.startswith(OPERATOR_AGENTS):
            # ownerReferences with blockOwnerDeletion need update on the owner's finalizers
            # (the OwnerReferencesPermissionEnforcement admission plugin).
            plural = kube_mod.PLURALS[(api_version, kind)]
            namespaced.add((api_version.rpartition("/")[0], f"{plural}/finalizers", "update"))
    return namespaced, cluster


def granted(role: dict[str, Any]) -> set[Triple]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def run(namespaces: tuple[str, ...], ns: str) -> tuple[set[Triple], set[Triple]]:
    et = EmulatorThread().start()
    try:
        client = Client(et.url)
        for name in namespaces:  # kopf serves the listed namespaces that exist
            r = client.http.post(
                "/api/v1/namespaces",
                json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
            assert r.status_code < 300, r.text
        # The live figures on, often enough to run during the exercise (pods are listed).
        settings = settings_mod.Settings(
            image="mailwarden:test", backend_probe_seconds=0, figures_seconds=1
        )
        op = OperatorThread(et.url, settings=settings, namespaces=namespaces).start()
        try:
            exercise(client, ns)
        finally:
            client.close()
            op.stop()
        return used(et)
    finally:
        et.stop()


def test_the_cluster_role_grants_exactly_what_the_operator_uses_cluster_wide() -> None:
    namespaced, cluster = run((), "mail")
    objs = render()
    roles = {r["metadata"]["name"]: granted(r) for r in by_kind(objs, "ClusterRole")}
    assert not by_kind(objs, "Role")
    want = namespaced | cluster
    have = set().union(*roles.values())
    assert sorted(want - have) == [], "used but not granted"
    assert sorted(have - want) == [], "granted but never used"


def test_roles_grant_exactly_what_the_operator_uses_in_listed_namespaces() -> None:
    namespaced, cluster = run(("mail", "mail-staging"), "mail")
    objs = render(sets=("watchNamespaces={mail,mail-staging}",))
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["mail", "mail-staging"]
    for role in roles:
        have = granted(role)
        assert sorted(namespaced - have) == [], "used but not granted"
        assert sorted(have - namespaced) == [], "granted but never used"
    (discovery,) = by_kind(objs, "ClusterRole")
    have = granted(discovery)
    assert sorted(cluster - have) == [], "used but not granted"
    assert sorted(have - cluster) == [], "granted but never used"
