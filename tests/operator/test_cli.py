"""`mailwarden render` and `mailwarden operator` as a user runs them."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import yaml

from kubeemu.emulator import EmulatorThread
from tests.operator.resources import mailservice, ready
from tests.support.operator import Client, eventually

MANIFESTS = """\
apiVersion: mailwarden.io/v1alpha1
kind: MailService
metadata: {name: submission, namespace: mail}
spec:
  service: Submission
  listen: [{address: 192.0.2.10}, {port: 2587}]
  access: {allowFrom: office, maxConnections: 200}
  backend: {host: postfix.mail.svc, proxyProtocol: V2}
  replicas: 2
---
apiVersion: mailwarden.io/v1alpha1
kind: IPAddressGroup
metadata: {name: office, namespace: mail}
spec:
  items: [{network: 198.51.100.0/24}]
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated}
"""


def mailwarden(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_render_prints_the_children_as_yaml(tmp_path: pathlib.Path) -> None:
    (tmp_path / "mail.yaml").write_text(MANIFESTS)
    result = mailwarden("render", "-f", str(tmp_path))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    # The fixed address's listener (shared by whatever else listens on it; with two replicas,
    # a PodDisruptionBudget), and the MailService's own for its port without an address.
    # Each listener's pods have their own ServiceAccount that may read only their ConfigMap.
    assert kinds == [
        ("ServiceAccount", "mailwarden--192-0-2-10"),
        ("Role", "mailwarden--192-0-2-10"),
        ("RoleBinding", "mailwarden--192-0-2-10"),
        ("ConfigMap", "mailwarden--192-0-2-10"),
        ("Deployment", "mailwarden--192-0-2-10"),
        ("Service", "mailwarden--192-0-2-10"),
        ("NetworkPolicy", "mailwarden--192-0-2-10"),
        ("PodDisruptionBudget", "mailwarden--192-0-2-10"),
        ("ServiceAccount", "mailwarden-submission"),
        ("Role", "mailwarden-submission"),
        ("RoleBinding", "mailwarden-submission"),
        ("ConfigMap", "mailwarden-submission"),
        ("Deployment", "mailwarden-submission"),
        ("Service", "mailwarden-submission"),
        ("NetworkPolicy", "mailwarden-submission"),
        ("PodDisruptionBudget", "mailwarden-submission"),
    ]
    config = yaml.safe_load(docs[3]["data"]["listener.yaml"])
    assert config["services"][0]["allow"] == ["198.51.100.0/24"]
    assert config["services"][0]["max_connections"] == 100


def test_render_refuses_an_invalid_manifest_with_the_field_named(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bad.yaml").write_text(MANIFESTS.replace("Submission", "Gopher", 1))
    result = mailwarden("render", "-f", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2
    assert "spec.service" in result.stderr and result.stdout == ""


def free_port() -> int:
    # On every address, as the operator binds its metrics port (0.0.0.0): a port free on
    # 127.0.0.1 may be held on another loopback address (a test client bound to 127.0.0.21
    # gets an ephemeral port), and the operator's bind then fails.
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def emulator_only() -> Iterator[EmulatorThread]:
    et = EmulatorThread().start()
    yield et
    et.stop()


def test_the_operator_command_reconciles_and_serves_liveness_and_metrics(
    tmp_path: pathlib.Path, emulator_only: EmulatorThread
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": emulator_only.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "u"}}],
            }
        )
    )
    liveness, metrics = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": os.pathsep.join(sys.path)}
    env["MAILWARDEN_BACKEND_PROBE_SECONDS"] = "0"  # its backend (postfix.mail.svc) is made up
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailwarden.cli",
            "operator",
            "--liveness",
            f"http://127.0.0.1:{liveness}/healthz",
            "--metrics-port",
            str(metrics),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    kube = Client(emulator_only.url)
    try:

        def alive() -> None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = httpx.get(f"http://127.0.0.1:{liveness}/healthz", timeout=1)
            except httpx.HTTPError as exc:
                raise AssertionError(str(exc)) from None
            assert r.status_code == 200

        eventually(alive, timeout=30, interval=0.2)
        kube.apply(mailservice("cli", "smtp"))
        eventually(lambda: ready(kube, "cli", "smtp"), timeout=20)
        text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=2).text
        assert 'mailwarden_operator_reconciles_total{kind="MailService",result="success"}' in text
        assert "mailwarden_operator_reconcile_duration_seconds_bucket" in text
    finally:
        kube.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


ABUSE_MANIFESTS = """\
apiVersion: mailwarden.io/v1alpha1
kind: MailService
metadata: {name: imap, namespace: mail}
spec:
  service: IMAP
  listen: [{address: 127.0.0.1, port: 11143}]
  access:
    rateLimit: {connectionsPerMinute: 30}
    autoBan: {afterFailures: 5, withinSeconds: 60, banSeconds: 600, exemptFrom: office}
  backend: {host: 127.0.0.1, port: 143}
---
apiVersion: mailwarden.io/v1alpha1
kind: IPAddressGroup
metadata: {name: office, namespace: mail}
spec:
  items: [{network: 198.51.100.0/24}, {host: "2001:db8::7"}]
"""


def test_listen_renders_the_rate_limit_and_auto_ban_with_the_exempt_group_resolved(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "imap.yaml").write_text(ABUSE_MANIFESTS)
    result = mailwarden("listen", "-f", str(tmp_path), "--print-config")
    assert result.returncode == 0, result.stderr
    svc = yaml.safe_load(result.stdout)["services"][0]
    assert svc["rate_limit"] == {"connections_per_minute": 30, "ipv6_prefix_length": 64}
    assert svc["auto_ban"] == {
        "after_failures": 5,
        "within_seconds": 60.0,
        "ban_seconds": 600.0,
        "exempt": ["198.51.100.0/24", "2001:db8::7/128"],
        "ipv6_prefix_length": 64,
    }


def test_listen_refuses_an_out_of_range_auto_ban_naming_the_field(tmp_path: pathlib.Path) -> None:
    (tmp_path / "imap.yaml").write_text(
        ABUSE_MANIFESTS.replace("afterFailures: 5", "afterFailures: 0")
    )
    result = mailwarden("listen", "-f", str(tmp_path), "--print-config")
    assert result.returncode == 2
    assert "access.autoBan.afterFailures: 0 is out of range; use 1 to 10000" in result.stderr


def test_listen_warns_when_the_exempt_group_is_missing_and_exempts_nobody(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "imap.yaml").write_text(
        ABUSE_MANIFESTS.replace("exemptFrom: office", "exemptFrom: gone")
    )
    result = mailwarden("listen", "-f", str(tmp_path), "--print-config")
    assert result.returncode == 0, result.stderr
    assert (
        "access.autoBan.exemptFrom: IPAddressGroup gone not found in this namespace"
        in result.stderr
    )
    assert yaml.safe_load(result.stdout)["services"][0]["auto_ban"]["exempt"] == []
