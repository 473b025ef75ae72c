"""The README's start/stop/restart commands, run with the real kubectl (and through the
`kubectl mailwarden` plugin) against the emulator with the operator running."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

from kubeemu.emulator import EmulatorThread
from mailwarden.cli import kubectl as plugin
from mailwarden.operator import models
from tests.operator.resources import MW, mailservice, ready
from tests.support.operator import Client, eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl") or str(ROOT / ".tools" / "bin" / "kubectl")


def test_the_plugin_runs_the_documented_commands() -> None:
    (start,) = plugin.commands("start", "smtp", "mail")
    assert start == [
        "kubectl",
        "annotate",
        "mailservices.mailwarden.io",
        "smtp",
        "-n",
        "mail",
        "--overwrite",
        "mailwarden.io/state=Running",
    ]
    (stop,) = plugin.commands("stop", "smtp", None)
    assert stop[-1] == "mailwarden.io/state=Stopped"
    (restart,) = plugin.commands("restart", "smtp", None)
    assert restart[-1].startswith("mailwarden.io/restartedAt=20")


@pytest.fixture
def kubeconfig(tmp_path: pathlib.Path, emulator: EmulatorThread) -> dict[str, str]:
    if not os.access(KUBECTL, os.X_OK):
        pytest.skip("no kubectl binary (scripts/fetch-k8s-tools puts one in .tools/bin)")
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": emulator.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "u"}}],
            }
        )
    )
    return {
        **os.environ,
        "KUBECONFIG": str(path),
        "KUBECTL": KUBECTL,
        "KUBECACHEDIR": str(tmp_path / "cache"),
    }


def run(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubectl_annotate_starts_and_stops_a_service(
    kube: Client, ns: str, kubeconfig: dict[str, str]
) -> None:
    kube.apply(mailservice(ns, "news", service="NNTP", startup="Manual"))
    eventually(lambda: ready(kube, ns, "news", reason="Stopped"))
    run(
        kubeconfig,
        KUBECTL,
        "annotate",
        "mailservices.mailwarden.io",
        "news",
        "-n",
        ns,
        "mailwarden.io/state=Running",
        "--overwrite",
    )
    eventually(lambda: ready(kube, ns, "news"))
    run(kubeconfig, sys.executable, "-m", "mailwarden.cli.kubectl", "stop", "news", "-n", ns)
    eventually(lambda: ready(kube, ns, "news", reason="Stopped"))


def test_the_plugin_restarts_a_service(kube: Client, ns: str, kubeconfig: dict[str, str]) -> None:
    kube.apply(mailservice(ns, "pop", service="POP3"))
    eventually(lambda: ready(kube, ns, "pop"))
    run(kubeconfig, sys.executable, "-m", "mailwarden.cli.kubectl", "restart", "pop", "-n", ns)

    def restarted() -> None:
        dep = kube.get("apps/v1", "Deployment", ns, "mailwarden-pop")
        assert dep is not None
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert models.RESTART_ANNOTATION in annotations

    eventually(restarted)
    msvc = kube.get(MW, "MailService", ns, "pop")
    dep = kube.get("apps/v1", "Deployment", ns, "mailwarden-pop")
    assert msvc is not None and dep is not None
    stamp = msvc["metadata"]["annotations"][models.RESTART_ANNOTATION]
    assert dep["spec"]["template"]["metadata"]["annotations"][models.RESTART_ANNOTATION] == stamp


def test_kubectl_get_lists_both_kinds_by_category_and_msvc_is_unambiguous(
    kube: Client, ns: str, kubeconfig: dict[str, str]
) -> None:
    """The README's `kubectl get mailwarden`, and `kubectl get msvc` without kubectl's
    warning that the short name could mean another resource (the emulator's discovery lists
    subresources as the API server does: without short names or categories)."""
    kube.apply(mailservice(ns, "smtp"))
    kube.apply(
        {
            "apiVersion": MW,
            "kind": "IPAddressGroup",
            "metadata": {"name": "office", "namespace": ns},
            "spec": {"items": [{"network": "192.0.2.0/24"}]},
        }
    )
    both = subprocess.run(
        [KUBECTL, "get", "mailwarden", "-n", ns],
        env=kubeconfig,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 0, both.stderr
    assert "mailservice.mailwarden.io/smtp" in both.stdout
    assert "ipaddressgroup.mailwarden.io/office" in both.stdout
    short = subprocess.run(
        [KUBECTL, "get", "msvc", "-n", ns], env=kubeconfig, capture_output=True, text=True
    )
    assert short.returncode == 0 and "could also match" not in short.stderr, short.stderr
