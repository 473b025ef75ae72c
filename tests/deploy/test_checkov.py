"""checkov's Kubernetes checks over everything the project renders: the chart (`helm
template`) and the examples (`mailwarden render`), in one run over one directory. Every
failure is fixed or skipped with a reason in docs/policy-scan.md."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from tests.deploy.tools import CHART, ROOT, helm

CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
DOC = ROOT / "docs" / "policy-scan.md"
DIGEST = "sha256:" + "0123456789abcdef" * 4
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").glob("*.yaml")
    if p.name not in ("kustomization.yaml", "namespace.yaml")
)


def skip_list() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("CKV"):
            rows[cells[0]] = cells[1]
    return rows


def rendered(out: pathlib.Path) -> None:
    chart = helm(
        "template", "mw", str(CHART), "--namespace", "mail",
        "--set", f"image.digest={DIGEST}", "--set", f"listener.image.digest={DIGEST}",
    ).stdout  # fmt: skip
    (out / "chart.yaml").write_text(chart)
    args = [sys.executable, "-m", "mailwarden.cli", "render", "-n", "mail"]
    for example in EXAMPLES:
        args += ["-f", str(example)]
    env = {**os.environ, "MAILWARDEN_LISTENER_IMAGE": f"mailwarden-listener@{DIGEST}"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "kind: Deployment" in proc.stdout
    (out / "examples.yaml").write_text(proc.stdout)


def scan(directory: pathlib.Path) -> dict[str, Any]:
    if not CHECKOV.is_file():
        pytest.skip(f"checkov not installed at {CHECKOV}: scripts/fetch-checkov installs it")
    args = [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "--quiet",
            "--compact", "-o", "json", "--skip-download"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr  # 1: some check failed
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report  # type: ignore[no-any-return]


def test_everything_rendered_passes_checkov_but_the_documented_skips(
    tmp_path: pathlib.Path,
) -> None:
    skips = skip_list()
    assert skips, "docs/policy-scan.md lists no skipped check"
    assert all(reason for reason in skips.values())
    rendered(tmp_path)
    # One run without skips: what fails must be exactly the documented checks (so a new
    # failure is caught, and a skip that no longer applies is dropped from the docs).
    report = scan(tmp_path)
    failed = [
        (f["check_id"], f["file_path"], f["resource"]) for f in report["results"]["failed_checks"]
    ]
    undocumented = [f for f in failed if f[0] not in skips]
    assert undocumented == [], "fix them or document them in docs/policy-scan.md"
    assert {f[0] for f in failed} == set(skips), "a documented skip no longer applies"
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 20 and summary["passed"] > 500
