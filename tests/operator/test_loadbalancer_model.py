"""The emulator's model of MetalLB and of the API server's Service allocators
(kubeemu/loadbalancer.py), against the rules they cite, and what it says about the
Services the operator renders: per MailService before (all but one pending on a shared
address), per address now (assigned, and every pod behind it serves every port).

MetalLB sources: https://metallb.io/usage/ ("IP address sharing", "Requesting specific IPs");
github.com/metallb/metallb controller/service.go (getDesiredLbIPs),
internal/allocator/allocator.go (checkSharing, sharingOK), internal/allocator/k8salloc
(BackendKey: the selector with externalTrafficPolicy Local)."""

from __future__ import annotations

from typing import Any

from kubeemu import loadbalancer
from mailwarden.operator import children, listeners, models, settings


def svc(
    name: str,
    ports: list[int],
    *,
    ip: str | None = None,
    field: str | None = None,
    key: str | None = None,
    policy: str = "Local",
    selector: dict[str, str] | None = None,
    family: str = "IPv4",
    cls: str | None = None,
) -> dict[str, Any]:
    annotations = {}
    if ip:
        annotations["metallb.io/loadBalancerIPs"] = ip
    if key:
        annotations["metallb.io/allow-shared-ip"] = key
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "ports": [{"port": p, "protocol": "TCP"} for p in ports],
        "selector": selector or {"app": name},
        "externalTrafficPolicy": policy,
        "ipFamilies": [family],
    }
    if field:
        spec["loadBalancerIP"] = field
    if cls:
        spec["loadBalancerClass"] = cls
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "mail", "annotations": annotations},
        "spec": spec,
    }


def test_a_requested_address_in_a_pool_is_assigned_and_one_outside_stays_pending() -> None:
    lb = loadbalancer.MetalLB()
    got = lb.assign([svc("a", [25], ip="192.0.2.25"), svc("b", [25], ip="10.9.9.9")])
    assert got == {"mail/a": ["192.0.2.25"], "mail/b": []}
    assert "is not allowed in config" in lb.failures["mail/b"]


def test_the_annotation_and_spec_load_balancer_ip_together_are_refused() -> None:
    lb = loadbalancer.MetalLB()
    got = lb.assign([svc("a", [25], ip="192.0.2.25", field="192.0.2.25")])
    assert got == {"mail/a": []}
    assert "can not have both" in lb.failures["mail/a"]
    # Either alone is honoured.
    assert lb.assign([svc("b", [25], field="192.0.2.26")]) == {"mail/b": ["192.0.2.26"]}


def test_without_a_sharing_key_the_second_service_on_an_address_stays_pending() -> None:
    lb = loadbalancer.MetalLB()
    got = lb.assign([svc("a", [25], ip="192.0.2.25"), svc("b", [587], ip="192.0.2.25")])
    assert got["mail/a"] == ["192.0.2.25"] and got["mail/b"] == []
    assert "does not allow sharing" in lb.failures["mail/b"]


def test_local_policy_shares_only_with_the_same_selector() -> None:
    """What rendering one Service per MailService did to the README's example: four Services
    on 192.0.2.25 with the sharing key, ETP Local and four selectors: three stay pending."""
    lb = loadbalancer.MetalLB()
    four = [
        svc(name, [port], ip="192.0.2.25", key="mail-192.0.2.25")
        for name, port in (("smtp", 25), ("submission", 587), ("imaps", 993), ("pop3s", 995))
    ]
    got = lb.assign(four)
    assert sorted(k for k, v in got.items() if v) == ["mail/smtp"]
    assert all("backend key" in lb.failures[f"mail/{n}"] for n in ("submission", "imaps", "pop3s"))
    # The same selector (or ETP Cluster) lets them share, on disjoint ports only.
    same = [
        svc(n, [p], ip="192.0.2.25", key="k", selector={"app": "x"})
        for n, p in (("a", 25), ("b", 587), ("c", 587))
    ]
    got = lb.assign(same)
    assert got["mail/a"] == got["mail/b"] == ["192.0.2.25"] and got["mail/c"] == []
    assert "port TCP/587 is already in use" in lb.failures["mail/c"]
    cluster = [
        svc(n, [p], ip="192.0.2.25", key="k", policy="Cluster") for n, p in (("a", 25), ("b", 587))
    ]
    assert all(lb.assign(cluster).values())


