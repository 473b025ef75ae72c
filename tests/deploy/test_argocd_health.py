"""The Argo CD health checks, run by a real Lua interpreter against fixtures of each state."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from mailwarden.operator import children, models
from mailwarden.operator import status as status_mod
from mailwarden.operator.conditions import READY_FALSE, Reason, stalled_reasons
from tests.deploy.tools import ROOT, render

ARGOCD = ROOT / "deploy" / "argocd"
HEALTH = ARGOCD / "health"
HARNESS = pathlib.Path(__file__).parent / "lua" / "harness.lua"
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
SCRIPTS = sorted(HEALTH.glob("*/*/health.lua"))


def lua() -> str:
    exe = shutil.which("lua5.4") or shutil.which("lua")
    if exe is None:
        pytest.skip("no Lua interpreter (Debian package lua5.4, scripts/install-debian-packages)")
    return exe


def lua_literal(value: Any) -> str:
    """A Lua table constructor for a decoded JSON/YAML value. Numbers become floats, as
    Argo CD's gopher-lua sees every JSON number."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def health(script: pathlib.Path, obj: dict[str, Any], tmp: pathlib.Path) -> tuple[str, str]:
    obj_file = tmp / "obj.lua"
    obj_file.write_text("return " + lua_literal(obj) + "\n")
    proc = subprocess.run(
        [lua(), str(HARNESS), str(script), str(obj_file)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    return out["status"], out["message"]


def cases() -> list[Any]:
    out = []
    for script in SCRIPTS:
        spec = yaml.safe_load((script.parent / "health_test.yaml").read_text())
        for test in spec["tests"]:
            kind = script.parent.name
            name = pathlib.Path(test["inputPath"]).stem
            out.append(pytest.param(script, test, id=f"{kind}-{name}"))
    return out


@pytest.mark.parametrize(("script", "test"), cases())
def test_health_check_gives_the_expected_status_and_message_for_each_fixture(
    script: pathlib.Path, test: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    obj = yaml.safe_load((script.parent / test["inputPath"]).read_text())
    status, message = health(script, obj, tmp_path)
    assert status in STATUSES
    assert (status, message) == (test["healthStatus"]["status"], test["healthStatus"]["message"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.parent.name)
def test_fixtures_cover_healthy_progressing_and_degraded(script: pathlib.Path) -> None:
    spec = yaml.safe_load((script.parent / "health_test.yaml").read_text())
    seen = {t["healthStatus"]["status"] for t in spec["tests"]}
    assert {"Healthy", "Progressing", "Degraded"} <= seen


def test_a_stopped_manual_service_is_suspended_not_degraded(tmp_path: pathlib.Path) -> None:
    script = HEALTH / "mailwarden.io" / "MailService" / "health.lua"
    obj = yaml.safe_load((script.parent / "testdata" / "manual-stopped.yaml").read_text())
    assert health(script, obj, tmp_path)[0] == "Suspended"
    # Started by its administrator and ready: healthy.
    obj["status"]["conditions"][0].update(status="True", reason="Running", message="")
    assert health(script, obj, tmp_path) == ("Healthy", "Running")


def operator_status(f: status_mod.Facts) -> dict[str, Any]:
    """A MailService with the status the operator itself writes for these facts."""
    msvc = models.MailService.model_validate(
        {
            "metadata": {"name": "smtp", "namespace": "mail", "generation": 2},
            "spec": {"service": "SMTP", "backend": {"host": "postfix.mail.svc"}},
        }
    )
    built = children.build(msvc, {})
    new = status_mod.mailservice(msvc, built, f, {}, timestamp="2026-11-28T09:00:00Z")
    return {**msvc.model_dump(by_alias=True, mode="json"), "status": new}


def test_backend_unreachable_is_progressing_not_degraded_and_healthy_once_back(
    tmp_path: pathlib.Path,
) -> None:
    """Applied together with its backend, a MailService must not fail the sync: the status
    the operator itself writes for an unreachable backend reads as Progressing."""
    script = HEALTH / "mailwarden.io" / "MailService" / "health.lua"
    base = status_mod.Facts(
        generation=2,
        running=True,
        replicas=1,
        resolution=None,
        lost={},
        current_replicas=1,
        available_replicas=1,
        updated_replicas=1,
        rollout_observed=True,
        backend="postfix.mail.svc:25",
    )
    unreachable = dataclasses.replace(base, backend_error="Connection refused")
    obj = operator_status(unreachable)
    status, message = health(script, obj, tmp_path)
    assert status == "Progressing"
    assert message.startswith("BackendUnreachable: backend postfix.mail.svc:25 unreachable")
    # Back: healthy again.
    assert health(script, operator_status(base), tmp_path)[0] == "Healthy"
    # A refused child is Degraded (an edit is needed), from the operator's own status.
    refused = dataclasses.replace(
        base, apply_failure=status_mod.ApplyFailure("Service", "s", 422, "externalIPs denied")
    )
    assert health(script, operator_status(refused), tmp_path)[0] == "Degraded"


def kstatus_conditions(reason: str, meaning: Any) -> list[dict[str, Any]]:
    def cond(type_: str, on: bool) -> dict[str, Any]:
        return {"type": type_, "status": "True" if on else "False", "reason": reason}

    return [
        {"type": "Ready", "status": "False", "reason": reason, "message": "m"},
        cond("Reconciling", meaning.reconciling),
        cond("Stalled", meaning.stalled),
    ]


@pytest.mark.parametrize("reason", sorted(READY_FALSE))
def test_each_reason_of_the_table_reads_in_argo_cd_as_its_kstatus_meaning(
    reason: str, tmp_path: pathlib.Path
) -> None:
    """Stalled reasons are Degraded; those that clear by themselves Progressing; Stopped is
    Suspended. With the three conditions, and from Ready alone (a status written by an older
    operator without Reconciling and Stalled)."""
    script = HEALTH / "mailwarden.io" / "MailService" / "health.lua"
    meaning = READY_FALSE[reason]
    want = (
        "Suspended"
        if reason == Reason.STOPPED
        else "Degraded"
        if meaning.stalled
        else "Progressing"
    )
    obj = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "conditions": kstatus_conditions(reason, meaning)},
    }
    assert health(script, obj, tmp_path)[0] == want
    obj["status"]["conditions"] = obj["status"]["conditions"][:1]
    assert health(script, obj, tmp_path)[0] == want


def test_application_health_passes_the_child_application_s_health_through(
    tmp_path: pathlib.Path,
) -> None:
    script = ARGOCD / "application-health.lua"
    app = {"status": {"health": {"status": "Degraded", "message": "MailService mail/smtp"}}}
    assert health(script, app, tmp_path) == ("Degraded", "MailService mail/smtp")
    assert health(script, {"metadata": {}}, tmp_path) == ("Progressing", "")


# Lua 5.2+ syntax and libraries that gopher-lua (Lua 5.1) does not have.
NOT_IN_LUA_51 = re.compile(
    r"\bgoto\b|//|::\w+::|<const>|<close>|[^~=<>]=?[&|]|<<|>>|\butf8\.|\btable\.(move|unpack)\b"
    r"|\bmath\.(tointeger|type|ult)\b|\bstring\.(pack|unpack)\b|\bsetfenv\b|\bloadstring\b"
)


@pytest.mark.parametrize(
    "script", [*SCRIPTS, ARGOCD / "application-health.lua"], ids=lambda p: p.parent.name
)
def test_scripts_stay_within_the_lua_5_1_subset_argo_cd_runs(script: pathlib.Path) -> None:
    code = re.sub(r"--[^\n]*", "", script.read_text())
    code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
    match = NOT_IN_LUA_51.search(code)
    assert match is None, f"{script.name}: {match[0]!r} is not Lua 5.1"


def test_argocd_cm_snippet_installs_exactly_the_tested_scripts() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    expected = {
        f"resource.customizations.health.{s.parent.parent.name}_{s.parent.name}": s.read_text()
        for s in SCRIPTS
    }
    expected["resource.customizations.health.argoproj.io_Application"] = (
        ARGOCD / "application-health.lua"
    ).read_text()
    assert "resource.customizations.health.mailwarden.io_MailService" in expected
    assert cm["data"] == expected, "argocd-cm.yaml is stale: run scripts/sync-argocd-cm"


def test_example_applications_sync_the_operator_before_the_mail_services() -> None:
    root = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert root["spec"]["source"]["path"] == "deploy/argocd/apps"
    apps = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ARGOCD / "apps").glob("*.yaml"))}
    wave = {
        n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for n, a in apps.items()
    }
    assert wave["mailwarden-operator"] < wave["mail-services"]
    operator = apps["mailwarden-operator"]["spec"]
    assert (ROOT / operator["source"]["path"] / "Chart.yaml").is_file()
    assert "ServerSideApply=true" in operator["syncPolicy"]["syncOptions"]
    services = apps["mail-services"]["spec"]
    assert (ROOT / services["source"]["path"]).is_dir()
    assert "SkipDryRunOnMissingResource=true" in services["syncPolicy"]["syncOptions"]


def test_the_operator_application_s_helm_values_pass_the_chart_s_schema(
    tmp_path: pathlib.Path,
) -> None:
    app = yaml.safe_load((ARGOCD / "apps" / "mailwarden-operator.yaml").read_text())
    helm_source = app["spec"]["source"]["helm"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(helm_source["valuesObject"]))
    objs = render(values, namespace=app["spec"]["destination"]["namespace"])
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MAILWARDEN_LISTENER_IMAGE"].startswith(
        "registry.example.com/mail/mailwarden-listener:"
    )


def test_the_mailservice_health_check_degrades_on_exactly_the_stalled_reasons() -> None:
    script = (ARGOCD / "health" / "mailwarden.io" / "MailService" / "health.lua").read_text()
    table = script.split("local FAILURES = {", 1)[1].split("}", 1)[0]
    listed = set(re.findall(r"(\w+) = true", table))
    assert listed == stalled_reasons()
    assert Reason.BACKEND_UNREACHABLE not in listed and Reason.INVALID_SPEC in listed
