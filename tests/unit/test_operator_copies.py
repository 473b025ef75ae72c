"""What the operator keeps of the objects it watches: no metadata.managedFields (the API
server's field ownership records, often as large as the rest of an object; see
https://kubernetes.io/docs/reference/using-api/server-side-apply/#field-management), but
everything it compares and reports from (spec, status, resourceVersion, owners)."""

from __future__ import annotations

from typing import Any

from mailwarden.operator import kube, reconcile

MANAGED = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:replicas": {}, "f:readyReplicas": {}}},
        "subresource": "status",
    }
]


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "mailwarden-a",
            "namespace": "ns",
            "resourceVersion": "7",
            "ownerReferences": [{"kind": "MailService", "name": "a", "uid": "u1"}],
            "managedFields": MANAGED,
        },
        "spec": {"replicas": 2},
        "status": {"replicas": 2, "readyReplicas": 1},
    }


def test_the_child_cache_keeps_no_managed_fields() -> None:
    ctx = reconcile.Context(api=kube.Api.for_url("http://127.0.0.1:9"))
    original = _deployment()
    ctx.remember(original)
    kept = ctx.recall("Deployment", "ns", "mailwarden-a")
    assert kept is not None
    assert "managedFields" not in kept["metadata"]
    expected = _deployment()
    del expected["metadata"]["managedFields"]
    assert kept == expected
    assert original["metadata"]["managedFields"] == MANAGED  # the caller's object untouched


def test_without_managed_fields_leaves_other_objects_as_they_are() -> None:
    plain = {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}}
    assert reconcile.without_managed_fields(plain) is plain
    assert reconcile.without_managed_fields({"kind": "X"}) == {"kind": "X"}
