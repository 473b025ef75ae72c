"""/metrics, /healthz and /readyz on their own port, served by uvicorn in the listener's
event loop; more routes (the live figures' /status) plug in as path -> callable returning
(status, body, content type)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import prometheus_client
import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# A route's answer: HTTP status, body, content type. Called in the event loop: no blocking.
Route = Callable[[], tuple[int, bytes, str]]


class HealthApp:
    def __init__(
        self,
        registry: prometheus_client.CollectorRegistry,
        ready: Callable[[], bool],
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.routes = dict(routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            status, body = 200, prometheus_client.generate_latest(self.registry)
            ctype = prometheus_client.CONTENT_TYPE_LATEST
        elif path == "/healthz":
            status, body, ctype = 200, b"ok\n", "text/plain"
        elif path in self.routes:
            status, body, ctype = self.routes[path]()
        elif path == "/readyz":
            ok = self.ready()
            status, body = (200, b"ready\n") if ok else (503, b"not ready\n")
            ctype = "text/plain"
        else:
            status, body, ctype = 404, b"not found\n", "text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the listener owns SIGTERM (drain) and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: HealthApp, host: str | None, port: int) -> EmbeddedServer:
    return EmbeddedServer(
        uvicorn.Config(
            app,
            host=host or "0.0.0.0",
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="none",
        )
    )
