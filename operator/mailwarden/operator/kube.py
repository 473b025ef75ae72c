"""The operator's edge to the Kubernetes API: raw JSON objects over aiohttp in the operator's
event loop, with the credentials of credentials.py (in-cluster service account with token
rotation, or a kubeconfig context). Everything above this module deals in plain dicts."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import ssl
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import aiohttp
import msgspec

from mailwarden.operator import credentials, models

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# The kubelet renews a projected service-account token long before it expires (at 80% of its
# life, an hour at least): the file is read again this often.
TOKEN_SECONDS = 10.0

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
    """A small async JSON client on aiohttp, in the operator's own event loop. It replaced the
    official client, whose blocking requests cost a worker thread and a hop back to the loop
    each (a fifth of the operator's CPU at a thousand MailServices, bench.operator_scale,
    profiled) and whose import alone was 16 MiB of the operator's RSS. Create it at start-up,
    not at import; `aclose` it in the loop that used it."""

    # Requests in flight at once, like the thread pool it replaces bounded them: the API
    # server's priority and fairness sees one client, not a burst of hundreds.
    CONNECTIONS = 16

    def __init__(self, creds: credentials.Credentials) -> None:
        self._creds = creds
        self._base = creds.server.rstrip("/")
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: tuple[float, str | None] | None = None  # (when read, the token)

    @classmethod
    def from_environment(cls, context: str | None = None) -> Api:
        """In a pod: the service account. Elsewhere: the current (or named) kube context."""
        return cls(credentials.from_environment(context))

    @classmethod
    def for_url(cls, url: str) -> Api:
        return cls(credentials.Credentials(server=url))

    def _ssl(self) -> ssl.SSLContext | bool:
        creds = self._creds
        if not self._base.startswith("https:"):
            return False
        context = ssl.create_default_context(cafile=creds.ca_file, cadata=creds.ca_data)
        if creds.cert_file:
            context.load_cert_chain(creds.cert_file, creds.key_file)
        if creds.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop or self._http.closed:
            # One session per event loop (tests and CLIs may run several loops in turn).
            connector = aiohttp.TCPConnector(limit=self.CONNECTIONS, ssl=self._ssl())
            self._http = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=30),
                # The operator's own requests are named in the API server's audit log (kopf's
                # say kopf/VERSION).
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        if self._http is not None and not self._http.closed:
            await self._http.close()
        self._http = None

    def close(self) -> None:
        """After the loop has ended (an aclose in it is better): forget the session."""
        if self._http is not None and not self._http.closed:
            self._http.detach()
        self._http = None

    def _bearer(self) -> str | None:
        """The token; a token file (the pod's projected service-account token, which the
        kubelet rotates) is read again at most every TOKEN_SECONDS."""
        creds = self._creds
        if creds.token_file is None:
            return creds.token
        now = time.monotonic()
        if self._token is None or now - self._token[0] > TOKEN_SECONDS:
            try:
                token = pathlib.Path(creds.token_file).read_text().strip() or None
            except OSError:
                token = self._token[1] if self._token else None  # keep the last one
            self._token = (now, token)
        return self._token[1]

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self._creds.username is not None:
            auth = aiohttp.BasicAuth(self._creds.username, self._creds.password or "")
            headers["Authorization"] = auth.encode()
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        data = None if body is None else msgspec.json.encode(body)
        try:
            async with self._session().request(
                method,
                self._base + path,
                params=dict(query) if query else None,
                data=data,
                headers=self._headers(content_type),
                server_hostname=self._creds.tls_server_name or None,
            ) as response:
                raw = await response.read()
                status = response.status
                reason = response.reason or ""
        except (aiohttp.ClientError, TimeoutError) as exc:  # no answer: retriable
            raise ApiError(0, type(exc).__name__, str(exc)) from None
        try:
            payload = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            payload = None
        if status >= 400:
            if isinstance(payload, dict):
                raise ApiError(
                    status, str(payload.get("reason") or reason), str(payload.get("message", ""))
                )
            raise ApiError(status, reason, raw.decode(errors="replace"))
        if payload is None and raw:
            raise ApiError(status, "BadResponse", "the API server's answer is not JSON")
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
