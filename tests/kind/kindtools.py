"""Talking to the kind cluster of scripts/kind-demo: kubectl and helm with a pinned context,
and a guard that refuses to touch any other cluster."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTEXT_ENV = "MAILWARDEN_KIND_CONTEXT"
OPERATOR_NAMESPACE = "mailwarden-system"
MAIL = "mail"
T = TypeVar("T")


def tool(name: str) -> str:
    local = ROOT / ".tools" / "bin" / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: run scripts/fetch-k8s-tools")
    return found


def context() -> str:
    """The kube context of the kind cluster, or a skip saying why there is none."""
    ctx = os.environ.get(CONTEXT_ENV)
    if not ctx:
        pytest.skip(
            f"no kind cluster: {CONTEXT_ENV} is not set (scripts/kind-demo creates the cluster, "
            "scripts/kind-e2e runs these tests against it)"
        )
    if not ctx.startswith("kind-"):
        pytest.skip(f"{CONTEXT_ENV}={ctx} is not a kind context; refusing to touch it")
    proc = subprocess.run(
        [tool("kubectl"), "--context", ctx, "get", "--raw", "/readyz", "--request-timeout=5s"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if proc.returncode != 0:
        pytest.skip(f"kind cluster {ctx} is not reachable: {proc.stderr.strip()[:200]}")
    return ctx


def kubectl(*args: str, check: bool = True, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [tool("kubectl"), "--context", context(), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def get(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json"))


def helm(*args: str) -> str:
    proc = subprocess.run(
        [tool("helm"), "--kube-context", context(), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def until(check: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """Poll check() until it returns something truthy, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, OSError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last}")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return dict(c)
    return None
