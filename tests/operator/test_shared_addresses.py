"""One listener per fixed address, through the real operator against the emulator, whose
MetalLB model (kubeemu/loadbalancer.py, citing MetalLB's usage docs and source) assigns
load-balancer addresses or leaves them pending, and whose routing check asks whether every
pod behind every address serves every port of it."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubeemu import loadbalancer
from kubeemu.emulator import EmulatorThread
from mailwarden.operator import naming
from tests.operator.resources import (
    MW,
    condition,
    events_include,
    group,
    listener_config,
    mailservice,
    ready,
)
from tests.support.operator import Client, eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
KINDS = (("v1", "Service"), ("apps/v1", "Deployment"), ("v1", "ConfigMap"))


def objects(kube: Client, ns: str) -> list[dict[str, Any]]:
    out = []
    for api, kind in KINDS:
        out += [{**o, "kind": kind} for o in kube.list(api, kind, ns)]
    return out


def routed(kube: Client, ns: str) -> None:
    assert loadbalancer.routing_problems(objects(kube, ns)) == []


def service_ports(kube: Client, ns: str, name: str) -> list[int]:
    svc = kube.get("v1", "Service", ns, name)
    assert svc is not None
    return [p["port"] for p in svc["spec"]["ports"]]


@pytest.fixture
def no_load_balancer(emulator: EmulatorThread) -> Iterator[loadbalancer.MetalLB]:
    """A cluster whose load balancer has not answered yet; turned on by the test."""
    assert emulator.emulator is not None
    metallb = emulator.emulator.metallb
    metallb.enabled = False
    try:
        yield metallb
    finally:
        metallb.enabled = True
        emulator.call(emulator.emulator.reassign_load_balancers)


def test_ready_waits_for_the_load_balancer_to_assign_the_address(
    kube: Client, ns: str, emulator: EmulatorThread, no_load_balancer: loadbalancer.MetalLB
) -> None:
    kube.apply(mailservice(ns, "smtp", listen=[{"address": "192.0.2.41"}]))
    obj = eventually(lambda: ready(kube, ns, "smtp", "AddressPending"))
    assert "192.0.2.41" in condition(obj, "Ready")["message"]
    assert condition(obj, "Reconciling")["status"] == "True"
    assert condition(obj, "Stalled")["status"] == "False"
    assert obj["status"]["address"] == "<pending>" and obj["status"]["endpoints"] == []
    assert obj["status"]["state"] == "Running"  # the pods are up; the address is not
    no_load_balancer.enabled = True
    assert emulator.emulator is not None
    emulator.call(emulator.emulator.reassign_load_balancers)
    obj = eventually(lambda: ready(kube, ns, "smtp"))
    assert obj["status"]["address"] == "192.0.2.41"
    assert obj["status"]["endpoints"] == ["192.0.2.41:25"]


def test_an_address_outside_the_pools_stays_pending(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "smtp", listen=[{"address": "10.99.0.1"}]))
    eventually(lambda: ready(kube, ns, "smtp", "AddressPending"))


def test_services_on_one_address_share_one_service_and_the_same_pods(kube: Client, ns: str) -> None:
    address = "192.0.2.42"
    kube.apply(
        mailservice(
            ns,
            "smtp",
            listen=[{"address": address}],
            replicas=3,
            access={"maxConnections": 300},
        )
    )
    kube.apply(mailservice(ns, "submission", service="Submission", listen=[{"address": address}]))
    kube.apply(
        mailservice(
            ns,
            "imaps",
            service="IMAPS",
            tls={"secretName": "mail-tls"},
            listen=[{"address": address}],
            access={"maxConnections": 90},
        )
    )
    for name in ("smtp", "submission", "imaps"):
        eventually(lambda name=name: ready(kube, ns, name))
    name = naming.address_listener(address)
    eventually(lambda: _equal(service_ports(kube, ns, name), [25, 587, 993]))
    services = kube.list("v1", "Service", ns)
    assert [s["metadata"]["name"] for s in services] == [name]
    dep = kube.get("apps/v1", "Deployment", ns, name)
    assert dep is not None and dep["spec"]["replicas"] == 3  # the most any member asks for
    # Every member an owner, none the controller.
    refs = dep["metadata"]["ownerReferences"]
    assert sorted(r["name"] for r in refs) == ["imaps", "smtp", "submission"]
    assert not any(r["controller"] for r in refs)
    # The per-pod cap splits each service's cap over the shared pods.
    assert listener_config(kube, ns, "imaps").services[0].max_connections == 30
    assert ready(kube, ns, "imaps")["status"]["effectiveMaxConnectionsPerPod"] == 30
    routed(kube, ns)


def test_starting_and_stopping_a_service_on_a_shared_address_restarts_nothing(
    kube: Client, ns: str
) -> None:
    address = "192.0.2.43"
    kube.apply(mailservice(ns, "smtp", listen=[{"address": address}]))
    kube.apply(
        mailservice(
            ns,
            "pop3s",
            service="POP3S",
            startup="Manual",
            tls={"secretName": "mail-tls"},
            listen=[{"address": address}],
        )
    )
    eventually(lambda: ready(kube, ns, "smtp"))
    eventually(lambda: ready(kube, ns, "pop3s", "Stopped"))
    name = naming.address_listener(address)
    # Stopped: not on the Service, not in the pods' configuration.
    assert service_ports(kube, ns, name) == [25]
    assert [s.name for s in listener_config(kube, ns, "smtp").services] == [f"{ns}/smtp"]
    routed(kube, ns)
    template = kube.get("apps/v1", "Deployment", ns, name)["spec"]["template"]  # type: ignore[index]

    kube.patch(
        MW,
        "MailService",
        ns,
        "pop3s",
        {"metadata": {"annotations": {"mailwarden.io/state": "Running"}}},
    )
    eventually(lambda: ready(kube, ns, "pop3s"))
    eventually(lambda: _equal(service_ports(kube, ns, name), [25, 995]))
    assert sorted(s.name for s in listener_config(kube, ns, "smtp").services) == [
        f"{ns}/pop3s",
        f"{ns}/smtp",
    ]
    after = kube.get("apps/v1", "Deployment", ns, name)["spec"]["template"]  # type: ignore[index]
    assert after == template  # a configuration change, not a rollout
    routed(kube, ns)

    kube.patch(
        MW,
        "MailService",
        ns,
        "pop3s",
        {"metadata": {"annotations": {"mailwarden.io/state": "Stopped"}}},
    )
    eventually(lambda: ready(kube, ns, "pop3s", "Stopped"))
    eventually(lambda: _equal(service_ports(kube, ns, name), [25]))
    assert ready(kube, ns, "smtp")["status"]["state"] == "Running"
    routed(kube, ns)


def test_a_service_moves_between_addresses_and_the_same_port_lives_on_two(
    kube: Client, ns: str
) -> None:
    kube.apply(mailservice(ns, "web", service="HTTP", listen=[{"address": "192.0.2.44"}]))
    kube.apply(mailservice(ns, "web2", service="HTTP", listen=[{"address": "192.0.2.45"}]))
    kube.apply(mailservice(ns, "smtp", listen=[{"address": "192.0.2.44"}]))
    for name in ("web", "web2", "smtp"):
        eventually(lambda name=name: ready(kube, ns, name))
    a, b = naming.address_listener("192.0.2.44"), naming.address_listener("192.0.2.45")
    assert service_ports(kube, ns, a) == [25, 80] and service_ports(kube, ns, b) == [80]
    # web moves to .46: it leaves .44 (smtp stays there alone), and .46 gets a listener.
    kube.patch(MW, "MailService", ns, "web", {"spec": {"listen": [{"address": "192.0.2.46"}]}})
    c = naming.address_listener("192.0.2.46")
    eventually(lambda: _equal(service_ports(kube, ns, a), [25]))
    eventually(lambda: _equal(service_ports(kube, ns, c), [80]))
    obj = eventually(lambda: _endpoints(kube, ns, "web", ["192.0.2.46:80"]))
    assert obj["status"]["address"] == "192.0.2.46"
    refs = kube.get("v1", "ConfigMap", ns, a)["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [r["name"] for r in refs] == ["smtp"]
    # web2 moves onto .46 too: .45 has no member left and goes whole.
    kube.patch(
        MW,
        "MailService",
        ns,
        "web2",
        {"spec": {"listen": [{"address": "192.0.2.46", "port": 8080}]}},
    )
    for api, kind in KINDS:
        eventually(lambda api=api, kind=kind: _gone(kube, api, kind, ns, b))
    eventually(lambda: _equal(service_ports(kube, ns, c), [80, 8080]))
    routed(kube, ns)


def test_an_allow_list_behind_cluster_traffic_policy_warns_that_it_is_void(
    kube: Client, ns: str
) -> None:
    kube.apply(group(ns, "office", {"network": "198.51.100.0/24"}))
    kube.apply(
        mailservice(
            ns,
            "sub",
            service="Submission",
            listen=[{"address": "192.0.2.47"}],
            access={"allowFrom": "office", "maxConnectionsPerAddress": 5},
            expose={"externalTrafficPolicy": "Cluster"},
        )
    )
    obj = eventually(lambda: ready(kube, ns, "sub"))
    warning = condition(obj, "Warning")
    assert (warning["status"], warning["reason"]) == ("True", "ClientAddressLost")
    assert "access.allowFrom (office)" in warning["message"]
    assert "maxConnectionsPerAddress" in warning["message"] and "void" in warning["message"]
    eventually(lambda: events_include(kube, ns, "sub", {"ClientAddressLost"}))
    # A trusted PROXY source restores the client address: no warning.
    kube.patch(
        MW, "MailService", ns, "sub", {"spec": {"proxyProtocol": {"trustedCIDRs": ["10.0.0.0/8"]}}}
    )
    eventually(lambda: _condition(kube, ns, "sub", "Warning", "False"))


def test_a_node_port_service_shows_its_node_port(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "imap", service="IMAP", expose={"type": "NodePort"}))
    obj = eventually(lambda: ready(kube, ns, "imap"))
    svc = kube.get("v1", "Service", ns, naming.base("imap"))
    assert svc is not None
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert obj["status"]["endpoints"] == [f"*:{node_port}"]


def test_a_child_name_taken_by_someone_else_is_left_alone(kube: Client, ns: str) -> None:
    theirs = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": naming.base("pop"), "namespace": ns, "labels": {"team": "web"}},
        "data": {"theirs": "yes"},
    }
    kube.apply(theirs)
    kube.apply(mailservice(ns, "pop", service="POP3"))
    obj = eventually(lambda: ready(kube, ns, "pop", "OwnedElsewhere"))
    assert "not managed by mailwarden" in condition(obj, "Ready")["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    cm = kube.get("v1", "ConfigMap", ns, naming.base("pop"))
    assert cm is not None and cm["data"] == {"theirs": "yes"}


def test_the_examples_get_their_addresses_and_every_pod_serves_every_port(
    kube: Client, ns: str
) -> None:
    """The README's examples (examples/*.yaml) and the shared-address one
    (examples/one-address/), each in a namespace of its own here."""
    suites = {
        f"{ns}-mail": sorted((ROOT / "examples").glob("*.yaml")),
        f"{ns}-host": sorted((ROOT / "examples" / "one-address").glob("*.yaml")),
    }
    names: dict[str, list[str]] = {}
    for target, files in suites.items():
        for path in files:
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("apiVersion") != MW:
                    continue
                doc["metadata"]["namespace"] = target
                kube.apply(doc)
                if doc["kind"] == "MailService":
                    names.setdefault(target, []).append(doc["metadata"]["name"])
    manual = {(f"{ns}-mail", "pop3s"), (f"{ns}-host", "imap")}  # startup Manual: stopped
    for target, msvcs in names.items():
        for name in msvcs:
            reason = "Stopped" if (target, name) in manual else "Running"
            eventually(lambda t=target, n=name, r=reason: ready(kube, t, n, r))
        routed(kube, target)
    # One Service per fixed address.
    host = kube.list("v1", "Service", f"{ns}-host")
    by_address = sorted(s["metadata"]["annotations"][naming.ANNOTATION_ADDRESS] for s in host)
    assert by_address == ["198.51.100.25", "198.51.100.80", "2001:db8:25::25"]
    shared = kube.get("v1", "Service", f"{ns}-host", naming.address_listener("198.51.100.25"))
    assert shared is not None
    assert [p["port"] for p in shared["spec"]["ports"]] == [25, 80, 443, 587, 993, 995]
    assert shared["status"]["loadBalancer"]["ingress"][0]["ip"] == "198.51.100.25"
    mail = kube.list("v1", "Service", f"{ns}-mail")
    addresses = [s["metadata"]["annotations"][naming.ANNOTATION_ADDRESS] for s in mail]
    assert len(addresses) == len(set(addresses))


def _equal(a: object, b: object) -> None:
    assert a == b, (a, b)


def _gone(kube: Client, api: str, kind: str, ns: str, name: str) -> None:
    assert kube.get(api, kind, ns, name) is None


def _endpoints(kube: Client, ns: str, name: str, endpoints: list[str]) -> dict[str, Any]:
    obj = kube.get(MW, "MailService", ns, name)
    assert obj is not None and obj["status"]["endpoints"] == endpoints, obj.get("status")
    return obj


def _condition(kube: Client, ns: str, name: str, type: str, status: str) -> None:
    assert condition(kube.get(MW, "MailService", ns, name), type)["status"] == status
