"""The listener's configuration read from its own ConfigMap through the Kubernetes API, so that
a change reaches the pod within about a second, without the operator patching pods.

Why: the kubelet refreshes a mounted ConfigMap only at its periodic sync (a minute or more,
https://kubernetes.io/docs/concepts/configuration/configmap/#mounted-configmaps-are-updated-automatically),
and making it sooner meant patching pods, which needs `pods: patch` (that lets the operator
change any pod's image). Instead each listener Deployment runs under a ServiceAccount of its
own whose Role may only get, list and watch that one ConfigMap (`resourceNames`), with a
short-lived projected token (docs/decisions: listener reads its ConfigMap).

How: a daemon thread lists the ConfigMap (`fieldSelector=metadata.name=NAME`, which RBAC
requires for a list or watch limited by resourceNames), then watches it from that
resourceVersion, and writes each new text to a file of its own (atomically). The serving loop
already follows files: it sees that file change at its next poll (1 s) and reloads, keeping the
last good configuration if the new one is broken. The mounted file stays the fallback: when
the API cannot be reached, the kubelet's copy still arrives; `load` reads whichever of the two
changed last.

Standard library only (http.client, ssl, json): the listener pod's memory matters more than
a client library's conveniences. Bounded: one connection at a time, lines of at most
LINE_LIMIT bytes, a server-side timeout on each watch, and backoff between failures.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mailwarden.listener import config

if TYPE_CHECKING:
    import http.client

log = logging.getLogger(__name__)

# Where the operator mounts the projected token and the cluster's CA (children.py).
API_DIR = pathlib.Path("/var/run/secrets/mailwarden/api")
ENV_CONFIGMAP = "MAILWARDEN_CONFIGMAP"  # namespace/name
ENV_API_URL = "MAILWARDEN_API_URL"  # default: https://$KUBERNETES_SERVICE_HOST:PORT
ENV_API_DIR = "MAILWARDEN_API_DIR"  # default: API_DIR
LINE_LIMIT = 4 * config.MAX_BYTES + 65536  # a watch event: the object, JSON-escaped
WATCH_SECONDS = 290  # the API server ends each watch after this; then it is renewed
BACKOFF_MAX = 30.0
MIN_WATCH_SECONDS = 1.0


class ApiSource:
    """A main.Source: the ConfigMap's text as the API last said, else the mounted file."""

    def __init__(
        self,
        mounted: pathlib.Path,
        namespace: str,
        name: str,
        *,
        api_url: str,
        token_file: pathlib.Path,
        ca_file: pathlib.Path | None,
        cache: pathlib.Path,
        key: str | None = None,
    ) -> None:
        self.mounted = mounted
        self.namespace = namespace
        self.name = name
        self.api_url = api_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.cache = cache
        self.key = key or mounted.name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = b""
        # For tests and logs: how often the API delivered a new text.
        self.updates = 0
        self.connected = threading.Event()

    # -- main.Source -------------------------------------------------------------------------

    def paths(self) -> list[pathlib.Path]:
        return [self.cache, self.mounted]

    def load(self) -> config.ListenerConfig:
        return config.load(self.current())

    def current(self) -> pathlib.Path:
        """The newer of the API's copy and the mounted file (the kubelet's copy, later)."""
        try:
            api_time = self.cache.stat().st_mtime_ns
        except FileNotFoundError:
            return self.mounted
        try:
            mounted_time = self.mounted.stat().st_mtime_ns
        except FileNotFoundError:
            return self.cache
        return self.cache if api_time >= mounted_time else self.mounted

    # -- the watch ---------------------------------------------------------------------------

    def start(self) -> ApiSource:
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="configmap-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # Imported here, in the thread that follows the API: http.client brings the email
        # package with it (about 1 MiB of RSS), which a listener without an API to follow
        # (a host, a pod without the token) never needs.
        import http.client

        delay = 1.0
        failing = False
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                delay = 1.0
                failing = False
            except (OSError, http.client.HTTPException, ValueError, ApiError) as exc:
                if not failing:
                    log.warning(
                        "cannot follow ConfigMap %s/%s through the API (the mounted file "
                        "still applies): %s",
                        self.namespace,
                        self.name,
                        exc,
                    )
                failing = True
                self.connected.clear()
                self._stop.wait(delay)
                delay = min(BACKOFF_MAX, delay * 2)

    def _list_and_watch(self) -> None:
        selector = {"fieldSelector": f"metadata.name={self.name}"}
        listing = self._get_json(self._path(selector))
        for item in listing.get("items") or []:
            self._took(item)
        version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        self.connected.set()
        while not self._stop.is_set():
            query = {
                **selector,
                "watch": "true",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_SECONDS),
                "resourceVersion": version,
            }
            began = time.monotonic()
            version = self._watch(self._path(query), version)
            if time.monotonic() - began < MIN_WATCH_SECONDS:
                # A watch that ends at once (a proxy, a server that does not stream) is not
                # renewed in a tight loop.
                self._stop.wait(MIN_WATCH_SECONDS)

    def _watch(self, path: str, version: str) -> str:
        conn, response = self._request(path, timeout=WATCH_SECONDS + 30)
        try:
            while not self._stop.is_set():
                line = response.readline(LINE_LIMIT + 1)
                if not line:
                    return version  # the server ended the watch: renew it
                if len(line) > LINE_LIMIT:
                    raise ValueError("watch event too large")
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    # 410 Gone: the resourceVersion is too old; list again.
                    raise ApiError(f"watch error: {obj.get('message') or obj}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED"):
                    self._took(obj)
            return version
        finally:
            conn.close()

    def _took(self, obj: Mapping[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("name") != self.name:
            return  # a server that ignored the field selector
        text = (obj.get("data") or {}).get(self.key)
        if not isinstance(text, str):
            return
        data = text.encode()
        if data == self._last:
            return
        tmp = self.cache.with_name(self.cache.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.cache)
        self._last = data
        self.updates += 1
        log.info("configuration from ConfigMap %s/%s (via the API)", self.namespace, self.name)

    # -- HTTP --------------------------------------------------------------------------------

    def _path(self, query: Mapping[str, str]) -> str:
        base = urllib.parse.urlsplit(self.api_url).path.rstrip("/")
        ns = urllib.parse.quote(self.namespace, safe="")
        return f"{base}/api/v1/namespaces/{ns}/configmaps?{urllib.parse.urlencode(query)}"

    def _get_json(self, path: str) -> dict[str, Any]:
        conn, response = self._request(path, timeout=30)
        try:
            body = response.read(LINE_LIMIT + 1)
        finally:
            conn.close()
        if len(body) > LINE_LIMIT:
            raise ValueError("list answer too large")
        result: dict[str, Any] = json.loads(body)
        return result

    def _request(
        self, path: str, *, timeout: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        import http.client  # see _run

        url = urllib.parse.urlsplit(self.api_url)
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            conn = http.client.HTTPSConnection(
                url.hostname or "", url.port or 443, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=timeout)
        # Read for every connection: the kubelet rotates the projected token.
        token = self.token_file.read_text().strip()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": "mailwarden-listener",
        }
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status != 200:
            body = response.read(4096)
            conn.close()
            raise ApiError(f"{response.status} {response.reason}: {body[:300]!r}")
        return conn, response


class ApiError(Exception):
    pass


def from_environment(
    mounted: pathlib.Path, env: Mapping[str, str] | None = None
) -> ApiSource | None:
    """An ApiSource when the pod is set up for one (the ConfigMap named in the environment,
    a token mounted), else None: the mounted file alone, as on a host."""
    env = os.environ if env is None else env
    api_dir = pathlib.Path(env.get(ENV_API_DIR) or API_DIR)
    target = env.get(ENV_CONFIGMAP, "")
    namespace, _, name = target.partition("/")
    token = api_dir / "token"
    if not (namespace and name) or not token.is_file():
        return None
    url = env.get(ENV_API_URL)
    if not url:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host:
            return None
        host = f"[{host}]" if ":" in host else host
        url = f"https://{host}:{port or 443}"
    ca = api_dir / "ca.crt"
    cache = pathlib.Path(env.get("TMPDIR", "/tmp")) / "mailwarden" / mounted.name
    return ApiSource(
        mounted,
        namespace,
        name,
        api_url=url,
        token_file=token,
        ca_file=ca if ca.is_file() else None,
        cache=cache,
    )
