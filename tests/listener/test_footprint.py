"""The listener pod's footprint (issue 9, point 8): a listener process serving one idle
service stays under 30 MiB RSS, and each added service costs next to nothing. Measured on the
real `mailwarden listener --config FILE` process with the file as the operator renders it
(JSON). Before: 43.9 MiB for one service (pydantic, uvicorn, prometheus_client, PyYAML);
HAProxy idles at about 15 MiB. Table: docs/decisions/0001-listener-pod-footprint.md."""

from __future__ import annotations

import http.client
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from kubeemu.emulator import EmulatorThread
from mailwarden.listener import config as lc
from mailwarden.listener import kubesource
from tests.support.listener import free_port, service, wait_until

BOUND_MIB = 30.0
PER_SERVICE_MIB = 0.2
# Following the ConfigMap through the API (a thread, http.client and the email package it
# imports, a TLS context): measured 1.1 MiB. One idle service in the image then takes 28.9 MiB
# (27.8 without); this test's editable install adds about 1.2 MiB to both.
API_FOLLOWER_MIB = 1.5


def ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def idle_config(n: int) -> lc.ListenerConfig:
    """`n` idle SMTP services on free ports, as the operator renders them (JSON)."""
    return lc.build(
        lc.ListenerConfig,
        {
            "services": [service(f"mail/smtp{i}", "SMTP") for i in range(n)],
            "metrics": {"address": "127.0.0.1", "port": free_port()},
        },
    )


class Idle:
    """A listener process with `n` idle SMTP services, as a pod runs it (the image's
    `mailwarden-listener` is `python -m mailwarden.listener`)."""

    def __init__(self, n: int, tmp: pathlib.Path, env: dict[str, str] | None = None) -> None:
        cfg = idle_config(n)
        self.text = lc.dumps(cfg, "json")
        path = tmp / f"listener-{n}-{len(list(tmp.iterdir()))}.json"
        path.write_text(self.text)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailwarden.listener", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        wait_until(lambda: ready(cfg.metrics.port), timeout=30, what="the listener")
        time.sleep(0.5)  # settled: the first scrape and probe answered

    def rss_mib(self) -> float:
        return status_kib(self.proc.pid, "VmRSS") / 1024

    def libraries(self) -> str:
        return pathlib.Path(f"/proc/{self.proc.pid}/maps").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def idle(tmp_path) -> Iterator[Callable[..., Idle]]:
    started: list[Idle] = []

    def start(n: int, env: dict[str, str] | None = None) -> Idle:
        p = Idle(n, tmp_path, env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def test_a_listener_serving_one_idle_service_stays_under_30_mib(idle):
    one = idle(1)
    rss = one.rss_mib()
    assert rss < BOUND_MIB, f"{rss:.1f} MiB"


def test_each_added_idle_service_costs_next_to_nothing(idle):
    one, fifteen = idle(1), idle(15)
    added = (fifteen.rss_mib() - one.rss_mib()) / 14
    assert added < PER_SERVICE_MIB, f"{added:.3f} MiB per service"


def test_the_listener_loads_no_library_it_does_not_use(idle):
    """What the footprint was made of: pydantic's core, PyYAML's C part (the pod's file is
    JSON), uvicorn's HTTP parser."""
    maps = idle(1).libraries()
    for library in ("pydantic_core", "_yaml", "httptools", "_speedups"):
        assert library not in maps, library


def test_following_the_configmap_through_the_api_costs_little_more(idle, tmp_path):
    """A pod as the operator runs it: the configuration followed through the API."""
    api = EmulatorThread().start()
    try:
        host = idle(1)
        secrets = tmp_path / "api"
        secrets.mkdir()
        (secrets / "token").write_text("token\n")
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mailwarden-smtp", "namespace": "mail"},
            # What the API says (ports of its own): the listener takes it over its file.
            "data": {"listener.yaml": lc.dumps(idle_config(1), "json")},
        }
        created = httpx.post(f"{api.url}/api/v1/namespaces/mail/configmaps", json=cm, timeout=10)
        assert created.status_code == 201
        pod = idle(
            1,
            {
                kubesource.ENV_CONFIGMAP: "mail/mailwarden-smtp",
                kubesource.ENV_API_URL: api.url,
                kubesource.ENV_API_DIR: str(secrets),
                "TMPDIR": str(tmp_path),
            },
        )
        emulator = api.emulator
        assert emulator is not None
        wait_until(lambda: "token" in emulator.tokens, what="the listener's API requests")
        time.sleep(0.5)
        extra = pod.rss_mib() - host.rss_mib()
        assert extra < API_FOLLOWER_MIB, f"{extra:.2f} MiB"
    finally:
        api.stop()
