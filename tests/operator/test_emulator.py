"""The API emulator's own promises (kubeemu/emulator.py), over real HTTP: what the operator
tests rely on must behave as a real API server does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kubeemu.emulator import EmulatorThread

CM = "/api/v1/namespaces/ns/configmaps"
MS = "/apis/mailwarden.io/v1alpha1/namespaces/ns/mailservices"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    et = EmulatorThread().start()
    with httpx.Client(base_url=et.url, timeout=5) as client:
        yield client
    et.stop()


def cm(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"a": "1"},
    }


def test_created_objects_get_uid_resource_version_generation_and_timestamp(
    api: httpx.Client,
) -> None:
    meta = api.post(CM, json=cm("stamped")).json()["metadata"]
    assert meta["uid"] and meta["resourceVersion"].isdigit() and meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z") and meta["namespace"] == "ns"
    assert api.post(CM, json=cm("stamped")).status_code == 409


def test_a_no_op_patch_changes_nothing_and_a_real_one_bumps_the_version(api: httpx.Client) -> None:
    rv = api.post(CM, json=cm("noop")).json()["metadata"]["resourceVersion"]
    same = api.patch(f"{CM}/noop", json={"data": {"a": "1"}}, headers=MERGE).json()
    assert same["metadata"]["resourceVersion"] == rv
    changed = api.patch(f"{CM}/noop", json={"data": {"a": "2"}}, headers=MERGE).json()
    assert int(changed["metadata"]["resourceVersion"]) > int(rv)


def test_a_failed_json_patch_test_answers_422(api: httpx.Client) -> None:
    api.post(CM, json=cm("tested"))
    r = api.patch(
        f"{CM}/tested",
        headers=JSON_PATCH,
        json=[{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}],
    )
    assert r.status_code == 422


def test_a_stale_put_answers_409(api: httpx.Client) -> None:
    obj = api.post(CM, json=cm("put")).json()
    api.patch(f"{CM}/put", json={"data": {"a": "2"}}, headers=MERGE)
    assert api.put(f"{CM}/put", json=obj).status_code == 409


def test_label_selectors_filter_lists(api: httpx.Client) -> None:
    api.post(CM, json=cm("red", color="red"))
    api.post(CM, json=cm("blue", color="blue"))
    names = {
        i["metadata"]["name"]
        for i in api.get(CM, params={"labelSelector": "color=red"}).json()["items"]
    }
    assert names == {"red"}
    names = {
        i["metadata"]["name"]
        for i in api.get(CM, params={"labelSelector": "color,color!=red"}).json()["items"]
    }
    assert names == {"blue"}


def test_the_status_subresource_and_the_main_resource_each_keep_to_their_part(
    api: httpx.Client,
) -> None:
    body = {
        "apiVersion": "mailwarden.io/v1alpha1",
        "kind": "MailService",
        "metadata": {"name": "s"},
        "spec": {"service": "SMTP", "backend": {"host": "b"}},
        "status": {"state": "Running"},
    }
    created = api.post(MS, json=body).json()
    assert "status" not in created
    assert created["spec"]["startup"] == "Automatic"  # the CRD's default
    after = api.patch(
        f"{MS}/s/status",
        headers=MERGE,
        json={"spec": {"replicas": 5}, "status": {"state": "Stopped"}},
    ).json()
    assert after["status"] == {"state": "Stopped"} and after["spec"]["replicas"] == 1
    assert after["metadata"]["generation"] == 1
    main = api.patch(
        f"{MS}/s", headers=MERGE, json={"spec": {"replicas": 2}, "status": {"state": "Running"}}
    ).json()
    assert main["status"] == {"state": "Stopped"} and main["metadata"]["generation"] == 2


def test_a_watch_from_a_resource_version_misses_nothing(api: httpx.Client) -> None:
    rv = api.get(CM).json()["metadata"]["resourceVersion"]
    api.post(CM, json=cm("between"))  # after the list, before the watch
    events: list[str] = []
    started = threading.Event()

    def watch() -> None:
        params = {"watch": "true", "resourceVersion": rv}
        with httpx.stream("GET", f"{api.base_url}{CM}", params=params, timeout=5) as stream:
            started.set()
            for line in stream.iter_lines():
                if line:
                    event = json.loads(line)
                    events.append(f"{event['type']} {event['object']['metadata']['name']}")
                    if len(events) == 2:
                        return

    thread = threading.Thread(target=watch)
    thread.start()
    started.wait(5)
    api.post(CM, json=cm("after"))
    thread.join(10)
    assert events == ["ADDED between", "ADDED after"]


def test_finalizers_hold_a_deletion_until_removed(api: httpx.Client) -> None:
    obj = cm("held")
    obj["metadata"]["finalizers"] = ["example.com/x"]
    api.post(CM, json=obj)
    marked = api.delete(f"{CM}/held").json()
    assert marked["metadata"]["deletionTimestamp"]
    assert api.get(f"{CM}/held").status_code == 200
    api.patch(f"{CM}/held", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert api.get(f"{CM}/held").status_code == 404
