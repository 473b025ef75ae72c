"""The listener as a process runs it (`mailwarden.listener.main.serve` with a config file):
/metrics, /healthz and /readyz over HTTP, following edits of the file, refusing a broken one."""

from __future__ import annotations

import asyncio
import os
import pathlib
import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import uvloop

from mailwarden.listener import config as lc
from mailwarden.listener import main, server
from tests.support import refusals
from tests.support.listener import free_port, service, wait_until
from tests.support.raw_tcp import connect, greeter, read_line

GREETING = b"220 process-test ready\r\n"
DENIED = refusals.line("smtp", "denied")

METRICS = (
    "mailwarden_connections_active",
    "mailwarden_connections_total",
    "mailwarden_relayed_bytes_total",
    "mailwarden_session_duration_seconds_bucket",
    "mailwarden_nntp_auth_total",
    "mailwarden_connection_cap",
    "mailwarden_config_reloads_total",
    "mailwarden_config_last_success_timestamp_seconds",
    "mailwarden_draining",
)


class Served:
    """`main.serve` in a thread with its own event loop, as `mailwarden listener` runs it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.loop = uvloop.new_event_loop()
        self.stop = asyncio.Event()
        self.listener: server.Listener | None = None
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._source = main.FileSource(path)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.status = self.loop.run_until_complete(
            main.serve(self._source, stop=self.stop, started=self._started, poll=0.05)
        )

    def _started(self, listener: server.Listener) -> None:
        self.listener = listener

    def start(self) -> Served:
        self._thread.start()
        wait_until(lambda: self.listener is not None, what="the listener to start")
        return self

    def metric(self, name: str, **labels: str) -> float:
        assert self.listener is not None
        value = self.listener.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop.set)
            self._thread.join(20)


def write(path: pathlib.Path, text: str) -> None:
    # Replace the file at once, as Kubernetes swaps a mounted ConfigMap: the listener polls,
    # and a half-written file (empty, say) is a different, valid configuration.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def served(tmp_path, backend) -> Iterator[tuple[Served, pathlib.Path, lc.ListenerConfig]]:
    back = backend(greeter(GREETING))
    cfg = lc.ListenerConfig(
        services=(service("mail/smtp", "SMTP", backend_port=back.port, allow=("127.0.0.1/32",)),),
        metrics=lc.Metrics(address="127.0.0.1", port=free_port()),
        drain_seconds=3,
    )
    path = tmp_path / "listener.yaml"
    write(path, lc.dumps(cfg))
    s = Served(path).start()
    yield s, path, cfg
    s.shutdown()


def url(cfg: lc.ListenerConfig, path: str) -> str:
    return f"http://127.0.0.1:{cfg.metrics.port}{path}"


def get(cfg: lc.ListenerConfig, path: str) -> httpx.Response:
    # uvicorn binds a moment after the listener has started.
    deadline = time.monotonic() + 10
    while True:
        try:
            return httpx.get(url(cfg, path), timeout=5)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_metrics_healthz_and_readyz_are_served_over_http(served):
    s, _, cfg = served
    port = cfg.services[0].listen[0].port
    with connect(port) as c:
        assert read_line(c) == GREETING
    with connect(port, source="127.0.0.9") as c:
        assert read_line(c) == DENIED
    wait_until(lambda: s.metric("mailwarden_connections_active", service="mail/smtp") == 0)
    health = get(cfg, "/healthz")
    assert (health.status_code, health.text) == (200, "ok\n")
    ready = get(cfg, "/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert get(cfg, "/nothing-here").status_code == 404
    metrics = get(cfg, "/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in METRICS:
        assert f"\n{name}" in text, name
    assert 'mailwarden_connections_total{outcome="accepted",service="mail/smtp"} 1.0' in text
    assert 'mailwarden_connections_total{outcome="denied",service="mail/smtp"} 1.0' in text
    assert 'mailwarden_config_reloads_total{result="success"} 1.0' in text
    assert (
        'mailwarden_relayed_bytes_total{direction="downstream",service="mail/smtp"} '
        f"{float(len(GREETING))}" in text
    )


@pytest.mark.parametrize(
    "broken",
    [
        "services: [",  # not YAML
        "services:\n  - name: mail/smtp\n    service: SMTP\n",  # fields missing
        "version: 2\n",
    ],
    ids=["not-yaml", "incomplete", "unknown-version"],
)
def test_an_invalid_config_file_is_refused_counted_and_the_old_config_keeps_working(
    served, broken, caplog
):
    s, path, cfg = served
    port = cfg.services[0].listen[0].port
    write(path, broken)
    wait_until(
        lambda: s.metric("mailwarden_config_reloads_total", result="failure") == 1,
        what="the broken file to be refused",
    )
    assert "configuration refused, keeping the last good one" in caplog.text
    assert 'mailwarden_config_reloads_total{result="failure"} 1.0' in get(cfg, "/metrics").text
    with connect(port) as c:
        assert read_line(c) == GREETING
    assert get(cfg, "/readyz").status_code == 200
    # A good file again is taken.
    changed = msgspec.structs.replace(
        cfg, services=(msgspec.structs.replace(cfg.services[0], allow=("127.0.0.2/32",)),)
    )
    write(path, lc.dumps(changed))
    wait_until(
        lambda: s.metric("mailwarden_config_reloads_total", result="success") == 2,
        what="the good file to be taken",
    )
    with connect(port) as c:
        assert read_line(c) == DENIED


def test_on_stop_readiness_fails_and_open_sessions_may_finish_within_the_drain(served):
    s, _, cfg = served
    port = cfg.services[0].listen[0].port
    with connect(port) as c:
        assert read_line(c) == GREETING
        s.loop.call_soon_threadsafe(s.stop.set)
        wait_until(lambda: get(cfg, "/readyz").status_code == 503, what="readyz to fail")
        assert s.metric("mailwarden_draining") == 1
        # Still relayed while draining; the listener no longer accepts.
        c.sendall(b"QUIT\r\n")
    wait_until(lambda: s.status == 0, timeout=10, what="serve() to return")
    with pytest.raises(ConnectionRefusedError):
        connect(port)
