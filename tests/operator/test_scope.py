"""The operator watches only what it owns (issue 10 point 4): the API server filters the child
kinds and listener pods by label (kopf's `settings.watching.label_selectors`; a handler's
`labels=` alone filters in the client, after every object of the kind was listed and
watched), and initial lists come in pages. A cluster full of unrelated ConfigMaps, Services
and Deployments then costs the operator nothing. The emulator honours label selectors, `limit`
and `continue` as the API server does
(https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks).
The benchmark (`python -m bench.operator_scale --unrelated 10000`) gives the RSS and start-up
figures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubeemu.emulator import EmulatorThread
from mailwarden.operator import handlers, naming
from tests.operator.resources import mailservice, ready
from tests.support.operator import Client, OperatorThread, eventually

UNRELATED = 600  # of each kind; the benchmark uses 10,000
CHILD_PLURALS = ("configmaps", "services", "deployments", "networkpolicies", "pods")


def unrelated(kind: str, n: int) -> list[dict[str, Any]]:
    labels = {"app": "someone-else", naming.LABEL_MAILSERVICE: "smtp"}  # a look-alike
    out = []
    for i in range(n):
        meta = {"name": f"other-{i:05d}", "namespace": f"team-{i % 7}", "labels": labels}
        if kind == "ConfigMap":
            out.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {"k": "v"}})
        elif kind == "Service":
            out.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": {}})
        else:
            out.append({"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": {}})
    return out


@pytest.fixture(scope="module")
def crowded() -> Iterator[EmulatorThread]:
    et = EmulatorThread().start()
    assert et.emulator is not None
    for resource, kind in (
        ("v1/configmaps", "ConfigMap"),
        ("v1/services", "Service"),
        ("apps/v1/deployments", "Deployment"),
    ):
        et.call(et.emulator.seed, resource, unrelated(kind, UNRELATED))
    yield et
    et.stop()


def test_unrelated_objects_never_reach_the_operator(crowded: EmulatorThread) -> None:
    emulator = crowded.emulator
    assert emulator is not None
    op = OperatorThread(crowded.url).start()
    kube = Client(crowded.url)
    try:
        # Among the unrelated: a look-alike in the MailService's own namespace.
        kube.apply(mailservice("team-0", "smtp"))
        eventually(lambda: ready(kube, "team-0", "smtp"))
        # Every list and watch of a child kind asked the API server for the operator's own.
        child_queries = [q for q in emulator.queries if q[2] in CHILD_PLURALS]
        kopf_watched = {q[2] for q in child_queries if q[0] == "kopf"}
        assert kopf_watched == set(CHILD_PLURALS)
        for client, verb, resource, selector, _ in child_queries:
            assert handlers.MANAGED_SELECTOR in selector.split(","), (client, verb, resource)
        # kopf's initial lists come in pages.
        assert all(
            limit == str(handlers.LIST_CHUNK)
            for client, verb, _, _, limit in emulator.queries
            if client == "kopf" and verb == "list"
        )
        # What reached the operator: its own children, not the 3 x 600 others.
        got = {r: emulator.items_served[("kopf", r)] for r in CHILD_PLURALS}
        assert sum(got.values()) < 50, got
        # The look-alike was left alone.
        other = kube.get("v1", "ConfigMap", "team-0", "other-00000")
        assert other is not None and other["metadata"]["labels"]["app"] == "someone-else"
    finally:
        kube.close()
        op.stop()


def test_the_emulator_serves_pages_that_add_up_to_the_whole_list(
    crowded: EmulatorThread,
) -> None:
    kube = Client(crowded.url)
    try:
        names: list[str] = []
        token = ""
        pages = 0
        while True:
            params = {"limit": "250", **({"continue": token} if token else {})}
            r = kube.http.get("/api/v1/configmaps", params=params)
            assert r.status_code == 200
            body = r.json()
            names += [o["metadata"]["name"] for o in body["items"]]
            pages += 1
            token = body["metadata"].get("continue", "")
            if not token:
                break
        everything = kube.http.get("/api/v1/configmaps").json()["items"]
        assert names == [o["metadata"]["name"] for o in everything]
        assert pages == -(-len(everything) // 250)
        selected = kube.http.get(
            "/api/v1/configmaps", params={"labelSelector": handlers.MANAGED_SELECTOR}
        ).json()["items"]
        assert all(o["metadata"]["name"].startswith("mailwarden-") for o in selected)
    finally:
        kube.close()
