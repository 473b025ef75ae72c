"""The real operator (kopf, the project's handlers) in its own thread and event loop, pointed
at a Kubernetes API emulator; and a small blocking client for the tests to act as a user."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import kopf

from mailwarden.operator import kube, reconcile
from mailwarden.operator import settings as settings_mod

_target: dict[str, str] = {}
T = TypeVar("T")


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_target["url"], insecure=True)


class OperatorThread:
    def __init__(
        self,
        url: str,
        settings: settings_mod.Settings | None = None,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        """namespaces: watch only these, as `mailwarden operator --namespace` does; default
        every namespace."""
        self.url = url
        self.namespaces = namespaces
        # No backend probes by default: the scenarios name backends (postfix.mail.svc) that
        # do not exist here. tests/operator/test_backend_probe.py turns them on. No live
        # figures either (no pods answer); tests/operator/test_live_figures.py turns them on.
        self.settings = settings or settings_mod.Settings(
            image="mailwarden:test", backend_probe_seconds=0, figures_seconds=0
        )
        self.api = kube.Api.for_url(url)
        # The operator's state, for tests that wait on it (read only, from the test thread).
        self.ctx = reconcile.Context(api=self.api, settings=self.settings)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def start(self) -> OperatorThread:
        from mailwarden.operator import handlers  # noqa: F401  (registers the handlers)

        _target["url"] = self.url
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"the operator did not get ready within 15 s: {self._error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        self.api.close()
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop within 15 s")

    def _run(self) -> None:
        memo = kopf.Memo(ctx=self.ctx)
        try:
            asyncio.run(
                kopf.operator(
                    standalone=True,
                    clusterwide=not self.namespaces,
                    namespaces=list(self.namespaces),
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    memo=memo,
                )
            )
        except BaseException as exc:  # reported by start() if it never got ready
            self._error = exc
            raise


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `check` until it returns without an AssertionError, or fail with its last one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


class Client:
    """What a user does with kubectl, as plain HTTP against the emulator."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
        plural = kube.PLURALS[(api_version, kind)]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        base = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        base = self.path(obj["apiVersion"], obj["kind"], meta["namespace"])
        live = self.http.get(f"{base}/{meta['name']}")
        if live.status_code == 404:
            r = self.http.post(base, json=obj)
        else:
            r = self.http.patch(
                f"{base}/{meta['name']}",
                json={k: v for k, v in obj.items() if k != "status"},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        assert r.status_code < 300, r.text
        result: dict[str, Any] = r.json()
        return result

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        r = self.http.get(self.path(api_version, kind, namespace, name))
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def list(self, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        r = self.http.get(self.path(api_version, kind, namespace))
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        r = self.http.patch(
            self.path(api_version, kind, namespace, name),
            json=patch,
            headers={"Content-Type": content_type},
        )
        assert r.status_code < 300, r.text
        result: dict[str, Any] = r.json()
        return result

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        r = self.http.delete(self.path(api_version, kind, namespace, name))
        assert r.status_code < 300, r.text
