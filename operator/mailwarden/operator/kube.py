"""The operator's edge to the Kubernetes API: raw JSON objects over the official client's
connection (kubeconfig or in-cluster credentials, token refresh), run in worker threads so the
kopf event loop never blocks. Everything above this module deals in plain dicts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import kubernetes

from mailwarden.operator import models

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"

# (apiVersion, kind) -> plural; every kind the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("v1", "Namespace"): "namespaces",
    ("v1", "Pod"): "pods",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    (models.API_VERSION, "MailService"): "mailservices",
    (models.API_VERSION, "IPAddressGroup"): "ipaddressgroups",
}


def _version() -> str:
    try:
        return metadata.version("mailwarden")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


USER_AGENT = f"mailwarden-operator/{_version()}"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retriable(self) -> bool:
        # Conflicts, throttling and server trouble pass; the rest needs someone to act.
        return self.status in (409, 429) or self.status >= 500 or self.status == 0


def collection(api_version: str, kind: str, namespace: str | None) -> str:
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def path_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{collection(obj['apiVersion'], obj['kind'], meta.get('namespace'))}/{meta['name']}"


class Api:
    """A small async JSON client. Create it at start-up, not at import."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        # The operator's own requests are named in the API server's audit log (kopf's say
        # kopf/VERSION).
        client.user_agent = USER_AGENT
        self._client = client

    @classmethod
    def from_environment(cls, context: str | None = None) -> Api:
        """In a pod: the service account. Elsewhere: the current (or named) kube context."""
        configuration = kubernetes.client.Configuration()
        incluster = kubernetes.config.load_incluster_config
        kubeconfig = kubernetes.config.load_kube_config
        try:
            incluster(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubeconfig(context=context, client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def for_url(cls, url: str) -> Api:
        configuration = kubernetes.client.Configuration(host=url)
        return cls(kubernetes.client.ApiClient(configuration))

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        return await asyncio.to_thread(self._request, method, path, body, query, content_type)

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        query: Mapping[str, str] | None,
        content_type: str,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._client.call_api(*params, _request_timeout=30)
            data = response.read()  # type: ignore[no-untyped-call]
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError(exc.status or 0, str(exc.reason), str(exc.body)) from None
        except Exception as exc:  # urllib3 connection trouble: retriable
            raise ApiError(0, type(exc).__name__, str(exc)) from None
        payload = json.loads(data) if data else None
        if response.status >= 400:
            reason = payload.get("reason", "") if isinstance(payload, dict) else ""
            message = payload.get("message", "") if isinstance(payload, dict) else str(data)
            raise ApiError(response.status, str(reason), str(message))
        return payload

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, query=query)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", path, body=dict(body))
        return result

    async def patch(
        self, path: str, body: Any, *, content_type: str = MERGE_PATCH
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", path, body=body, content_type=content_type
        )
        return result

    async def delete(self, path: str) -> bool:
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
