"""Starting, stopping and restarting a MailService with annotations (what the README's
kubectl commands do), and the state its status reports."""

from __future__ import annotations

from typing import Any

from mailwarden.operator import models
from tests.operator.resources import MW, condition, events_include, mailservice, ready
from tests.support.operator import Client, eventually


def replicas(kube: Client, ns: str, name: str) -> int:
    dep = kube.get("apps/v1", "Deployment", ns, f"mailwarden-{name}")
    assert dep is not None
    return int(dep["spec"]["replicas"])


def annotate(kube: Client, ns: str, name: str, key: str, value: str) -> None:
    kube.patch(MW, "MailService", ns, name, {"metadata": {"annotations": {key: value}}})


def test_a_manual_service_is_created_stopped(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "news", service="NNTP", startup="Manual", replicas=2))
    obj = eventually(lambda: ready(kube, ns, "news", reason="Stopped"))
    assert obj["status"]["state"] == "Stopped"
    assert replicas(kube, ns, "news") == 0
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "False"
    assert condition(obj, "Reconciling")["status"] == "False"


def test_starting_a_manual_service_runs_it_and_records_when(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "news", service="NNTP", startup="Manual", replicas=2))
    stopped = eventually(lambda: ready(kube, ns, "news", reason="Stopped"))
    annotate(kube, ns, "news", models.STATE_ANNOTATION, models.RUNNING)
    running = eventually(lambda: ready(kube, ns, "news"))
    assert running["status"]["state"] == "Running"
    assert replicas(kube, ns, "news") == 2
    assert running["status"]["lastStateChange"] >= stopped["status"]["lastStateChange"]
    eventually(lambda: events_include(kube, ns, "news", {"Running"}))


def test_stopping_an_automatic_service_scales_it_to_zero(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "imap", service="IMAP", replicas=3))
    eventually(lambda: ready(kube, ns, "imap"))
    annotate(kube, ns, "imap", models.STATE_ANNOTATION, models.STOPPED)
    obj = eventually(lambda: ready(kube, ns, "imap", reason="Stopped"))
    assert obj["status"]["state"] == "Stopped"
    assert replicas(kube, ns, "imap") == 0
    eventually(lambda: events_include(kube, ns, "imap", {"Stopped"}))
    # The Services and the config stay: starting again needs nothing but pods.
    assert kube.get("v1", "Service", ns, "mailwarden-imap") is not None


def test_restart_changes_only_the_pod_template_annotation(kube: Client, ns: str) -> None:
    kube.apply(mailservice(ns, "pop", service="POP3"))
    eventually(lambda: ready(kube, ns, "pop"))
    before: dict[str, Any] = kube.get("apps/v1", "Deployment", ns, "mailwarden-pop")  # type: ignore[assignment]
    annotate(kube, ns, "pop", models.RESTART_ANNOTATION, "2026-01-01T00:00:00Z")

    def restarted() -> dict[str, Any]:
        dep = kube.get("apps/v1", "Deployment", ns, "mailwarden-pop")
        assert dep is not None
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations.get(models.RESTART_ANNOTATION) == "2026-01-01T00:00:00Z"
        return dep

    after = eventually(restarted)
    # A rolling restart: one new pod ready before an old one drains.
    assert after["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}

    def strip(d):
        return {k: v for k, v in d["spec"]["template"]["metadata"].items() if k != "annotations"}

    assert strip(after) == strip(before)
    assert after["spec"]["template"]["spec"] == before["spec"]["template"]["spec"]
    assert after["spec"]["replicas"] == before["spec"]["replicas"]


def test_status_says_starting_until_the_deployment_is_available(
    kube: Client, ns: str, emulator: Any
) -> None:
    """The emulator plays the Deployment controller; here it holds back until told."""
    emulator.emulator.deployment_controller = False
    try:
        kube.apply(mailservice(ns, "slow", service="XMPP", replicas=2))
        obj = eventually(lambda: ready(kube, ns, "slow", reason="Starting"))
        assert obj["status"]["state"] == "Starting"
        assert condition(obj, "Reconciling")["status"] == "True"
        assert condition(obj, "Stalled")["status"] == "False"
    finally:
        emulator.emulator.deployment_controller = True
    emulator.call(emulator.emulator.finish_rollouts)
    obj = eventually(lambda: ready(kube, ns, "slow"))
    assert obj["status"]["state"] == "Running"
    assert obj["status"]["replicas"] == 2
    assert condition(obj, "Reconciling")["status"] == "False"
