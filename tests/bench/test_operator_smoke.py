"""A short run of the operator-at-scale benchmark, so it cannot rot: the real operator
process against the Kubernetes API emulator, 20 MailServices, a few seconds."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_operator_benchmark_reaches_steady_state_and_fans_a_group_change_out(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "operator.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.operator_at_scale", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["mailservices"] == 20
    assert figures["steady_seconds"] > 0
    assert figures["fanout_services"] == 10
    assert figures["fanout_seconds"] > 0
    assert figures["reconciles_to_steady"] >= figures["mailservices"]
    assert figures["requests_per_reconcile"] > 0
    assert figures["quiet_reconciles"] == 0
    assert 0 < figures["rss_mib_peak"] < 250
    assert "API requests per reconcile" in run.stdout
