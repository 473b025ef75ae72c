"""The open-file budget the listener keeps while accepting (issue 12, point 5)."""

from __future__ import annotations

import resource

from mailwarden.listener import descriptors


def test_the_budget_counts_what_is_open_and_each_new_client_as_two():
    budget = descriptors.Budget()
    open_now = budget.measure(clients=0)
    assert open_now > 0
    assert budget.estimate(0) == open_now
    # Clients accepted since the measure may each connect a backend.
    assert budget.estimate(10) == open_now + 20


def test_short_and_recovered_keep_a_reserve_with_hysteresis():
    budget = descriptors.Budget()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert budget.limit == soft
    assert budget.reserve >= descriptors.MIN_RESERVE
    open_now = budget.measure(clients=0)
    room = (budget.limit - budget.reserve - open_now) // 2
    assert not budget.short(room - 2)
    assert budget.short(room + 1)
    assert budget.recovered(budget.limit - 2 * budget.reserve)
    assert not budget.recovered(budget.limit - 2 * budget.reserve + 1)


def test_the_reserve_is_an_eighth_of_the_limit_within_bounds(monkeypatch):
    for limit, reserve in ((64, 16), (256, 32), (1024, 128), (20000, 256)):
        monkeypatch.setattr(descriptors, "soft_limit", lambda limit=limit: limit)
        assert descriptors.Budget().reserve == reserve
