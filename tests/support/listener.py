"""A real listener in a background thread with its own (uvloop) event loop, so tests can
drive it with blocking clients (smtplib, imaplib, poplib, nntplib, raw sockets)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import uvloop

from mailwarden.listener import config as lc
from mailwarden.listener import server

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# The event loops the listener runs on: uvloop where it is installed (mailwarden's `run`), and
# plain asyncio, its fallback. The TLS hand-over after start_tls is tested on both.
EVENT_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


class ListenerThread:
    def __init__(self, cfg: lc.ListenerConfig, event_loop: str = "uvloop") -> None:
        self.cfg = cfg
        self.loop = EVENT_LOOPS[event_loop]()
        self.listener = server.Listener(cfg)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ListenerThread:
        self._thread.start()
        self.call(self.listener.start())
        return self

    def call(self, coro: Any, timeout: float = 30) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = 10) -> T:
        """Run a plain function in the listener's loop (to read state safely)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the test
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(job)
        return fut.result(timeout)

    def reload(self, cfg: lc.ListenerConfig) -> None:
        self.call(self.listener.reload(cfg))

    def metric(self, name: str, **labels: str) -> float:
        value = self.listener.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def wait_metric(self, name: str, expected: float, timeout: float = 10, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name, **labels)
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.02)

    def active(self, service: str) -> int:
        return int(self.metric("mailwarden_connections_active", service=service))

    def stop(self, drain: float = 0) -> int:
        cut: int = 0
        if self._thread.is_alive():
            cut = self.call(self.listener.drain(drain))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        return cut


def service(
    name: str = "test/svc",
    kind: str = "SMTP",
    *,
    port: int | None = None,
    address: str = "127.0.0.1",
    backend_port: int = 1,
    backend_host: str = "127.0.0.1",
    **fields: Any,
) -> lc.ServiceConfig:
    """A ServiceConfig for tests with a free port unless one is given."""
    return lc.build(
        lc.ServiceConfig,
        {
            "name": name,
            "service": kind,
            "listen": [{"address": address, "port": port or free_port(address)}],
            "backend": {"host": backend_host, "port": backend_port, **fields.pop("backend", {})},
            **fields,
        },
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
