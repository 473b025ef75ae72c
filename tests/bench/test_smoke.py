"""A short run of every listener-vs-HAProxy benchmark, so the benchmarks cannot rot: real
HAProxy, the real listener process, the real backend and load generator, a few seconds."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from bench import frontends, listener_vs_haproxy

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(
        not frontends.have_haproxy(),
        reason=f"HAProxy not installed at {frontends.HAPROXY} (scripts/install-debian-packages)",
    ),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.listener_vs_haproxy", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report: dict[str, object] = json.loads(out.read_text())
    report["stdout"] = run.stdout
    return report


def results(smoke: dict[str, object], bench: str) -> dict[str, list[dict[str, float]]]:
    all_results = smoke["results"]
    assert isinstance(all_results, dict)
    per_frontend: dict[str, list[dict[str, float]]] = all_results[bench]
    assert set(per_frontend) == {"mailwarden", "haproxy"}
    return per_frontend


def test_the_smoke_run_prints_the_table_with_ratios(smoke: dict[str, object]) -> None:
    stdout = str(smoke["stdout"])
    assert "machine:" in stdout
    for label in ("session rate", "RSS per held connection", "throughput, 1 stream"):
        assert label in stdout
    assert "flood rejections/s" in stdout
    assert "targets met:" in stdout


def test_both_front_ends_complete_short_sessions_without_failures(
    smoke: dict[str, object],
) -> None:
    for runs in results(smoke, "sessions").values():
        for r in runs:
            assert r["sessions_per_s"] > 0
            assert r["session_failures"] == 0
            assert r["p99_ms"] >= r["p50_ms"] > 0
            assert r["cpu_us_per_session"] > 0


def test_both_front_ends_hold_every_idle_session_and_keep_relaying_it(
    smoke: dict[str, object],
) -> None:
    wanted = listener_vs_haproxy.SMOKE.held
    for runs in results(smoke, "held").values():
        for r in runs:
            assert r["held"] == wanted
            assert r["held_alive"] == wanted


def test_both_front_ends_relay_whole_streams(smoke: dict[str, object]) -> None:
    # An incomplete stream fails the run itself; here the rates must be real numbers.
    for runs in results(smoke, "stream").values():
        for r in runs:
            assert r["mb_per_s_1"] > 0
            assert r[f"mb_per_s_{listener_vs_haproxy.SMOKE.streams}"] > 0


def test_a_flood_gets_the_refusal_line_and_never_gets_past_the_cap(
    smoke: dict[str, object],
) -> None:
    for runs in results(smoke, "flood").values():
        for r in runs:
            assert r["refused"] == listener_vs_haproxy.SMOKE.attempts
            assert r["unanswered"] == 0
            assert r["over_cap"] == 0
            assert r["held_lost"] == 0
            assert r["held_requests_failed"] == 0
            assert r["refusal_line_ok"] == 1
