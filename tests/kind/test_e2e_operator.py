"""The operator scenarios on a real cluster (kind), including what the emulator cannot show:
garbage collection, the CRD schema and CEL rules at admission, real pods becoming available,
config reloads without pod restarts, a rolling restart replacing pods.

Opt-in: runs only against the kube context `kind-mailwarden` (never any other context), with
the CRDs from deploy/crds applied and the listener image loaded into the cluster
(MAILWARDEN_LISTENER_IMAGE, as the Helm chart sets it). The operator runs from this checkout
as `mailwarden operator` unless MAILWARDEN_E2E_OPERATOR=external says one is installed.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from mailwarden.operator import credentials, kube, models
from tests.operator.resources import MW, allowed, condition, group, ready
from tests.operator.resources import mailservice as _mailservice
from tests.support.operator import eventually

CONTEXT = "kind-mailwarden"
ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kind


def _why_not() -> str | None:
    if shutil.which("kind") is None:
        return "no `kind` binary on PATH (no cluster on this machine)"
    try:
        contexts = credentials.contexts()
    except Exception as exc:
        return f"no kubeconfig ({exc})"
    if CONTEXT not in contexts:
        return f"no kube context named {CONTEXT} (`kind create cluster --name mailwarden`)"
    return None


class KindClient:
    """The same calls the emulator tests make, against the real cluster."""

    def __init__(self) -> None:
        self.api = kube.Api.from_environment(context=CONTEXT)

    def _run(self, coro: Any) -> Any:
        async def once() -> Any:
            try:
                return await coro
            finally:
                await self.api.aclose()  # its connections belong to this call's event loop

        return asyncio.run(once())

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        live = self.get(
            obj["apiVersion"],
            obj["kind"],
            obj["metadata"].get("namespace"),
            obj["metadata"]["name"],
        )
        if live is None:
            coll = kube.collection(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))
            return self._run(self.api.create(coll, obj))  # type: ignore[no-any-return]
        return self._run(self.api.patch(kube.path_of(obj), obj))  # type: ignore[no-any-return]

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return self._run(
            self.api.get(
                kube.path_of(
                    {
                        "apiVersion": api_version,
                        "kind": kind,
                        "metadata": {"name": name, "namespace": namespace},
                    }
                )
            )
        )  # type: ignore[no-any-return]

    def list(
        self, api_version: str, kind: str, namespace: str, selector: str | None = None
    ) -> list[dict[str, Any]]:
        return self._run(self.api.list(kube.collection(api_version, kind, namespace), selector))  # type: ignore[no-any-return]

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Any
    ) -> dict[str, Any]:
        return self._run(
            self.api.patch(
                kube.path_of(
                    {
                        "apiVersion": api_version,
                        "kind": kind,
                        "metadata": {"name": name, "namespace": namespace},
                    }
                ),
                patch,
            )
        )  # type: ignore[no-any-return]

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self._run(
            self.api.delete(
                kube.path_of(
                    {
                        "apiVersion": api_version,
                        "kind": kind,
                        "metadata": {"name": name, "namespace": namespace},
                    }
                )
            )
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[KindClient]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    client = KindClient()
    for crd in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(crd.read_text()):
            if doc:
                client.apply(doc)
    proc = None
    if os.environ.get("MAILWARDEN_E2E_OPERATOR") != "external":
        proc = _start_operator()
    yield client
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start_operator() -> subprocess.Popen[bytes]:
    config = yaml.safe_load(pathlib.Path(credentials.DEFAULT_KUBECONFIG).expanduser().read_text())
    config["current-context"] = CONTEXT
    path = pathlib.Path(tempfile.mkdtemp()) / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    # Run from this host, the operator cannot resolve the cluster's Service names, so it
    # cannot probe backends (an operator installed in the cluster does).
    env = {**os.environ, "KUBECONFIG": str(path), "MAILWARDEN_BACKEND_PROBE_SECONDS": "0"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailwarden.cli",
            "operator",
            "--liveness",
            "http://127.0.0.1:18080/healthz",
            "--metrics-port",
            "19091",
        ],
        env=env,
    )


def mailservice(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    """A MailService whose backend exists in every cluster (the API server's Service), so
    that an operator installed in the cluster, which probes backends, finds it reachable;
    these scenarios relay no mail."""
    spec.setdefault("backend", {"host": "kubernetes.default.svc.cluster.local", "port": 443})
    return _mailservice(ns, name, **spec)


@pytest.fixture
def ns(cluster: KindClient) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.delete("v1", "Namespace", None, name)


def pod_uids(cluster: KindClient, ns: str, name: str) -> set[str]:
    pods = cluster.list("v1", "Pod", ns, f"mailwarden.io/mailservice={name}")
    return {p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}


def test_a_mailservice_runs_real_listener_pods(cluster: KindClient, ns: str) -> None:
    cluster.apply(mailservice(ns, "smtp", replicas=2, expose={"type": "NodePort"}))
    obj = eventually(lambda: ready(cluster, ns, "smtp"), timeout=180, interval=1)  # type: ignore[arg-type]
    assert obj["status"]["state"] == "Running"
    assert len(pod_uids(cluster, ns, "smtp")) == 2


def test_a_group_change_reloads_without_restarting_pods(cluster: KindClient, ns: str) -> None:
    cluster.apply(group(ns, "office", {"network": "192.0.2.0/24"}))
    cluster.apply(
        mailservice(
            ns, "imap", service="IMAP", access={"allowFrom": "office"}, expose={"type": "NodePort"}
        )
    )
    eventually(lambda: ready(cluster, ns, "imap"), timeout=180, interval=1)  # type: ignore[arg-type]
    before = pod_uids(cluster, ns, "imap")
    cluster.apply(group(ns, "office", {"network": "198.51.100.0/24"}))
    eventually(lambda: _equal(allowed(cluster, ns, "imap"), ("198.51.100.0/24",)), timeout=30)  # type: ignore[arg-type]
    assert pod_uids(cluster, ns, "imap") == before


def _equal(a: object, b: object) -> None:
    assert a == b, (a, b)


def test_a_restart_replaces_every_pod(cluster: KindClient, ns: str) -> None:
    cluster.apply(
        mailservice(ns, "pop", service="POP3", expose={"type": "NodePort"}, drainSeconds=1)
    )
    eventually(lambda: ready(cluster, ns, "pop"), timeout=180, interval=1)  # type: ignore[arg-type]
    before = pod_uids(cluster, ns, "pop")
    cluster.patch(
        MW,
        "MailService",
        ns,
        "pop",
        {"metadata": {"annotations": {models.RESTART_ANNOTATION: "2026-01-01T00:00:00Z"}}},
    )
    eventually(lambda: _disjoint(pod_uids(cluster, ns, "pop"), before), timeout=180, interval=1)


def _disjoint(a: set[str], b: set[str]) -> None:
    assert a and not (a & b), (a, b)


def test_manual_start_and_stop(cluster: KindClient, ns: str) -> None:
    cluster.apply(
        mailservice(ns, "news", service="NNTP", startup="Manual", expose={"type": "NodePort"})
    )
    eventually(lambda: ready(cluster, ns, "news", reason="Stopped"), timeout=60, interval=1)  # type: ignore[arg-type]
    cluster.patch(
        MW,
        "MailService",
        ns,
        "news",
        {"metadata": {"annotations": {models.STATE_ANNOTATION: models.RUNNING}}},
    )
    eventually(lambda: ready(cluster, ns, "news"), timeout=180, interval=1)  # type: ignore[arg-type]


def test_deleting_a_mailservice_garbage_collects_its_children(cluster: KindClient, ns: str) -> None:
    cluster.apply(mailservice(ns, "gone", expose={"type": "NodePort"}))
    eventually(lambda: ready(cluster, ns, "gone", reason="Running"), timeout=180, interval=1)  # type: ignore[arg-type]
    cluster.delete(MW, "MailService", ns, "gone")
    eventually(
        lambda: _equal(cluster.get("apps/v1", "Deployment", ns, "mailwarden-gone"), None),
        timeout=60,
        interval=1,
    )
    assert cluster.get("v1", "ConfigMap", ns, "mailwarden-gone") is None


def test_listen_conflict_and_takeover(cluster: KindClient, ns: str) -> None:
    cluster.apply(
        mailservice(
            ns,
            "a-first",
            service="HTTP",
            listen=[{"address": "172.31.255.10"}],
            expose={"type": "NodePort"},
        )
    )
    eventually(lambda: ready(cluster, ns, "a-first"), timeout=180, interval=1)  # type: ignore[arg-type]
    cluster.apply(
        mailservice(
            ns,
            "b-second",
            service="HTTP",
            listen=[{"address": "172.31.255.10"}],
            expose={"type": "NodePort"},
        )
    )
    eventually(
        lambda: ready(cluster, ns, "b-second", reason="ListenConflict"), timeout=60, interval=1
    )  # type: ignore[arg-type]
    cluster.delete(MW, "MailService", ns, "a-first")
    eventually(lambda: ready(cluster, ns, "b-second"), timeout=180, interval=1)  # type: ignore[arg-type]


def test_the_schema_refuses_anonymous_smtp_at_admission(cluster: KindClient, ns: str) -> None:
    """The CRD's CEL rule, which the emulator does not evaluate."""
    with pytest.raises(kube.ApiError) as refused:
        cluster.apply(mailservice(ns, "bad", access={"anonymous": True}))
    assert refused.value.status == 422
    assert "NNTP" in refused.value.message


def test_a_missing_group_appears_later(cluster: KindClient, ns: str) -> None:
    cluster.apply(
        mailservice(
            ns,
            "sub",
            service="Submission",
            access={"allowFrom": "late"},
            expose={"type": "NodePort"},
        )
    )
    obj = eventually(
        lambda: ready(cluster, ns, "sub", reason="IPAddressGroupNotFound"),  # type: ignore[arg-type]
        timeout=60,
        interval=1,
    )
    assert condition(obj, "Stalled")["status"] == "True"
    cluster.apply(group(ns, "late", {"host": "192.0.2.1"}))
    eventually(lambda: ready(cluster, ns, "sub"), timeout=180, interval=1)  # type: ignore[arg-type]
