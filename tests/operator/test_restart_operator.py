"""Level-based: an operator that starts over finds everything as it left it and writes
nothing."""

from __future__ import annotations

from typing import Any

from kubeemu.emulator import EmulatorThread
from mailwarden.operator import metrics
from tests.operator.resources import MW, group, mailservice, ready
from tests.support.operator import Client, OperatorThread, eventually

CHILDREN = [
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
]


def versions(kube: Client, ns: str, names: list[str]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for name in names:
        msvc = kube.get(MW, "MailService", ns, name)
        assert msvc is not None
        out[("MailService", name)] = msvc["status"]
        for api, kind in CHILDREN:
            child = kube.get(api, kind, ns, f"mailwarden-{name}")
            assert child is not None
            out[(kind, name)] = child["metadata"]["resourceVersion"]
    group_obj = kube.get(MW, "IPAddressGroup", ns, "office")
    assert group_obj is not None
    out[("IPAddressGroup", "office")] = group_obj["metadata"]["resourceVersion"]
    return out


def test_a_restarted_operator_changes_nothing() -> None:
    emulator = EmulatorThread().start()
    kube = Client(emulator.url)
    try:
        first = OperatorThread(emulator.url).start()
        try:
            kube.apply(group("r", "office", {"network": "192.0.2.0/24"}))
            kube.apply(mailservice("r", "smtp", access={"allowFrom": "office"}))
            kube.apply(mailservice("r", "news", service="NNTP", startup="Manual"))
            eventually(lambda: ready(kube, "r", "smtp"))
            eventually(lambda: ready(kube, "r", "news", reason="Stopped"))
        finally:
            first.stop()
        before = versions(kube, "r", ["smtp", "news"])
        events = len(kube.list("v1", "Event", "r"))

        reconciled = metrics.RECONCILES.labels("MailService", "success")
        count = reconciled._value.get()
        second = OperatorThread(emulator.url).start()
        try:
            kube.apply(mailservice("r", "marker", service="POP3"))
            eventually(lambda: ready(kube, "r", "marker"))

            def resumed() -> None:  # smtp, news and marker, at least once each
                assert reconciled._value.get() - count >= 3

            eventually(resumed)
            assert versions(kube, "r", ["smtp", "news"]) == before
            new_events = [
                e
                for e in kube.list("v1", "Event", "r")[events:]
                if e["involvedObject"]["name"] != "marker"
            ]
            assert new_events == []
        finally:
            second.stop()
    finally:
        kube.close()
        emulator.stop()
