"""A real listener process follows its ConfigMap through the Kubernetes API (the emulator over
HTTP), with a bearer token, asking for its ConfigMap by name as a Role limited by
resourceNames requires: a change is served within seconds while the mounted file (which the
kubelet refreshes only at its next sync, a minute or more later) still holds the old one.
This is what replaced the operator's `pods: patch` nudge (issue 10 point 5)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from kubeemu.emulator import EmulatorThread
from mailwarden.listener import config as lc
from mailwarden.listener import kubesource
from tests.support.listener import free_port, service, wait_until
from tests.support.raw_tcp import connect, greeter, read_line

GREETING = b"220 kubesource-test ready\r\n"
TOKEN = "listener-token-of-mail-smtp"


def config_text(port: int, backend_port: int, metrics_port: int) -> str:
    cfg = lc.ListenerConfig(
        services=(service("mail/smtp", "SMTP", port=port, backend_port=backend_port),),
        metrics=lc.Metrics(address="127.0.0.1", port=metrics_port),
        drain_seconds=0,
    )
    return lc.dumps(cfg, "json")


@pytest.fixture
def api() -> Iterator[EmulatorThread]:
    et = EmulatorThread().start()
    yield et
    et.stop()


def serves(port: int) -> bool:
    try:
        with connect(port) as c:
            return read_line(c) == GREETING
    except OSError:
        return False


def test_a_configmap_change_reaches_the_listener_through_the_api_in_seconds(
    api: EmulatorThread, tmp_path: pathlib.Path, backend: object
) -> None:
    back = backend(greeter(GREETING))  # type: ignore[operator]
    first, second, metrics = free_port(), free_port(), free_port()
    text = config_text(first, back.port, metrics)
    mounted = tmp_path / "config" / "listener.yaml"
    mounted.parent.mkdir()
    mounted.write_text(text)  # the kubelet's copy; it never changes in this test
    secrets = tmp_path / "api"
    secrets.mkdir()
    (secrets / "token").write_text(TOKEN + "\n")
    http = httpx.Client(base_url=api.url, timeout=10)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "mailwarden-smtp", "namespace": "mail"},
        "data": {"listener.yaml": text},
    }
    assert http.post("/api/v1/namespaces/mail/configmaps", json=cm).status_code == 201
    # Another ConfigMap in the namespace: not the listener's business.
    other = {**cm, "metadata": {"name": "other", "namespace": "mail"}}
    assert http.post("/api/v1/namespaces/mail/configmaps", json=other).status_code == 201
    env = {
        **os.environ,
        kubesource.ENV_CONFIGMAP: "mail/mailwarden-smtp",
        kubesource.ENV_API_URL: api.url,
        kubesource.ENV_API_DIR: str(secrets),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailwarden.listener", "--config", str(mounted)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: serves(first), what="the listener to serve its first port")
        emulator = api.emulator
        assert emulator is not None
        wait_until(lambda: TOKEN in emulator.tokens, what="the listener's API requests")
        # The ConfigMap changes: the service moves to another port.
        changed = config_text(second, back.port, metrics)
        r = http.patch(
            "/api/v1/namespaces/mail/configmaps/mailwarden-smtp",
            json={"data": {"listener.yaml": changed}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200
        start = time.monotonic()
        wait_until(lambda: serves(second), timeout=10, what="the new port")
        took = time.monotonic() - start
        assert took < 3.0, f"{took:.1f} s"  # "within about 2 seconds"
        assert mounted.read_text() == text  # not through the file
        assert not serves(first)
        # Asked by name (RBAC's resourceNames needs it for list and watch), nothing else.
        asked = {
            (verb, selector)
            for client, verb, resource, selector in emulator.field_queries
            if client == "mailwarden-listener"
        }
        assert asked >= {("list", "metadata.name=mailwarden-smtp")}
        assert ("watch", "metadata.name=mailwarden-smtp") in asked
        assert all(sel == "metadata.name=mailwarden-smtp" for _, sel in asked)
        # A broken text keeps the last good configuration.
        http.patch(
            "/api/v1/namespaces/mail/configmaps/mailwarden-smtp",
            json={"data": {"listener.yaml": json.dumps({"services": "nope"})}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        time.sleep(2.5)
        assert serves(second)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert b"Traceback" not in out, out.decode(errors="replace")


def test_without_the_api_the_mounted_file_is_the_source(tmp_path: pathlib.Path) -> None:
    mounted = tmp_path / "listener.yaml"
    assert kubesource.from_environment(mounted, {}) is None
    # A token but no API address: the file alone.
    (tmp_path / "token").write_text("t")
    env = {kubesource.ENV_CONFIGMAP: "mail/x", kubesource.ENV_API_DIR: str(tmp_path)}
    assert kubesource.from_environment(mounted, env) is None
    env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
    source = kubesource.from_environment(mounted, env)
    assert source is not None and source.api_url == "https://[fd00::1]:443"


def test_the_newer_of_the_api_copy_and_the_mounted_file_is_loaded(tmp_path: pathlib.Path) -> None:
    mounted = tmp_path / "listener.yaml"
    cache = tmp_path / "cache.yaml"
    source = kubesource.ApiSource(
        mounted,
        "mail",
        "x",
        api_url="http://127.0.0.1:1",
        token_file=tmp_path / "token",
        ca_file=None,
        cache=cache,
    )
    mounted.write_text("a")
    assert source.current() == mounted
    cache.write_text("b")
    os.utime(cache, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert source.current() == cache
    os.utime(mounted, ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
    assert source.current() == mounted  # the kubelet's copy came later (the API went away)
