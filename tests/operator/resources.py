"""Manifests and reads the operator tests share."""

from __future__ import annotations

from typing import Any

import msgspec

from mailwarden.listener import config as lc
from mailwarden.operator import listeners, models, naming
from tests.support.operator import Client

MW = models.API_VERSION


def mailservice(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("service", "SMTP")
    spec.setdefault("backend", {"host": "postfix.mail.svc"})
    return {
        "apiVersion": MW,
        "kind": "MailService",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def condition(obj: dict[str, Any] | None, type: str) -> dict[str, Any]:
    assert obj is not None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type:
            return dict(cond)
    raise AssertionError(f"no {type} condition in {obj.get('status')}")


def ready(kube: Client, ns: str, name: str, reason: str = "Running") -> dict[str, Any]:
    obj = kube.get(MW, "MailService", ns, name)
    cond = condition(obj, "Ready")
    assert cond["reason"] == reason, cond
    assert obj is not None
    return obj


def listener_of(kube: Client, ns: str, name: str) -> str:
    """The (first) listener serving a MailService, as the operator's contract function says
    (listeners.deployments)."""
    body = kube.get(MW, "MailService", ns, name)
    assert body is not None
    msvc = models.MailService.model_validate({**body, "metadata": {**body["metadata"]}})
    names = listeners.deployments(msvc)
    assert names, f"no listener serves {ns}/{name}"
    return names[0]


def listener_config(kube: Client, ns: str, name: str) -> lc.ListenerConfig:
    """The configuration of the listener serving `name`, with that MailService's service
    first."""
    cm = kube.get("v1", "ConfigMap", ns, listener_of(kube, ns, name))
    assert cm is not None
    cfg = lc.loads(cm["data"][naming.CONFIG_FILE])
    mine = [s for s in cfg.services if s.name == f"{ns}/{name}"]
    others = [s for s in cfg.services if s.name != f"{ns}/{name}"]
    return msgspec.structs.replace(cfg, services=tuple(mine + others))


def events_include(kube: Client, ns: str, name: str, reasons: set[str]) -> None:
    seen = {
        e["reason"] for e in kube.list("v1", "Event", ns) if e["involvedObject"]["name"] == name
    }
    assert reasons <= seen, seen


def group(ns: str, name: str, *items: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": MW,
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"items": list(items)},
    }


def allowed(kube: Client, ns: str, name: str) -> tuple[str, ...] | None:
    return listener_config(kube, ns, name).services[0].allow


def policy_cidrs(kube: Client, ns: str, name: str) -> list[str]:
    np = kube.get("networking.k8s.io/v1", "NetworkPolicy", ns, listener_of(kube, ns, name))
    assert np is not None
    rules = [r for r in np["spec"]["ingress"] if any("ipBlock" in f for f in r.get("from", []))]
    return [f["ipBlock"]["cidr"] for r in rules for f in r["from"]]
