"""Every operator setting is read and checked in one place (`settings.Settings.from_env`)
before the operator connects anywhere: a bad value stops `mailwarden operator` with exit
status 2 and a message naming the variable and the value, never a traceback."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from mailwarden import cli
from mailwarden.operator import settings

BAD = [
    ("MAILWARDEN_RESYNC_SECONDS", "abc", "is not a number of seconds"),
    ("MAILWARDEN_RESYNC_SECONDS", "0", "is under 1 second"),
    ("MAILWARDEN_RESYNC_SECONDS", "0.5", "is under 1 second"),
    ("MAILWARDEN_RESYNC_SECONDS", "-300", "is not a number of seconds"),
    ("MAILWARDEN_RESYNC_SECONDS", "nan", "is not a number of seconds"),
    ("MAILWARDEN_RESYNC_SECONDS", "1e9", "is not a number of seconds"),
    ("MAILWARDEN_BACKEND_PROBE_SECONDS", "soon", "is not a number of seconds"),
    ("MAILWARDEN_BACKEND_PROBE_SECONDS", "-1", "is not a number of seconds"),
    ("MAILWARDEN_BACKEND_PROBE_TIMEOUT", "0", "is not between 0 and 30 seconds"),
    ("MAILWARDEN_BACKEND_PROBE_TIMEOUT", "31", "is not between 0 and 30 seconds"),
    ("MAILWARDEN_BACKEND_PROBE_TIMEOUT", "3s", "is not a number of seconds"),
    ("MAILWARDEN_FIGURES_SECONDS", "0.5", "is under 1 second"),
    ("MAILWARDEN_FIGURES_SECONDS", "often", "is not a number of seconds"),
    ("MAILWARDEN_FIGURES_TIMEOUT", "0", "is not between 0 and 30 seconds"),
    ("MAILWARDEN_FIGURES_CONCURRENCY", "0", "is not a number from 1 to 1000"),
    ("MAILWARDEN_FIGURES_CONCURRENCY", "many", "is not a number from 1 to 1000"),
    ("MAILWARDEN_LISTENER_IMAGE_PULL_POLICY", "Sometimes", "is not one of Always"),
    ("MAILWARDEN_LISTENER_UID", "0", "is not a non-root uid"),
    ("MAILWARDEN_LISTENER_UID", "nobody", "is not a non-root uid"),
    ("MAILWARDEN_LISTENER_UID", "-5", "is not a non-root uid"),
    ("MAILWARDEN_LISTENER_LAME_DUCK_SECONDS", "301", "from 0 to 300"),
    ("MAILWARDEN_LISTENER_LAME_DUCK_SECONDS", "5s", "from 0 to 300"),
    ("MAILWARDEN_LISTENER_IMAGE", "registry.example/mailwarden listener:1", "not an image"),
    ("MAILWARDEN_MONITORING_NAMESPACE", "Monitoring_NS", "is not a namespace name"),
    ("MAILWARDEN_MONITORING_NAMESPACE", "x" * 64, "is not a namespace name"),
    ("POD_NAMESPACE", "Mail System", "is not a namespace name"),
    ("MAILWARDEN_LISTENER_DEFAULTS", "{", "not JSON"),
    ("MAILWARDEN_LISTENER_DEFAULTS", '{"replicas": 3}', "replicas"),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("MAILWARDEN_") or name == "POD_NAMESPACE":
            monkeypatch.delenv(name)
    # Nowhere to connect to: the refusal must come before any connection.
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    return monkeypatch


@pytest.mark.parametrize(("variable", "value", "why"), BAD)
def test_a_bad_setting_stops_the_operator_with_status_2_and_a_message_naming_it(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    why: str,
) -> None:
    clean_env.setenv(variable, value)
    assert cli.main(["operator", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mailwarden operator: {variable}: "), err
    assert why in err
    assert "Traceback" not in err


def test_no_module_but_settings_reads_a_mailwarden_variable() -> None:
    # A variable read anywhere else (as the resync period once was, at import) escapes the
    # checks above.
    import mailwarden.operator as package

    reads = re.compile(r"""(environ|getenv)[^\n]{0,20}["']MAILWARDEN_""")
    found = [
        p.name
        for p in pathlib.Path(package.__path__[0]).glob("*.py")
        if p.name != "settings.py" and reads.search(p.read_text())
    ]
    assert found == []


def test_the_defaults_hold_without_any_variable(clean_env: pytest.MonkeyPatch) -> None:
    got = settings.Settings.from_env({})
    assert got == settings.Settings()
    assert got.resync_seconds == 300


def test_good_values_are_taken(clean_env: pytest.MonkeyPatch) -> None:
    got = settings.Settings.from_env(
        {
            "MAILWARDEN_RESYNC_SECONDS": "2.5",
            "MAILWARDEN_MONITORING_NAMESPACE": "prometheus-1",
            "MAILWARDEN_LISTENER_IMAGE": "registry.example:5000/mail/mailwarden-listener@sha256:"
            + "0" * 64,
        }
    )
    assert got.resync_seconds == 2.5
    assert got.monitoring_namespace == "prometheus-1"


def test_a_resync_period_that_is_not_a_number_gives_no_traceback_from_the_real_command() -> None:
    """The issue's own example, as a process: it used to die in a ValueError at import."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "MAILWARDEN_RESYNC_SECONDS": "abc",
        "KUBECONFIG": os.devnull,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli", "operator", "--metrics-port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "mailwarden operator: MAILWARDEN_RESYNC_SECONDS: 'abc' is not a number of seconds"
    )
