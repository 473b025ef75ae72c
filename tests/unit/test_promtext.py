"""The listener's own Prometheus text exposition writes what prometheus_client writes for the
same metrics and updates (prometheus_client stays the operator's, and is the reference)."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailwarden.listener import metrics, promtext


def exercise(m: metrics.Metrics) -> None:
    svc = m.for_service('mail/smtp "quoted" \\ back\nslash')
    svc.outcome[metrics.ACCEPTED].inc()
    svc.outcome[metrics.DENIED].inc(3)
    svc.active.inc()
    svc.active.inc()
    svc.active.dec()
    for seconds in (0.001, 0.3, 7, 99999):
        svc.duration.observe(seconds)
    svc.bytes_up.inc(12345678901)
    m.reloads.labels("success").inc()
    m.last_reload.set(1700000000.123)
    m.cap.labels("mail/smtp", "service").set(600)
    m.open_files_limit.labels("soft").set(1024)
    m.open_files_limit.labels("hard").set(float("inf"))
    m.for_service("gone/svc")
    m.forget("gone/svc")


def test_the_exposition_is_prometheus_client_s_byte_for_byte(monkeypatch):
    mine = metrics.Metrics()
    exercise(mine)
    text = mine.exposition()[1]
    monkeypatch.setattr(metrics, "prom", prometheus_client)
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    reference = metrics.Metrics()
    exercise(reference)
    assert text == prometheus_client.generate_latest(reference.registry)  # type: ignore[arg-type]


def test_the_exposition_parses_and_sample_values_can_be_read_back():
    m = metrics.Metrics()
    exercise(m)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition()[1].decode())}
    assert families["mailwarden_connections"].type == "counter"
    assert families["mailwarden_session_duration_seconds"].type == "histogram"
    assert (
        m.registry.get_sample_value(
            "mailwarden_session_duration_seconds_bucket",
            {"service": 'mail/smtp "quoted" \\ back\nslash', "le": "+Inf"},
        )
        == 4
    )
    assert m.registry.get_sample_value("mailwarden_open_files_limit", {"limit": "hard"}) == float(
        "inf"
    )
    assert m.registry.get_sample_value("mailwarden_nothing") is None


def test_labels_must_match_the_declared_names_and_set_function_is_read_at_scrape():
    r = promtext.CollectorRegistry()
    g = promtext.Gauge("x", "a gauge", ["a"], registry=r)
    with pytest.raises(ValueError, match="expected labels"):
        g.labels("1", "2")
    live = [1.0]
    g.labels("1").set_function(lambda: live[0])
    live[0] = 5
    assert r.get_sample_value("x", {"a": "1"}) == 5
    with pytest.raises(ValueError, match="duplicate"):
        promtext.Counter("x", "again", registry=r)
