"""The alerts and the dashboard query metrics the listener really exports, in valid PromQL."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import prometheus_client
import promql_parser
import pytest

from mailwarden.listener import metrics
from tests.deploy.tools import CHART, one, render

DASHBOARD = CHART / "files" / "dashboards" / "mailwarden.json"
METRIC = re.compile(r"\b(mailwarden_[a-z_]+)\b(?!\s*[=!~])")  # not label names
# Series the operator exports (named in the operator's metrics module), not the listener.
OPERATOR_PREFIX = "mailwarden_operator_"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$service": ".*", "${datasource}": "prom"}


def listener_series() -> set[str]:
    m = metrics.Metrics()
    m.for_service("mail/smtp")
    m.cap.labels("mail/smtp", "service").set(1)
    m.reloads.labels("success").inc()
    return {s.name for family in m.registry.collect() for s in family.samples}


def operator_series() -> set[str] | None:
    """The operator's own series, once its metrics module exists."""
    try:
        module = importlib.import_module("mailwarden.operator.metrics")
    except ImportError:
        return None
    names = set()
    for value in vars(module).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            for family in value.describe():
                names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    return names


def rule_exprs() -> list[tuple[str, str]]:
    objs = render(CHART / "ci" / "monitoring-values.yaml")
    rule = one(objs, "PrometheusRule")
    return [(r["alert"], r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def check(exprs: list[tuple[str, str]]) -> None:
    known = listener_series()
    operator = operator_series()
    for where, expr in exprs:
        try:
            promql_parser.parse(expr)
        except Exception as exc:
            raise AssertionError(f"{where}: not valid PromQL: {exc}\n{expr}") from None
        for name in METRIC.findall(expr):
            if name.startswith(OPERATOR_PREFIX):
                if operator is not None:
                    assert name in operator, f"{where}: the operator exports no {name}"
                continue
            assert name in known, f"{where}: {name} is not a metric the listener exports"


def test_every_alert_is_valid_promql_over_metrics_the_listener_exports() -> None:
    exprs = rule_exprs()
    assert len(exprs) >= 5
    check(exprs)


def test_every_dashboard_query_is_valid_promql_over_metrics_the_listener_exports() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    check(exprs)


@pytest.mark.parametrize(
    "needle",
    [
        "mailwarden_connections_total",
        'outcome="backend_error"',
        "mailwarden_relayed_bytes_total",
        "mailwarden_session_duration_seconds_bucket",
        "over_cap",
    ],
)
def test_dashboard_shows_connections_refusals_bytes_and_durations(needle: str) -> None:
    assert any(needle in expr for _, expr in dashboard_exprs())


def test_cap_alert_never_fires_for_a_service_without_a_cap() -> None:
    # maxConnections 0 means unlimited: the cap series must be filtered (> 0) before the
    # comparison, or every busy uncapped service would page someone.
    (expr,) = [e for a, e in rule_exprs() if a == "MailwardenServiceAtConnectionCap"]
    assert re.search(
        r'>=\s*sum by \(service\) \(mailwarden_connection_cap\{scope="service"\} > 0\)', expr
    )


def test_dashboard_panels_have_unique_ids_and_a_service_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "service"]


@pytest.mark.parametrize(
    "needle",
    [
        'outcome=~"rate_limited|banned"',
        "mailwarden_banned_addresses",
        "mailwarden_bans_total",
        "mailwarden_login_failures_total",
    ],
)
def test_dashboard_shows_the_abuse_defence(needle: str) -> None:
    assert any(needle in expr for _, expr in dashboard_exprs())


def test_alerts_watch_bans_and_rate_limited_refusals() -> None:
    rules = dict(rule_exprs())
    assert "mailwarden_banned_addresses" in rules["MailwardenAddressesBanned"]
    assert 'outcome="rate_limited"' in rules["MailwardenRateLimitedRefusals"]