def test_the_family_must_match_and_other_classes_are_not_metallb_s() -> None:
    lb = loadbalancer.MetalLB()
    got = lb.assign(
        [
            svc("v6", [25], ip="2001:db8::25", family="IPv6"),
            svc("mixed", [25], ip="2001:db8::26", family="IPv4"),
            svc("aws", [25], ip="192.0.2.30", cls="service.k8s.aws/nlb"),
            svc("auto", [25]),
        ]
    )
    assert got["mail/v6"] == ["2001:db8::25"]
    assert got["mail/mixed"] == []
    assert "mail/aws" not in got  # another implementation's Service: left alone
    assert got["mail/auto"] == ["203.0.113.1"]  # the first address of the auto-assign pool


def test_a_service_keeps_its_address_and_the_api_server_keeps_node_ports() -> None:
    lb = loadbalancer.MetalLB()
    first = svc("a", [25])
    (ip,) = lb.assign([first])["mail/a"]
    first["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    newcomer = svc("b", [25])
    got = lb.assign([newcomer, first])
    assert got["mail/a"] == [ip] and got["mail/b"] != [ip]
    api = loadbalancer.ApiServerAllocators()
    created = api.admit(svc("n", [25, 587]), None)
    ports = {p["port"]: p["nodePort"] for p in created["spec"]["ports"]}
    assert created["spec"]["clusterIP"].startswith("10.96.")
    assert created["spec"]["healthCheckNodePort"]  # ETP Local on a LoadBalancer
    updated = api.admit(svc("n", [25, 587, 993]), created)
    again = {p["port"]: p["nodePort"] for p in updated["spec"]["ports"]}
    assert again[25] == ports[25] and again[587] == ports[587] and again[993] not in ports.values()


def msvc(name: str, service: str, address: str, **spec: Any) -> listeners.Member:
    body: dict[str, Any] = {
        "service": service,
        "listen": [{"address": address}],
        "backend": {"host": "backend"},
        **spec,
    }
    if service in ("IMAPS", "POP3S", "HTTPS"):
        body.setdefault("tls", {"secretName": f"{name}-tls"})
    parsed = models.MailService.model_validate(
        {"metadata": {"name": name, "namespace": "mail", "uid": f"uid-{name}"}, "spec": body}
    )
    return listeners.Member(parsed, created=name)


def rendered(members: list[listeners.Member]) -> list[dict[str, Any]]:
    out = []
    for lst in listeners.plan(members).values():
        out += children.build_listener(lst, {}, settings.Settings()).all
    return out


def with_addresses(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    services = [o for o in objects if o["kind"] == "Service"]
    assigned = loadbalancer.MetalLB().assign(services)
    for s in services:
        ips = assigned[f"mail/{s['metadata']['name']}"]
        s["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}}
    return objects


def test_one_service_per_address_is_assigned_and_every_pod_serves_every_port() -> None:
    members = [
        msvc("smtp", "SMTP", "192.0.2.25", replicas=3),
        msvc("submission", "Submission", "192.0.2.25", replicas=2),
        msvc("imaps", "IMAPS", "192.0.2.25"),
        msvc("pop3s", "POP3S", "192.0.2.25"),
        msvc("webmail", "HTTPS", "192.0.2.25"),
        msvc("web2", "HTTP", "192.0.2.80"),
        msvc("smtp6", "SMTP", "2001:db8::25"),
    ]
    objects = with_addresses(rendered(members))
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert set(services) == {
        "mailwarden--192-0-2-25",
        "mailwarden--192-0-2-80",
        "mailwarden--2001-db8--25",
    }
    shared = services["mailwarden--192-0-2-25"]
    assert [p["port"] for p in shared["spec"]["ports"]] == [25, 443, 587, 993, 995]
    assert shared["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.25"}]
    # No sharing key is needed: one Service per address (MetalLB's sharing rules only apply
    # between Services).
    assert "metallb.io/allow-shared-ip" not in shared["metadata"]["annotations"]
    assert loadbalancer.routing_problems(objects) == []


def test_the_routing_check_finds_a_pod_that_does_not_serve_a_port() -> None:
    objects = with_addresses(rendered([msvc("smtp", "SMTP", "192.0.2.25")]))
    (service,) = [o for o in objects if o["kind"] == "Service"]
    service["spec"]["ports"].append({"name": "tcp-587", "port": 587, "targetPort": 587})
    (problem,) = loadbalancer.routing_problems(objects)
    assert "port 587" in problem and "do not serve 587" in problem
