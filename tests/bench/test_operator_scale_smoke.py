"""A short run of the operator-at-scale benchmark, so that it cannot rot: the real operator
as a subprocess against the emulator, a few MailServices and groups."""

from __future__ import annotations

import pytest

from bench import operator_scale

pytestmark = pytest.mark.bench


def test_the_smoke_run_reaches_steady_state_fans_out_a_group_change_and_goes_quiet() -> None:
    res = operator_scale.run(operator_scale.SMOKE, progress=False)
    assert res.services == operator_scale.SMOKE.services
    assert res.users == operator_scale.SMOKE.shared_users
    assert res.steady.reached == res.steady.goal == res.services
    assert res.fanout.reached == res.fanout.goal == res.users
    assert res.steady.reconciles >= res.services
    assert res.fanout.reconciles >= res.users
    # Quiet after each phase: no request loops the operator feeds itself.
    for phase in (res.steady, res.fanout):
        assert phase.quiet_after_s is not None, phase
        assert phase.residual_rps < 1.0, phase
        assert phase.total > 0
    assert 0 < res.rss_steady <= res.rss_peak
    # Issue 10 point 9: at most 6 API requests per reconciliation while reaching steady state
    # (children compared with the watch's copy, not read again), and at most 2 Events per
    # MailService at creation (one for what was created, one when it runs).
    steady = res.steady
    assert steady.total / steady.reconciles <= 6.0, steady.requests
    assert steady.requests[("create", "events")] <= 2 * res.services, steady.requests
    # The operator never writes a MailService itself, only its status: no bookkeeping
    # annotation per handled change (kopf's change handlers wrote one, and its echo event
    # cost a round of processing).
    assert steady.requests.get(("patch", "mailservices"), 0) == 0, steady.requests
    # Nothing read per child: no GET of a child kind for each reconciliation.
    for kind in ("configmaps", "deployments", "services", "networkpolicies"):
        assert steady.requests.get(("get", kind), 0) <= res.services // 4, (kind, steady.requests)
    # Live figures: every pod asked each round; constant figures are never written again,
    # changing ones are.
    constant, changing = res.figures
    for window in (constant, changing):
        assert window.status_requests >= res.services, window
    assert constant.requests.get(("patch/status", "mailservices"), 0) == 0, constant
    assert changing.requests.get(("patch/status", "mailservices"), 0) >= res.services, changing
    text = operator_scale.report(res)
    assert "requests by verb and resource" in text


def test_the_figures_only_run_reads_every_pod_each_round_and_writes_only_changes() -> None:
    constant, changing = operator_scale.figures_only(operator_scale.SMOKE, progress=False)
    rounds = operator_scale.SMOKE.figures_window / operator_scale.SMOKE.figures_period
    for window in (constant, changing):
        assert window.status_requests >= operator_scale.SMOKE.services * (rounds - 1), window
        assert window.operator_cpu_s > 0, window
    assert constant.requests.get(("patch/status", "mailservices"), 0) == 0, constant
    assert changing.requests.get(("patch/status", "mailservices"), 0) > 0, changing
    assert "poller CPU s" in operator_scale.figures_report(operator_scale.SMOKE, [constant])
